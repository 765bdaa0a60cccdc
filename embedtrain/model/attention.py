"""Attention over packed varlen streams, plugged in through transformers' AttentionInterface.

The model runs with `attn_implementation="embedtrain_packed"`. Because that name has no entry in
transformers' mask interface, the model builds no mask at all; instead every forward passes
`packed=PackedAttention(...)` as a keyword that transformers forwards untouched down to the attention
call. Attention is then computed inside each text only, causal or bidirectional, by one of:
  flash_attn   - flash-attn's varlen kernel (CUDA, optional extra)
  torch_varlen - torch.nn.attention.varlen.varlen_attn (CUDA)
  sdpa         - PyTorch SDPA, one call per group of equal-length texts (any device, exact)
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

log = logging.getLogger(__name__)
IMPL_NAME = "embedtrain_packed"


@dataclass
class PackedAttention:
    """Segment layout of one packed stream, shared by every layer of one forward."""

    cu_seqlens: torch.Tensor  # (S+1,) int32, on the model's device
    max_seqlen: int
    causal: bool
    backend: str
    # sdpa backend: (length, count) per distinct text length, and the token permutation that puts the
    # texts of each length next to each other (plus its inverse).
    groups: list[tuple[int, int]] | None = None
    perm: torch.Tensor | None = None
    inverse_perm: torch.Tensor | None = None

    @classmethod
    def build(cls, cu_seqlens: torch.Tensor, causal: bool, backend: str) -> "PackedAttention":
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        max_len = max(lengths)
        groups = perm = inverse = None
        if backend == "sdpa":
            by_len: dict[int, list[int]] = {}
            for start, n in zip(cu_seqlens[:-1].tolist(), lengths):
                by_len.setdefault(n, []).append(start)
            groups = [(n, len(starts)) for n, starts in sorted(by_len.items())]
            perm = torch.cat([torch.arange(st, st + n) for n, starts in sorted(by_len.items()) for st in starts])
            perm = perm.to(cu_seqlens.device)
            inverse = torch.argsort(perm)
        return cls(cu_seqlens.to(torch.int32), max_len, causal, backend, groups, perm, inverse)


def _sdpa_segments(q_HTD, k_HTD, v_HTD, packed: PackedAttention, scaling: float, dropout: float):
    """Exact per-text attention: texts of equal length are batched into one SDPA call.

    Tokens are permuted once into length-group order (so each group is a contiguous view) and the
    output is permuted back once: per-group fancy indexing would cost a full-size scatter per group
    in backward.
    """
    heads_q, _, dim = q_HTD.shape
    q_p, k_p, v_p = (x[:, packed.perm] for x in (q_HTD, k_HTD, v_HTD))
    gqa = k_HTD.shape[0] != heads_q
    outs, offset = [], 0
    for length, count in packed.groups:
        sl = slice(offset, offset + length * count)
        q, k, v = (x[:, sl].unflatten(1, (count, length)).transpose(0, 1) for x in (q_p, k_p, v_p))  # (N, H, L, D)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=packed.causal and length > 1,
                                           scale=scaling, enable_gqa=gqa)
        outs.append(o.transpose(1, 2).reshape(length * count, heads_q, dim))
        offset += length * count
    return torch.cat(outs)[packed.inverse_perm]


def _flash_attn(q_THD, k_THD, v_THD, packed: PackedAttention, scaling: float, dropout: float):
    from flash_attn import flash_attn_varlen_func

    cu = packed.cu_seqlens
    return flash_attn_varlen_func(q_THD, k_THD, v_THD, cu, cu, packed.max_seqlen, packed.max_seqlen,
                                  dropout_p=dropout, softmax_scale=scaling, causal=packed.causal)


@functools.lru_cache(maxsize=None)
def _parameters(fn) -> dict:
    """The kernel's keyword names, read once (its signature changed across torch releases)."""
    return dict(inspect.signature(fn).parameters)


def _torch_varlen(q_THD, k_THD, v_THD, packed: PackedAttention, scaling: float, dropout: float):
    from torch.nn.attention.varlen import varlen_attn

    if dropout:
        raise NotImplementedError("torch_varlen attention has no dropout; use attn_backend sdpa or flash_attn")
    cu = packed.cu_seqlens
    params = _parameters(varlen_attn)
    kwargs = {}
    if "scale" in params:
        kwargs["scale"] = scaling
    elif scaling is not None and abs(scaling - q_THD.shape[-1] ** -0.5) > 1e-12:
        raise NotImplementedError(f"this torch's varlen_attn has no `scale` argument and the model scales "
                                  f"attention by {scaling}; use attn_backend sdpa or flash_attn")
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if packed.causal else (-1, -1)
    elif "is_causal" in params:
        kwargs["is_causal"] = packed.causal
    if k_THD.shape[1] != q_THD.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            rep = q_THD.shape[1] // k_THD.shape[1]
            k_THD, v_THD = k_THD.repeat_interleave(rep, 1), v_THD.repeat_interleave(rep, 1)
    return varlen_attn(q_THD, k_THD, v_THD, cu, cu, packed.max_seqlen, packed.max_seqlen, **kwargs)


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             sliding_window=None, softcap=None, packed: PackedAttention | None = None, **_):
    """AttentionInterface entry: query (1, Hq, T, D), key/value (1, Hkv, T, D) -> (1, T, Hq, D)."""
    if packed is None:
        raise RuntimeError("embedtrain_packed attention called without `packed=`; run the model through "
                           "embedtrain.model.EmbeddingModel, which passes the segment layout")
    if query.shape[0] != 1:
        raise RuntimeError(f"packed attention expects one stream per forward (batch 1), got {query.shape[0]}")
    if softcap is not None:
        raise NotImplementedError("attention logit soft-capping (gemma2) is not supported by packed attention")
    if sliding_window is not None and packed.max_seqlen > sliding_window:
        raise NotImplementedError(f"a text of {packed.max_seqlen} tokens exceeds the model's sliding window "
                                  f"({sliding_window}); lower data.max_length")
    if packed.backend == "sdpa":
        out_THD = _sdpa_segments(query[0], key[0], value[0], packed, scaling, dropout)
    else:
        fn = _flash_attn if packed.backend == "flash_attn" else _torch_varlen
        out_THD = fn(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), packed,
                     scaling, dropout)
    return out_THD.unsqueeze(0), None


AttentionInterface.register(IMPL_NAME, packed_attention_forward)


def pick_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """Choose the kernel once at start; fail loudly if the requested one cannot run here."""
    on_cuda = device.type == "cuda"
    has_flash = importlib.util.find_spec("flash_attn") is not None
    has_varlen = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    if requested == "auto":
        if on_cuda and has_flash and dtype != torch.float32:
            return "flash_attn"
        if on_cuda and has_varlen and dtype != torch.float32:
            return "torch_varlen"
        return "sdpa"
    if requested in ("flash_attn", "torch_varlen"):
        if not on_cuda:
            raise RuntimeError(f"model.attn_backend={requested} needs a CUDA device; use sdpa or auto on {device}")
        if requested == "flash_attn" and not has_flash:
            raise RuntimeError("model.attn_backend=flash_attn but flash-attn is not installed "
                               "(pip install 'embedtrain[flash]'), or use auto")
        if requested == "torch_varlen" and not has_varlen:
            raise RuntimeError("model.attn_backend=torch_varlen needs torch.nn.attention.varlen (torch >= 2.10)")
    return requested
