"""Bidirectional reconstruction, EBQ2D + EBD2Q (METHODS.md section 1; the Anchor Embedding stage I).

Anchor pass: queries (with instruction) and positives are embedded as usual; the anchor of a text is
its last-layer state at the final EOS (pooling `last`). Decoding pass: for Q2D each document is
decoded from its query's anchor placed as ONE input embedding in front of the document's tokens;
D2Q likewise for queries from document anchors. Same weights, causal, teacher forcing, packed.

What is decoded and scored (the reference's mask bug is not reproduced): the target's whole
formatted text as the embedder sees it (template, instruction for queries, content) is both attended
and predicted; only the final EOS is not predicted. Inputs are [anchor, t_1 .. t_{n-2}] and labels
t_1 .. t_{n-1}: every decoding position carries a label.

Logits exist only for target positions, a chunk at a time: neither a (B, T, V) tensor nor per-chunk
logits are kept for backward (fused linear + cross-entropy; see chunked_ce_sum).

Loss: token mean over the GLOBAL batch per direction (every rank and every accumulated micro-batch of
the step: Objective.step_norm), L = w_q2d * L_Q2D + w_d2q * L_D2Q with
(w_q2d, w_d2q) = (alpha, 1 - alpha); switching a direction off gives the other weight 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from embedtrain import distributed as D
from embedtrain.data.batches import MicroBatch
from embedtrain.data.packing import TokenizedText, pack_on_every_rank
from embedtrain.objectives.base import Objective, embed_batch
from embedtrain.objectives.registry import register


@dataclass
class ReconstructionOptions:
    alpha: float = 0.2  # weight of Q2D (documents decoded from query anchors); D2Q gets 1 - alpha
    q2d: bool = True
    d2q: bool = True
    logits_chunk: int = 1024  # target positions per LM-head chunk

    def weights(self) -> tuple[float, float]:
        if not self.q2d:
            return 0.0, 1.0
        if not self.d2q:
            return 1.0, 0.0
        return self.alpha, 1.0 - self.alpha

    def validate(self, cfg):
        if not 0.0 <= self.alpha <= 1.0:
            return "objective.reconstruction.alpha", f"must be in [0, 1], got {self.alpha}"
        if not (self.q2d or self.d2q):
            return "objective.reconstruction.q2d", "q2d and d2q are both off: nothing to train"
        if self.logits_chunk < 1:
            return "objective.reconstruction.logits_chunk", f"must be >= 1, got {self.logits_chunk}"
        if cfg.model.pooling != "last":
            return "model.pooling", "reconstruction decodes from the anchor (the EOS state): set model.pooling: last"
        if cfg.model.attention != "causal":
            return "model.attention", "the anchor recipe embeds with causal attention; set model.attention: causal"
        return None


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of (h @ W^T) without keeping logits: each chunk's gradients w.r.t. h and W
    are formed in the forward pass (softmax - onehot), so backward only scales them. Same matmul count
    as materialising full logits, one (chunk, V) block alive at a time, one fp32 (V, H) gradient."""

    @staticmethod
    def forward(ctx, h_NH, w_VH, y_N, chunk: int):
        grad_h_NH = torch.empty_like(h_NH)
        # A frozen head (compression objective) needs no (V, H) gradient at all.
        want_w = ctx.needs_input_grad[1]
        grad_w_VH = torch.zeros(w_VH.shape if want_w else (0,), dtype=torch.float32, device=w_VH.device)
        total = torch.zeros((), dtype=torch.float32, device=h_NH.device)
        for start in range(0, h_NH.shape[0], chunk):
            h_CH, y_C = h_NH[start:start + chunk], y_N[start:start + chunk]
            logits_CV = (h_CH @ w_VH.T).float()
            lse_C = torch.logsumexp(logits_CV, dim=-1)
            total += (lse_C - logits_CV.gather(1, y_C[:, None])[:, 0]).sum()
            probs_CV = logits_CV.sub_(lse_C[:, None]).exp_()
            probs_CV[torch.arange(len(y_C), device=y_C.device), y_C] -= 1.0  # d(CE)/d(logits)
            grad_h_NH[start:start + chunk] = (probs_CV.to(w_VH.dtype) @ w_VH).to(h_NH.dtype)
            if want_w:
                if h_CH.dtype == torch.float32:
                    grad_w_VH.addmm_(probs_CV.T, h_CH)
                else:  # a bf16 tensor-core matmul (an fp32 one runs ~10x slower on a GPU); fp32 only to sum chunks
                    grad_w_VH += (probs_CV.T.to(h_CH.dtype) @ h_CH).float()
        ctx.save_for_backward(grad_h_NH, grad_w_VH)
        ctx.w_dtype, ctx.want_w = w_VH.dtype, want_w
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h_NH, grad_w_VH = ctx.saved_tensors
        # In place: these buffers exist only for this backward, and a copy of a (V, H) gradient is large.
        grad_w = grad_w_VH.mul_(grad_total).to(ctx.w_dtype) if ctx.want_w else None
        return grad_h_NH.mul_(grad_total), grad_w, None, None


