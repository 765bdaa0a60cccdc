"""Model FLOPs of a training step over packed varlen texts, for tokens/s -> TFLOP/s -> MFU.

Counted per matmul (2 FLOPs per multiply-add), forward only, then x (1 + backward_factor): 2 for
full training (gradients w.r.t. inputs and weights), about 1 where the weights are frozen (LoRA,
compression tokens). Attention counts only the pairs a text really attends to: L(L+1)/2 per causal
text, L^2 per bidirectional one, never pairs across packed texts.
"""
from __future__ import annotations


def forward_flops(config, seq_lens: list[int], causal: bool = True, logit_positions: int = 0) -> int:
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
    head = 2 * logit_positions * hidden * config.vocab_size
    return config.num_hidden_layers * (projections + mlp + attention) + head


def train_flops(config, seq_lens: list[int], causal: bool = True, logit_positions: int = 0,
                backward_factor: float = 2.0) -> float:
    return (1.0 + backward_factor) * forward_flops(config, seq_lens, causal, logit_positions)
