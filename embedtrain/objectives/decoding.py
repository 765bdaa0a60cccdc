"""Teacher-forced decoding passes, shared by the objectives that decode (reconstruction, compression).

A decoding pass runs packed streams causally with vectors injected at given positions (an anchor, or a
compression run's soft prompts) and sums the token cross-entropy of the labelled positions. Logits exist
only for labelled positions, a chunk at a time: neither a (B, T, V) tensor nor per-chunk logits are kept
for backward (fused linear + cross-entropy, below).
"""
from __future__ import annotations

import math
from typing import Callable

import deepspeed
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from embedtrain import distributed as D
from embedtrain.data.packing import PackedStream

IGNORE = -100  # label of a position that is not scored


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
        with deepspeed.zero.GatheredParameters([head.weight], modifier_rank=None):
            return _LinearCrossEntropy.apply(h_NH, head.weight, y_N, chunk)
    total = h_NH.new_zeros((), dtype=torch.float32)
    for k in range(n_chunks):
        sl = slice(k * chunk, (k + 1) * chunk)
        total = total + checkpoint(_ce_sum, h_NH[sl], y_N[sl], head, use_reentrant=False)
    return total


def stream_labels(streams: list[PackedStream], labels: list[list[int]], offset: int = 0) -> list[torch.Tensor]:
    """(T,) labels per packed stream: text i's labels start `offset` positions into its segment; IGNORE elsewhere."""
    out = []
    for s in streams:
        y_T = torch.full((s.num_tokens,), IGNORE, dtype=torch.long)
        for seg, text_id in enumerate(s.text_ids):
            start = int(s.cu_seqlens[seg]) + offset
            y_T[start:start + len(labels[text_id])] = torch.tensor(labels[text_id])
        out.append(y_T)
    return out


def labelled(labels_T: list[torch.Tensor]) -> list[int]:
    """Scored positions per stream."""
    return [int((y != IGNORE).sum()) for y in labels_T]


def decode_ce_sum(model, streams: list[PackedStream], labels_T: list[torch.Tensor],
                  inject: Callable[[PackedStream], tuple[torch.Tensor, torch.Tensor]], head: torch.nn.Module,
                  chunk: int, device: torch.device) -> torch.Tensor:
    """Sum of token cross-entropies over every stream's labelled positions. inject(stream on device) gives
    (positions, vectors) placed as input embeddings. The LM-head chunk count of each stream is the max
    over ranks: a ZeRO-3 partitioned head must be called equally often on every rank."""
    n_chunks = [math.ceil(c / chunk) for c in labelled(labels_T)]
    if D.world_size() > 1:
        n_chunks = D.all_reduce_max_ints(n_chunks, device)
    total = torch.zeros((), dtype=torch.float32, device=device)
    for s, y_T, k in zip(streams, labels_T, n_chunks):
        s, y_T = s.to(device), y_T.to(device)
        hidden_TH = model(s, inject=inject(s), causal=True, return_hidden=True)
        mask_T = y_T != IGNORE
        total = total + chunked_ce_sum(hidden_TH[mask_T], y_T[mask_T], head, chunk, k)
    return total
