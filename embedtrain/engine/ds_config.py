"""Build the DeepSpeed config: the ZeRO file from ds_configs/ plus the fields the recipe owns."""
from __future__ import annotations

import json
from pathlib import Path

from embedtrain.config.schema import RecipeConfig

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"
OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
         "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler", "managed_gradient_accumulation")


def ds_config_path(cfg: RecipeConfig) -> Path:
    if cfg.deepspeed.config:
        return Path(cfg.deepspeed.config)
    name = "zero3_offload.json" if cfg.deepspeed.offload else f"zero{cfg.deepspeed.zero_stage}.json"
    return DS_CONFIG_DIR / name


def batch_plan(cfg: RecipeConfig, world_size: int) -> tuple[int, int]:
    """(examples per global micro-batch, micro-batches per optimizer step)."""
    t = cfg.train
    if t.micro_batch_per_rank is None:
        if t.batch_size % world_size:
            raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the world size "
                             f"{world_size}: every rank needs the same number of examples")
        return t.batch_size, t.grad_accum
    micro_global = t.micro_batch_per_rank * world_size
    if t.batch_size % micro_global:
        raise ValueError(f"train.batch_size={t.batch_size} is not a multiple of train.micro_batch_per_rank x "
                         f"world size = {t.micro_batch_per_rank} x {world_size}; pick sizes that divide")
    return micro_global, t.batch_size // micro_global


def build_ds_config(cfg: RecipeConfig, world_size: int) -> dict:
    path = ds_config_path(cfg)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from None
    for key in OWNED:
        if key in ds:
            raise ValueError(f"{path}: `{key}` is filled from the recipe (see ds_configs/README.md); "
                             "remove it from the DeepSpeed config")
    zero = ds.get("zero_optimization", {})
    if zero.get("stage", 0) < 2 and zero.get("overlap_comm"):
        raise ValueError(f"{path}: zero_optimization.overlap_comm needs ZeRO stage 2 or 3 here (embedtrain drives "
                         "gradient accumulation itself, so gradients are reduced in step()); remove it")
    micro_global, gas = batch_plan(cfg, world_size)
    micro = micro_global // world_size
    ds.update(
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=gas,
        train_batch_size=micro * gas * world_size,
        gradient_clipping=cfg.train.grad_clip,
        # bf16 ZeRO skips a step with a non-finite gradient norm only when asked (fp32 ZeRO always does)
        bf16={"enabled": True, "check_grad_overflow": True} if cfg.model.dtype == "bfloat16" else {"enabled": False},
        managed_gradient_accumulation=False,
        steps_per_print=10**9,  # embedtrain logs itself
        wall_clock_breakdown=False,
    )
    return ds
