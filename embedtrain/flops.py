"""Model FLOPs of a training step over packed varlen texts, for tokens/s -> TFLOP/s -> MFU.

Counted per matmul (2 FLOPs per multiply-add). Attention counts only the pairs a text really attends
to: L(L+1)/2 per causal text, L^2 per bidirectional one, never pairs across packed texts (nor pads).
The LM head counts only at the positions whose logits the objective needs.

Backward: a weight matmul costs 2x its forward when its weight trains (input and weight gradients),
1x when the weight is frozen (input gradient only: LoRA's base weights, the compression objective's
whole backbone); attention has no weights, so its backward (dQ, dK, dV) is 2x its forward either way.
LoRA's own adapter matmuls (about 2 r (in + out) per token and layer, < 2% at r 16 on 1B+ models)
are not counted: the count is a floor, never inflated.
"""
from __future__ import annotations

import time

import torch


def forward_parts(config, seq_lens: list[int], causal: bool = True, logit_positions: int = 0) -> dict[str, int]:
    """Forward FLOPs split into weight matmuls of the layers, attention, and the LM head."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    tokens = sum(seq_lens)
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    projections = 2 * tokens * hidden * (q_dim + 2 * kv_dim) + 2 * tokens * q_dim * hidden
    mlp = 3 * 2 * tokens * hidden * config.intermediate_size  # gate, up, down (SwiGLU / GeGLU)
    pairs = sum(n * (n + 1) // 2 if causal else n * n for n in seq_lens)
    attention = 2 * 2 * pairs * head_dim * heads  # scores (QK^T) and weighted values (PV)
    layers = config.num_hidden_layers
    return {"weights": layers * (projections + mlp), "attention": layers * attention,
            "head": 2 * logit_positions * hidden * config.vocab_size}


def forward_flops(config, seq_lens: list[int], causal: bool = True, logit_positions: int = 0) -> int:
    return sum(forward_parts(config, seq_lens, causal, logit_positions).values())


def train_flops(config, seq_lens: list[int], causal: bool = True, logit_positions: int = 0,
                weights_train: bool = True) -> int:
    """Forward + backward FLOPs; weights_train=False for frozen weights (LoRA base, compression)."""
    p = forward_parts(config, seq_lens, causal, logit_positions)
    weight_factor = 3 if weights_train else 2
    return weight_factor * (p["weights"] + p["head"]) + 3 * p["attention"]


def text_lengths(stream) -> list[int]:
    """Lengths of a packed stream's texts (its trailing padding segment, if any, excluded)."""
    cu = stream.cu_seqlens
    return (cu[1:len(stream.text_ids) + 1] - cu[:len(stream.text_ids)]).tolist()


def measure_matmul_tflops(device, dtype, n: int | None = None, reps: int = 10) -> float:
    """Dense matmul rate of this device (the MFU denominator): n^3 products, 3 warm-ups, mean of reps."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
