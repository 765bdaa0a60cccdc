"""Bidirectional reconstruction, EBQ2D + EBD2Q (METHODS.md section 1; the Anchor Embedding stage I).

Anchor pass: queries (with instruction) and positives are embedded as usual; the anchor of a text is
its last-layer state at the final EOS (pooling `last`). Decoding pass: for Q2D each document is
decoded from its query's anchor placed as ONE input embedding in front of the document's tokens;
D2Q likewise for queries from document anchors. Same weights, causal, teacher forcing, packed.

What is decoded and scored (the reference's mask bug is not reproduced): the target's whole
formatted text as the embedder sees it (template, instruction for queries, content) is both attended
and predicted; only the final EOS is not predicted. Inputs are [anchor, t_1 .. t_{n-2}] and labels
t_1 .. t_{n-1}: every decoding position carries a label.

Logits exist only for target positions, a chunk at a time (objectives/decoding.py).

Loss: token mean over the GLOBAL batch per direction (every rank and every accumulated micro-batch of
the step: StepContext.totals), L = w_q2d * L_Q2D + w_d2q * L_D2Q with
(w_q2d, w_d2q) = (alpha, 1 - alpha); switching a direction off gives the other weight 1.
"""
from __future__ import annotations

import torch

from embedtrain import distributed as D
from embedtrain.config.objective_options import ReconstructionOptions
from embedtrain.data.batches import MicroBatch
from embedtrain.data.packing import TokenizedText, pack_on_every_rank
from embedtrain.model.embedder import unwrap
from embedtrain.objectives.base import NO_STEP, Objective, StepContext, embed_batch
from embedtrain.objectives.decoding import chunked_ce_sum, decode_ce_sum, labelled, stream_labels
from embedtrain.objectives.registry import register

__all__ = ["Reconstruction", "ReconstructionOptions", "chunked_ce_sum", "decoding_inputs"]


def decoding_inputs(targets: list[TokenizedText]) -> tuple[list[TokenizedText], list[list[int]]]:
    """Per target [anchor slot, t_1..t_{n-2}] (slot id is a placeholder) and labels t_1..t_{n-1}."""
    inputs, labels = [], []
    for t in targets:
        inputs.append(TokenizedText([t.ids[0]] + t.ids[:-2], 0, t.truncated))
        labels.append(t.ids[:-1])
    return inputs, labels


@register("reconstruction")
class Reconstruction(Objective):
    uses_lm_head = True
    uses_negatives = False

    def _direction(self, model, batch: MicroBatch, anchors_NH, targets: list[TokenizedText],
                   step: StepContext = NO_STEP):
        """Sum of CE over one direction's targets on this rank, the number of target tokens, and the
        (real, computed) tokens and the model FLOPs of its decoding streams."""
        inputs, labels = decoding_inputs(targets)
        streams = pack_on_every_rank(inputs, batch.max_tokens, batch.pad_id, batch.pad_multiple, self.device)
        labels_T = stream_labels(streams, labels)
        count = sum(labelled(labels_T))

        def anchor_slots(s):  # each text's first position holds its anchor
            return s.cu_seqlens[:len(s.text_ids)].long(), anchors_NH[torch.tensor(s.text_ids, device=self.device)]

        total = decode_ce_sum(model, streams, labels_T, anchor_slots, unwrap(model).lm_head(),
                              self.options.logits_chunk, self.device)
        return total, count, (sum(s.num_real_tokens for s in streams), sum(s.num_tokens for s in streams),
                              self.stream_flops(streams, step, count, causal=True))

    def step_totals(self, batches: list[MicroBatch]) -> dict[str, float]:
        """Decoded (labelled) tokens per direction over the step's micro-batches."""
        def labels(targets):
            return float(sum(len(y) for y in decoding_inputs(targets)[1]))

        w_q2d, w_d2q = self.options.weights()
        totals = {}
        if w_q2d:
            totals["q2d"] = labels([t for b in batches for t in b.texts[b.num_queries:2 * b.num_queries]])
        if w_d2q:
            totals["d2q"] = labels([t for b in batches for t in b.texts[:b.num_queries]])
        return totals

    def loss(self, model, batch: MicroBatch, step: StepContext = NO_STEP):
        q = batch.num_queries
        anchors = embed_batch(model, batch, self.device)  # (2Q, H): query anchors, then document anchors
        w_q2d, w_d2q = self.options.weights()
        sums, counts, tokens = {}, {}, []
        if w_q2d:
            sums["q2d"], counts["q2d"], t = self._direction(model, batch, anchors[:q], batch.texts[q:2 * q], step)
            tokens.append(t)
        if w_d2q:
            sums["d2q"], counts["d2q"], t = self._direction(model, batch, anchors[q:2 * q], batch.texts[:q], step)
            tokens.append(t)
        # per direction: tokens of the whole step (or this global micro-batch), x micro-batches per step
        glob, micro_steps = self.normalizer({k: float(v) for k, v in counts.items()}, step)
        world = D.world_size()  # DeepSpeed averages gradients over ranks; the global mean needs x world
        weight = {"q2d": w_q2d, "d2q": w_d2q}
        loss = sum(weight[k] * sums[k] * world * micro_steps / glob[k] for k in sums)
        parts = D.all_reduce_sum({k: float(v.detach()) for k, v in sums.items()}, self.device)
        metrics = {f"loss_{k}": parts[k] * micro_steps / glob[k] for k in sums}  # the step averages these
        metrics["loss"] = sum(weight[k] * metrics[f"loss_{k}"] for k in sums)
        metrics["target_tokens"] = sum(glob.values()) / micro_steps
        # The engine adds these to the batch's (anchor pass) token counts for tokens/s and packing efficiency.
        metrics["extra_real_tokens"] = float(sum(t[0] for t in tokens))
        metrics["extra_computed_tokens"] = float(sum(t[1] for t in tokens))
        metrics["flops"] = self.stream_flops(batch.streams, step) + sum(t[2] for t in tokens)
        return loss, metrics
