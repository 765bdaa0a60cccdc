"""Compression-token alignment, LLM2Vec-Gen (METHODS.md section 3).

Per query: encoding pass over [query, K specials] -> n compression states h -> p = W_recon h,
z = W_align p, e = mean_n z. Decoding pass over [p_1..p_n, response] with labels [response, EOS]
(the family's own EOS, not a hard-coded one). Both passes run packed, causal, on the same frozen
backbone; only the K special rows and the two maps train.

  L = w_recon * L_recon + w_align * L_align
  L_recon: token-mean cross-entropy over the GLOBAL batch's response tokens (+EOS)
  L_align: MSE between e and the teacher embedding of the response, mean over the global batch and D
("global batch": every rank and every accumulated micro-batch of the optimizer step; StepContext.totals)
Each rank's part is scaled by world / global count because DeepSpeed averages gradients over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from embedtrain import distributed as D
from embedtrain.config.objective_options import CompressionOptions
from embedtrain.data.batches import MicroBatch, instruction_for
from embedtrain.data.jsonl import Example
from embedtrain.data.packing import PackedStream, TextTokenizer, pack_on_every_rank
from embedtrain.evaluation.requests import generation_request
from embedtrain.model.compression import (CompressionHead, CompressionText, compression_states,
                                          prompt_positions)
from embedtrain.model.compression_io import save_compression_final
from embedtrain.model.embedder import EmbeddingModel, unwrap
from embedtrain.model.teacher import Teacher
from embedtrain.objectives.base import NO_STEP, Objective, StepContext
from embedtrain.objectives.decoding import decode_ce_sum, labelled, stream_labels
from embedtrain.objectives.registry import register

__all__ = ["Compression", "CompressionBatch", "CompressionOptions"]


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


@register("compression")
class Compression(Objective):
    uses_lm_head = True
    uses_negatives = False

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
        # labels start at each segment's last soft prompt (positions 0..n-1 hold the n prompts)
        decode_labels = stream_labels(decode, labels, t.compression - 1)
        if self.teacher is not None:
            targets = self.teacher.encode([e.positive for e in examples])
        else:
            targets = torch.stack([e.target for e in examples]) if examples else torch.zeros(0, 1)
        return CompressionBatch(streams, queries, len(examples), examples[0].task if examples else "",
                                sum(q.truncated for q in queries), self.max_tokens, t.pad_id, self.multiple,
                                decode, decode_labels, targets.float())

    def step_totals(self, batches: list[CompressionBatch]) -> dict[str, float]:
        return {"tokens": float(sum(sum(labelled(b.decode_labels)) for b in batches)),
                "queries": float(sum(b.num_queries for b in batches))}

    def loss(self, model, batch: CompressionBatch, step: StepContext = NO_STEP):
        module = unwrap(model)
        head: CompressionHead = module.compression
        o, dev = self.options, self.device
        h_QnH = compression_states(model, head, batch.streams, batch.num_queries, dev)
        p_QnH, z_QnD = head(h_QnH)
        e_QD = z_QnD.float().mean(1)
        align_sum = ((e_QD - batch.targets_QD.to(dev)) ** 2).mean(-1).sum()
        counts = labelled(batch.decode_labels)

        def soft_prompts(s):  # each text's n prompt positions get its n soft prompts
            prompts = p_QnH[torch.tensor(s.text_ids, device=dev)].reshape(-1, p_QnH.shape[-1])
            return prompt_positions(s, head.compression), prompts

        recon_sum = decode_ce_sum(model, batch.decode_streams, batch.decode_labels, soft_prompts, module.lm_head(),
                                  o.logits_chunk, dev)
        # the whole step's response tokens and queries (or this global micro-batch's), x micro-batches per step
        glob, micro_steps = self.normalizer({"tokens": float(sum(counts)), "queries": float(batch.num_queries)}, step)
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
        metrics["flops"] = (self.stream_flops(batch.streams, step, causal=True)
                            + self.stream_flops(batch.decode_streams, step, sum(counts), causal=True))
        return loss, metrics

    # ---------------------------------------------------------------- engine hooks
    def text_format(self, data_format: TextTokenizer) -> CompressionText:
        return self.text  # queries followed by the special tokens

    def eval_instruction_policy(self, cfg):
        # the model embeds the answer the LLM would give: every input is phrased as a request for it
        return partial(generation_request, document=cfg.eval.document_instruction)

    def saved_module(self, model: EmbeddingModel) -> torch.nn.Module:
        return model.compression  # the backbone is frozen: only the special rows and maps are saved

    def write_weights(self, state, model: EmbeddingModel, cfg, tokenizer, out: Path) -> None:
        save_compression_final(state, model.compression, cfg, model.family.name, tokenizer, out, self.options)
