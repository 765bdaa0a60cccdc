"""Stability guards: a step with a non-finite loss or gradient norm changes nothing, on every rank together.

A NaN/inf loss makes the gradient non-finite too (backward carries it), so the decision rests on the global
gradient norm, which every rank sees alike. DeepSpeed's ZeRO optimizers (fp32, and bf16 with
check_grad_overflow, which ds_config.py sets) already skip such a step: no update, no scheduler step,
engine.skipped_steps + 1. The plain torch optimizer (ZeRO stage 0, fp32) does not; install_step_skip gives it
the same behaviour. The trainer counts skipped steps and stops after train.max_bad_steps.
"""
from __future__ import annotations

import math

import torch


class TooManyBadSteps(RuntimeError):
    """More non-finite steps than train.max_bad_steps: the run stopped with a checkpoint before the last."""


def install_step_skip(engine) -> None:
    """For an optimizer DeepSpeed does not guard (it has no `overflow` flag): before each optimizer step, a
    non-finite gradient drops every gradient (AdamW leaves a parameter without one untouched) and sets
    `overflow`, which DeepSpeed reads to skip the scheduler step and count engine.skipped_steps."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "overflow") or not isinstance(optimizer, torch.optim.Optimizer):
        return

    def skip_non_finite(opt, args, kwargs):
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        # step() all-reduced the gradients before this hook: every rank takes the same decision
        finite = not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())
        opt.overflow = not finite
        if not finite:
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = None

    optimizer.overflow = False
    optimizer.register_step_pre_hook(skip_non_finite)


def is_bad(loss: float, grad_norm: float | None, update_skipped: bool) -> bool:
    """A step whose loss or gradient norm is not finite (values reduced over ranks: one NaN makes all), or
    that the optimizer skipped. grad_norm None: not computed (no clipping, no ZeRO)."""
    return update_skipped or not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm))
