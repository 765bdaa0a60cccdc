"""Learning-rate schedule: linear warmup, then linear or cosine decay to min_lr_ratio * lr."""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    t = train_cfg
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, t.warmup_steps, t.steps, t.schedule, t.min_lr_ratio))


def build_optimizer(model: torch.nn.Module, train_cfg) -> torch.optim.Optimizer:
    """torch AdamW (no compiled extension); no weight decay on biases and norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.lr,
                             betas=tuple(train_cfg.betas), eps=train_cfg.eps)
