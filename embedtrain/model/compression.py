"""Compression tokens (LLM2Vec-Gen, METHODS.md section 3): what trains and how a text becomes an embedding.

The frozen LLM is not resized: the m thought + n compression tokens are K = m + n trainable vectors
injected as input embeddings at K placeholder positions after the query (EmbeddingModel's `inject`),
so every pre-existing embedding row stays bitwise untouched and ONE copy of the backbone serves both
the encoding pass and the decoding pass. Two linear maps follow the n compression states:
  p = W_recon h + b  (n, H)  soft prompts, decoded by the same frozen LM
  z = W_align p + b  (n, D)  mean over n = the embedding (not normalised; compared by cosine)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embedtrain.data.packing import PackedStream, TokenizedText, pack_texts
from embedtrain.families import Family


class SpecialTokens(nn.Module):
    """The K new token rows. Called as a module so ZeRO-3 gathers the rows like any other weight."""

    def __init__(self, rows_KH: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(rows_KH)

    def forward(self, copies: int) -> torch.Tensor:
        """(copies * K, H): the rows once per text."""
        return self.weight.unsqueeze(0).expand(copies, -1, -1).reshape(-1, self.weight.shape[1])


class CompressionHead(nn.Module):
    def __init__(self, hidden: int, teacher_dim: int, thought: int, compression: int, dtype=torch.float32):
        super().__init__()
        self.thought, self.compression = thought, compression
        self.special = SpecialTokens(torch.zeros(thought + compression, hidden, dtype=dtype))
        self.recon = nn.Linear(hidden, hidden, dtype=dtype)
        self.align = nn.Linear(hidden, teacher_dim, dtype=dtype)

    @property
    def num_special(self) -> int:
        return self.thought + self.compression

    def forward(self, h_QnH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compression states -> (soft prompts p (Q, n, H), projected z (Q, n, D))."""
        p_QnH = self.recon(h_QnH)
        return p_QnH, self.align(p_QnH)

    @torch.no_grad()
    def initialize(self, embedding_VH: torch.Tensor, seed: int) -> "CompressionHead":
        """Special rows ~ N(mean, std) of the existing rows, per dimension (they start among the tokens the
        LM knows); default nn.Linear init for the maps. Seeded by its own generator: reproducible from
        (seed, embedding matrix) alone."""
        gen = torch.Generator().manual_seed(seed)
        emb = embedding_VH.detach().float().cpu()
        mean_H, std_H = emb.mean(0), emb.std(0)
        rows = mean_H + std_H * torch.randn(self.num_special, emb.shape[1], generator=gen)
        self.special.weight.copy_(rows)
        for lin in (self.recon, self.align):
            bound = 1.0 / lin.in_features ** 0.5
            lin.weight.copy_(torch.empty(lin.weight.shape).uniform_(-bound, bound, generator=gen))
            lin.bias.copy_(torch.empty(lin.bias.shape).uniform_(-bound, bound, generator=gen))
        return self


@dataclass
class CompressionText:
    """Formatting of both passes (no chat template: the tokens follow the query text directly)."""

    tokenizer: object
    family: Family
    max_length: int  # query tokens (bos + instruction + query), before the K special positions
    instruction_format: str
    thought: int
    compression: int
    response_max_length: int  # decoded tokens: response + EOS

    def __post_init__(self):
        vocab = self.tokenizer.get_vocab()
        self.eos_id = vocab[self.family.eos_token]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.bos = [vocab[self.family.bos_token]] if self.family.bos_token else []

    @property
    def num_special(self) -> int:
        return self.thought + self.compression

    @property
    def reserved_positions(self) -> int:
        """Positions every text gives up to the special tokens (TextTokenizer's is 0)."""
        return self.num_special

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def queries(self, texts: list[str], instructions: list[str | None] | None = None) -> list[TokenizedText]:
        """[bos] instruction+query [K placeholders]; the placeholders' ids are never read (injected)."""
        instructions = instructions or [None] * len(texts)
        full = [(self.instruction_format.format(instruction=i) if i else "") + t for t, i in zip(texts, instructions)]
        room = self.max_length - len(self.bos)
        out = []
        for ids in self._ids(full):
            out.append(TokenizedText(self.bos + ids[:room] + [self.pad_id] * self.num_special,
                                     len(self.bos), len(ids) > room))
        return out

    def responses(self, texts: list[str]) -> tuple[list[TokenizedText], list[list[int]]]:
        """Decoding inputs [n placeholders (the soft prompts), r_1..r_L] and labels [r_1..r_L, EOS], which
        belong at positions n-1 .. n-1+L."""
        inputs, labels = [], []
        for ids in self._ids(texts):
            ids = ids[:self.response_max_length - 1]
            inputs.append(TokenizedText([self.pad_id] * self.compression + ids, 0, False))
            labels.append(ids + [self.eos_id])
        return inputs, labels


def special_positions(stream: PackedStream, num_special: int) -> torch.Tensor:
    """(S * K,) positions of every text's K trailing placeholders, text by text."""
    ends_S = stream.cu_seqlens[1:len(stream.text_ids) + 1].long()
    offsets_K = torch.arange(-num_special, 0, device=ends_S.device)
    return (ends_S[:, None] + offsets_K).reshape(-1)


def prompt_positions(stream: PackedStream, n: int) -> torch.Tensor:
    """(S * n,) positions of every decoding text's n leading soft-prompt slots."""
    starts_S = stream.cu_seqlens[:len(stream.text_ids)].long()
    return (starts_S[:, None] + torch.arange(n, device=starts_S.device)).reshape(-1)


def compression_states(model, head: CompressionHead, streams: list[PackedStream], num_texts: int,
                       device) -> torch.Tensor:
    """Last-layer states at the n compression positions of every query text, in text order: (Q, n, H).
    `model` is the EmbeddingModel or the DeepSpeed engine around it; `head` its compression module."""
    k, n = head.num_special, head.compression
    parts, order = [], []
    for s in streams:
        s = s.to(device)
        special_SkH = head.special(len(s.text_ids))
        hidden_TH = model(s, inject=(special_positions(s, k), special_SkH), causal=True, return_hidden=True)
        comp_pos = special_positions(s, n)  # the last n of the K specials are the compression tokens
        parts.append(hidden_TH[comp_pos].view(len(s.text_ids), n, -1))
        order.extend(s.text_ids)
    h_QnH = torch.cat(parts)
    inverse = torch.argsort(torch.tensor(order, device=device))
    assert len(order) == num_texts
    return h_QnH[inverse]


@torch.no_grad()
def embed_texts(model, head: CompressionHead, text: CompressionText, texts: list[str],
                instructions: list[str | None] | None, max_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference: (embeddings (N, D) fp32, soft prompts (N, n, H)) in input order. Every rank of a
    ZeRO-3 group must call this with the same texts (the packing is deterministic)."""
    max_tokens = max(max_tokens, text.max_length + text.num_special)
    return embed_tokenized(model, head, text.queries(texts, instructions), max_tokens, text.pad_id, device)


@torch.no_grad()
def embed_tokenized(model, head: CompressionHead, queries: list[TokenizedText], max_tokens: int, pad_id: int,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """embed_texts for queries already formatted by CompressionText.queries."""
    streams = pack_texts(queries, max_tokens, pad_id)
    p_NnH, z_NnD = head(compression_states(model, head, streams, len(queries), device))
    return z_NnD.float().mean(1), p_NnH
