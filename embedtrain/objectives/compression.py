"""Compression-token alignment, LLM2Vec-Gen (METHODS.md section 3).

Per query: encoding pass over [query, K specials] -> n compression states h -> p = W_recon h,
z = W_align p, e = mean_n z. Decoding pass over [p_1..p_n, response] with labels [response, EOS]
(the family's own EOS, not a hard-coded one). Both passes run packed, causal, on the same frozen
backbone; only the K special rows and the two maps train.

  L = w_recon * L_recon + w_align * L_align
  L_recon: token-mean cross-entropy over the GLOBAL batch's response tokens (+EOS)
  L_align: MSE between e and the teacher embedding of the response, mean over the global batch and D
("global batch": every rank and every accumulated micro-batch of the optimizer step; Objective.step_norm)
Each rank's part is scaled by world / global count because DeepSpeed averages gradients over ranks.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from embedtrain import distributed as D
from embedtrain.data.batches import MicroBatch, instruction_for
from embedtrain.data.jsonl import Example
from embedtrain.data.packing import PackedStream, pack_on_every_rank
from embedtrain.model.compression import (CompressionHead, CompressionText, compression_states,
                                          prompt_positions)
from embedtrain.objectives.base import Objective
from embedtrain.objectives.reconstruction import chunked_ce_sum
from embedtrain.objectives.registry import register

log = logging.getLogger(__name__)


@dataclass
class CompressionOptions:
    thought_tokens: int = 10  # m (paper v1: 10; v2: 0)
    compression_tokens: int = 10  # n
    w_recon: float = 1.0
    w_align: float = 1.0
    response_max_length: int = 512  # decoded tokens per response, EOS included
    online_teacher: bool = False  # embed responses with the `teacher:` model every step instead of the cache
    logits_chunk: int = 1024  # target positions per LM-head chunk

    def validate(self, cfg):
        key = "objective.compression."
        if self.compression_tokens < 1 or self.thought_tokens < 0:
            return key + "compression_tokens", "needs compression_tokens >= 1 and thought_tokens >= 0"
        if self.w_recon < 0 or self.w_align < 0 or self.w_recon + self.w_align == 0:
            return key + "w_recon", f"weights must be >= 0 and not both 0, got {self.w_recon}, {self.w_align}"
        if self.response_max_length < 2 or self.logits_chunk < 1:
            return key + "response_max_length", "response_max_length must be >= 2 and logits_chunk >= 1"
        if cfg.model.lora.enabled:
            return "model.lora.enabled", "the compression objective freezes the whole backbone; disable LoRA"
        if cfg.model.attention != "causal":
            return "model.attention", "the frozen LLM reads the query causally: set model.attention: causal"
        budget = cfg.data.max_tokens_per_batch
        need = max(cfg.data.max_length + self.thought_tokens + self.compression_tokens,
                   self.compression_tokens + self.response_max_length - 1)
        if budget < need:
            return "data.max_tokens_per_batch", (f"({budget}) must hold one query plus its special tokens and one "
                                                 f"decoded response ({need} tokens)")
        if self.online_teacher and not cfg.teacher.path:
            return "teacher.path", "objective.compression.online_teacher needs a teacher"
        return None


@dataclass
class CompressionBatch(MicroBatch):
    decode_streams: list[PackedStream] = field(default_factory=list)
    decode_labels: list[torch.Tensor] = field(default_factory=list)  # per decode stream (T,), -100 = none
    targets_QD: torch.Tensor | None = None

    @property
    def real_tokens(self) -> int:
        return sum(s.num_real_tokens for s in self.streams + self.decode_streams)

    @property
    def computed_tokens(self) -> int:
        return sum(s.num_tokens for s in self.streams + self.decode_streams)


@register("compression", CompressionOptions)
class Compression(Objective):
    uses_lm_head = True
    uses_negatives = False
    splittable = True  # examples do not interact: a batch may be split into accumulated micro-batches

    def setup(self, model, cfg, index, tokenizer) -> None:
        """Freeze the backbone, add the special rows and maps (seeded), fix the text formatting."""
        o = self.options
        if index.teacher_dim is None:
            raise ValueError("objective compression trains on `embedtrain generate` output folders: list them "
                             "in data.train (files with plain pairs carry no teacher targets)")
        for p in model.lm.parameters():
            p.requires_grad_(False)
        embedding = model.lm.get_input_embeddings().weight
        head = CompressionHead(embedding.shape[1], index.teacher_dim, o.thought_tokens, o.compression_tokens,
                               dtype=embedding.dtype)
        model.compression = head.initialize(embedding, cfg.run.seed).to(embedding.device)
        self.text = CompressionText(tokenizer, model.family, cfg.data.max_length, cfg.data.instruction_format,
                                    o.thought_tokens, o.compression_tokens, o.response_max_length)
        self.max_tokens, self.multiple = cfg.data.max_tokens_per_batch, cfg.data.pad_to_multiple_of
        self.instructions, self.default_instruction = cfg.data.instructions, cfg.data.default_instruction
        self.teacher = None
        if o.online_teacher:
            from embedtrain.model.teacher import Teacher

            self.teacher = Teacher(cfg.teacher, self.device)
            if self.teacher.dim != index.teacher_dim:
                raise ValueError(f"teacher {cfg.teacher.path} gives {self.teacher.dim}-d vectors but the data's "
                                 f"cached targets are {index.teacher_dim}-d")

    def make_batch(self, examples: list[Example]) -> CompressionBatch:
        t = self.text
        inst = [instruction_for(e, self.instructions, self.default_instruction) for e in examples]
        queries = t.queries([e.query for e in examples], inst)
        streams = pack_on_every_rank(queries, self.max_tokens, t.pad_id, self.multiple, self.device)
        inputs, labels = t.responses([e.positive for e in examples])
        decode = pack_on_every_rank(inputs, self.max_tokens, t.pad_id, self.multiple, self.device)
        decode_labels = []
        for s in decode:
            y_T = torch.full((s.num_tokens,), -100, dtype=torch.long)
            for seg, text_id in enumerate(s.text_ids):
                start = int(s.cu_seqlens[seg]) + t.compression - 1
                y_T[start:start + len(labels[text_id])] = torch.tensor(labels[text_id])
            decode_labels.append(y_T)
        if self.teacher is not None:
            targets = self.teacher.encode([e.positive for e in examples])
        else:
            targets = torch.stack([e.target for e in examples]) if examples else torch.zeros(0, 1)
        return CompressionBatch(streams, queries, len(examples), examples[0].task if examples else "",
                                sum(q.truncated for q in queries), self.max_tokens, t.pad_id, self.multiple,
                                decode, decode_labels, targets.float())

    def step_totals(self, batches: list[CompressionBatch]) -> dict[str, float]:
        return {"tokens": float(sum(int((y != -100).sum()) for b in batches for y in b.decode_labels)),
                "queries": float(sum(b.num_queries for b in batches))}

    def loss(self, model, batch: CompressionBatch):
        module = model.module if hasattr(model, "module") else model
        head: CompressionHead = module.compression
        o, dev = self.options, self.device
        h_QnH = compression_states(model, head, batch.streams, batch.num_queries, dev)
        p_QnH, z_QnD = head(h_QnH)
        e_QD = z_QnD.float().mean(1)
        align_sum = ((e_QD - batch.targets_QD.to(dev)) ** 2).mean(-1).sum()
        counts = [int((y != -100).sum()) for y in batch.decode_labels]
        n_chunks = [math.ceil(c / o.logits_chunk) for c in counts]
        if D.world_size() > 1:
            n_chunks = D.all_reduce_max_ints(n_chunks, dev)
        lm_head = module.lm_head()
        recon_sum = align_sum.new_zeros(())
        for s, y_T, k in zip(batch.decode_streams, batch.decode_labels, n_chunks):
            s, y_T = s.to(dev), y_T.to(dev)
            prompts = p_QnH[torch.tensor(s.text_ids, device=dev)].reshape(-1, p_QnH.shape[-1])
            hidden_TH = model(s, inject=(prompt_positions(s, head.compression), prompts), causal=True,
                              return_hidden=True)
            mask_T = y_T != -100
            recon_sum = recon_sum + chunked_ce_sum(hidden_TH[mask_T], y_T[mask_T], lm_head, o.logits_chunk, k)
        # the whole step's response tokens and queries (or this global micro-batch's), x micro-batches per step
        glob, micro_steps = self.normalizer({"tokens": float(sum(counts)), "queries": float(batch.num_queries)})
        world = D.world_size() * micro_steps  # DeepSpeed averages over ranks and micro-steps: undo both
        loss = (o.w_recon * recon_sum * world / glob["tokens"]) + (o.w_align * align_sum * world / glob["queries"])
        cos = torch.nn.functional.cosine_similarity(e_QD.detach(), batch.targets_QD.to(dev), dim=-1).sum()
        parts = D.all_reduce_sum({"recon": float(recon_sum.detach()), "align": float(align_sum.detach()),
                                  "cos": float(cos)}, dev)
        metrics = {"loss_recon": parts["recon"] * micro_steps / glob["tokens"],  # the step averages these
                   "loss_align": parts["align"] * micro_steps / glob["queries"],
                   "teacher_cos": parts["cos"] * micro_steps / glob["queries"],
                   "target_tokens": glob["tokens"] / micro_steps}
        metrics["loss"] = o.w_recon * metrics["loss_recon"] + o.w_align * metrics["loss_align"]
        metrics["flops"] = (self.stream_flops(batch.streams, causal=True)
                            + self.stream_flops(batch.decode_streams, sum(counts), causal=True))
        return loss, metrics
