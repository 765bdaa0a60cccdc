"""Turning texts into packed token streams.

A text becomes: [bos] template-prefix [instruction] content template-suffix EOS, the middle three
tokenized as one string. Truncation removes tokens from the end of that string (content) only, so
the EOS (where last-token pooling reads) always survives.
Texts are then packed first-fit-decreasing into streams of at most `max_tokens` tokens with
cumulative sequence lengths and position ids restarting at 0 for each text; nothing is padded except,
optionally, the tail of a stream up to a multiple that GPU kernels like (as its own dummy segment).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from embedtrain import distributed as D
from embedtrain.families import Family


@dataclass
class TokenizedText:
    ids: list[int]
    pool_from: int  # mean pooling averages ids[pool_from:], i.e. everything after the instruction
    truncated: bool


class TextTokenizer:
    """Family-aware tokenization of queries (with instruction) and documents."""

    reserved_positions = 0  # positions after every text that are not the text's (model/compression.py: K)

    def __init__(self, tokenizer, family: Family, max_length: int, instruction_format: str):
        self.tok = tokenizer
        self.family = family
        self.max_length = max_length
        self.instruction_format = instruction_format
        vocab = tokenizer.get_vocab()
        self.eos_id = vocab[family.eos_token]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        head = [vocab[family.bos_token]] if family.bos_token else []
        self.prefix_len = len(self._encode([family.prefix])[0])
        self.prefix_ids = head + self._encode([family.prefix])[0]
        self.suffix_ids = self._encode([family.suffix])[0] if family.suffix else []

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def encode(self, texts: list[str], instructions: list[str | None] | None = None) -> list[TokenizedText]:
        """Template prefix, instruction and content are tokenized as ONE string (as sentence-transformers
        tokenizes prompt + text, so exported models see the same ids); truncation cuts its tail, i.e.
        content. pool_from is the length of prefix + instruction tokenized alone (sentence-transformers'
        prompt length), so mean pooling matches an exported model with include_prompt=False."""
        instructions = instructions or [None] * len(texts)
        heads = {i: self.family.prefix + (self.instruction_format.format(instruction=i) if i else "")
                 for i in sorted(set(instructions), key=str)}
        head_len = dict(zip(heads, (len(ids) for ids in self._encode(list(heads.values())))))
        joint = self._encode([heads[i] + t for t, i in zip(texts, instructions)])
        bos = self.prefix_ids[:len(self.prefix_ids) - self.prefix_len]
        room = self.max_length - len(bos) - len(self.suffix_ids) - 1
        out = []
        for ids, inst in zip(joint, instructions):
            if head_len[inst] >= room:
                raise ValueError(f"data.max_length={self.max_length} leaves no room for content after the "
                                 f"template and instruction ({head_len[inst] + len(bos) + len(self.suffix_ids) + 1} "
                                 f"tokens): raise max_length or shorten the instruction {inst!r}")
            out.append(TokenizedText(bos + ids[:room] + self.suffix_ids + [self.eos_id], len(bos) + head_len[inst],
                                     len(ids) > room))
        return out


@dataclass
class PackedStream:
    """One packed stream: S texts (plus maybe one padding segment) in T tokens."""

    input_ids: torch.Tensor  # (T,) long
    position_ids: torch.Tensor  # (T,) long, restarting at 0 per segment
    cu_seqlens: torch.Tensor  # (S'+1,) int32, S' = S texts + optional padding segment
    pool_mask: torch.Tensor  # (T,) bool, tokens mean pooling averages
    text_ids: list[int]  # (S,) index of each text segment in the caller's text list
    num_real_tokens: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def last_index(self) -> torch.Tensor:  # (S,) position of each text's final (EOS) token
        return (self.cu_seqlens[1:len(self.text_ids) + 1] - 1).long()

    def to(self, device) -> "PackedStream":
        return PackedStream(self.input_ids.to(device), self.position_ids.to(device), self.cu_seqlens.to(device),
                            self.pool_mask.to(device), self.text_ids, self.num_real_tokens)


def pack_texts(texts: list[TokenizedText], max_tokens: int, pad_id: int,
               pad_to_multiple_of: int = 1, min_streams: int = 1) -> list[PackedStream]:
    """First-fit-decreasing packing; a stream never exceeds max_tokens (padding included).

    min_streams: split the streams holding most texts until there are this many. Under ZeRO-3 (and
    gradient caching under ZeRO-2) every rank must run the same number of forward/backward passes.
    """
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i].ids), i))
    bins: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = len(texts[i].ids)
        if n > max_tokens:
            raise ValueError(f"a text of {n} tokens exceeds data.max_tokens_per_batch={max_tokens}")
        for b, total in enumerate(used):
            if total + n <= max_tokens:
                bins[b].append(i)
                used[b] += n
                break
        else:
            bins.append([i])
            used.append(n)
    while len(bins) < min_streams:
        b = max(range(len(bins)), key=lambda j: len(bins[j]))
        if len(bins[b]) < 2:
            raise ValueError(f"cannot make {min_streams} packed streams from {len(texts)} texts: another rank "
                             "needs that many; raise data.max_tokens_per_batch")
        half = len(bins[b]) // 2
        bins.append(bins[b][half:])
        bins[b] = bins[b][:half]
    return [_build_stream([texts[i] for i in b], b, pad_id, pad_to_multiple_of, max_tokens) for b in bins]


def pack_on_every_rank(texts: list[TokenizedText], max_tokens: int, pad_id: int, pad_to_multiple_of: int,
                       device) -> list[PackedStream]:
    """pack_texts, then split streams until this rank has as many as the rank with most: ZeRO-3 gathers
    and ZeRO-2 reductions are collectives per forward/backward, so every rank must run the same number."""
    streams = pack_texts(texts, max_tokens, pad_id, pad_to_multiple_of)
    if D.world_size() > 1:
        most = max(D.all_gather_ints(len(streams), device))
        if most > len(streams):
            streams = pack_texts(texts, max_tokens, pad_id, pad_to_multiple_of, min_streams=most)
    return streams


def _build_stream(texts: list[TokenizedText], text_ids: list[int], pad_id: int, multiple: int,
                  max_tokens: int) -> PackedStream:
    ids, pos, pool, cu = [], [], [], [0]
    for t in texts:
        n = len(t.ids)
        ids.extend(t.ids)
        pos.extend(range(n))
        pool.extend([False] * t.pool_from + [True] * (n - t.pool_from))
        cu.append(cu[-1] + n)
    real = len(ids)
    pad = (-real) % multiple
    if pad and real + pad <= max_tokens:  # padding is its own segment, so it attends only to itself
        ids.extend([pad_id] * pad)
        pos.extend(range(pad))
        pool.extend([False] * pad)
        cu.append(cu[-1] + pad)
    return PackedStream(torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long),
                        torch.tensor(cu, dtype=torch.int32), torch.tensor(pool, dtype=torch.bool),
                        list(text_ids), real)