def _ce_sum(h_CH: torch.Tensor, y_C: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(h_CH).float(), y_C, reduction="sum")


def chunked_ce_sum(h_NH: torch.Tensor, y_N: torch.Tensor, head: torch.nn.Module, chunk: int,
                   n_chunks: int) -> torch.Tensor:
    """Sum of token cross-entropies; logits (chunk, V) exist one chunk at a time, in backward too.

    A plain head weight takes the fused path above. A ZeRO-3 partitioned weight is only whole inside
    the head's own forward, so there each chunk calls the module under activation checkpointing
    (recomputed in backward), n_chunks times: ranks must call a partitioned module equally often.
    """
    if getattr(head, "bias", None) is None and not hasattr(head.weight, "ds_id"):
        return _LinearCrossEntropy.apply(h_NH, head.weight, y_N, chunk)
    if getattr(head, "bias", None) is None and not head.weight.requires_grad:
        # A frozen partitioned head (compression objective): gather it for the fused pass, which keeps
        # no reference to the weight for backward. Called once per stream, and ranks run equal counts.
        import deepspeed

        with deepspeed.zero.GatheredParameters([head.weight], modifier_rank=None):
            return _LinearCrossEntropy.apply(h_NH, head.weight, y_N, chunk)
    total = h_NH.new_zeros((), dtype=torch.float32)
    for k in range(n_chunks):
        sl = slice(k * chunk, (k + 1) * chunk)
        total = total + checkpoint(_ce_sum, h_NH[sl], y_N[sl], head, use_reentrant=False)
    return total


def decoding_inputs(targets: list[TokenizedText]) -> tuple[list[TokenizedText], list[list[int]]]:
    """Per target [anchor slot, t_1..t_{n-2}] (slot id is a placeholder) and labels t_1..t_{n-1}."""
    inputs, labels = [], []
    for t in targets:
        inputs.append(TokenizedText([t.ids[0]] + t.ids[:-2], 0, t.truncated))
        labels.append(t.ids[:-1])
    return inputs, labels


@register("reconstruction", ReconstructionOptions)
class Reconstruction(Objective):
    uses_lm_head = True
    uses_negatives = False
    splittable = True

    def _direction(self, model, batch: MicroBatch, anchors_NH, targets: list[TokenizedText]):
        """Sum of CE over one direction's targets on this rank, the number of target tokens, and the
        (real, computed) tokens and the model FLOPs of its decoding streams."""
        inputs, labels = decoding_inputs(targets)
        streams = pack_on_every_rank(inputs, batch.max_tokens, batch.pad_id, batch.pad_multiple, self.device)
        per_stream = []
        for s in streams:
            y_T = torch.full((s.num_tokens,), -100, dtype=torch.long)
            for seg, text_id in enumerate(s.text_ids):
                a = int(s.cu_seqlens[seg])
                y_T[a:a + len(labels[text_id])] = torch.tensor(labels[text_id])
            per_stream.append((s, y_T))
        counts = [int((y != -100).sum()) for _, y in per_stream]
        n_chunks = [math.ceil(c / self.options.logits_chunk) for c in counts]
        if D.world_size() > 1:
            n_chunks = D.all_reduce_max_ints(n_chunks, self.device)
        head = model.module.lm_head() if hasattr(model, "module") else model.lm_head()
        total = anchors_NH.new_zeros((), dtype=torch.float32)
        for (s, y_T), k in zip(per_stream, n_chunks):
            s = s.to(self.device)
            y_T = y_T.to(self.device)
            slots_S = s.cu_seqlens[:len(s.text_ids)].long()
            vectors = anchors_NH[torch.tensor(s.text_ids, device=self.device)]
            hidden_TH = model(s, inject=(slots_S, vectors), causal=True, return_hidden=True)
            mask_T = y_T != -100
            total = total + chunked_ce_sum(hidden_TH[mask_T], y_T[mask_T], head, self.options.logits_chunk, k)
        return total, sum(counts), (sum(s.num_real_tokens for s in streams), sum(s.num_tokens for s in streams),
                                    self.stream_flops(streams, sum(counts), causal=True))

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

    def loss(self, model, batch: MicroBatch):
        q = batch.num_queries
        anchors = embed_batch(model, batch, self.device)  # (2Q, H): query anchors, then document anchors
        w_q2d, w_d2q = self.options.weights()
        sums, counts, tokens = {}, {}, []
        if w_q2d:
            sums["q2d"], counts["q2d"], t = self._direction(model, batch, anchors[:q], batch.texts[q:2 * q])
            tokens.append(t)
        if w_d2q:
            sums["d2q"], counts["d2q"], t = self._direction(model, batch, anchors[q:2 * q], batch.texts[:q])
            tokens.append(t)
        # per direction: tokens of the whole step (or this global micro-batch), x micro-batches per step
        glob, micro_steps = self.normalizer({k: float(v) for k, v in counts.items()})
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
        metrics["flops"] = self.stream_flops(batch.streams) + sum(t[2] for t in tokens)
        return loss, metrics
