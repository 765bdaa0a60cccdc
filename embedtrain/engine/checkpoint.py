"""Checkpoints (DeepSpeed's format, resumable exactly) and final weights (safetensors).

Layout of run_dir/checkpoints/:
  step00000010/          DeepSpeed model + optimizer + scheduler states for every rank
    rng_rank{r}.safetensors   torch RNG state of each rank (no pickle)
    trainer_state.json        optimizer step and data position
    weights/                  the weights at this step as final/ holds them (safetensors; optional)
  latest                 name of the newest COMPLETE tag, replaced atomically after every rank finished
A crash mid-save leaves a tag directory that `latest` never names, so resume cannot pick it up.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from embedtrain.distributed import rank
from embedtrain.files import atomic_write_text

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"


def _rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def step_tag(step: int) -> str:
    """The checkpoint folder name of a step (checkpoints/stepNNNNNNNN)."""
    return f"step{step:08d}"


def save_checkpoint(engine, ckpt_root: Path, step: int, trainer_state: dict, keep: int, device,
                    write_weights: Callable[[Path], object] | None = None) -> Path:
    """write_weights(folder), called on every rank, adds the safetensors weights (engine/final.py)."""
    tag = step_tag(step)
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state={}, save_latest=False)
    tag_dir = ckpt_root / tag
    save_file(_rng_tensors(device), str(tag_dir / f"rng_rank{rank()}.safetensors"))
    if write_weights is not None:
        write_weights(tag_dir / "weights")
    dist.barrier()  # every rank's shards and RNG are on disk before `latest` may name this tag
    if rank() == 0:
        atomic_write_text(tag_dir / STATE_FILE, json.dumps(dict(trainer_state, step=step), indent=1))
        atomic_write_text(ckpt_root / "latest", tag)
        if keep:
            tags = sorted(p for p in ckpt_root.glob("step*") if p.is_dir())
            for old in tags[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return tag_dir


def latest_tag(ckpt_root: Path) -> str | None:
    f = ckpt_root / "latest"
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    if not (ckpt_root / tag / STATE_FILE).is_file():
        raise RuntimeError(f"{f} names {tag!r}, but {ckpt_root / tag / STATE_FILE} is missing: the checkpoint "
                           "is incomplete or was moved; point `latest` at a complete step directory")
    return tag


def load_checkpoint(engine, ckpt_root: Path, device) -> dict:
    """Restore weights, optimizer, scheduler and RNG from the latest complete checkpoint."""
    tag = latest_tag(ckpt_root)
    if tag is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_root} (no `latest` file)")
    path, _ = engine.load_checkpoint(str(ckpt_root), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_root / tag}")
    rng_file = ckpt_root / tag / f"rng_rank{rank()}.safetensors"
    if not rng_file.is_file():
        raise RuntimeError(f"{rng_file} missing: was the checkpoint written with a different world size? "
                           "Exact resume needs the same number of ranks")
    rng = load_file(str(rng_file))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    state = json.loads((ckpt_root / tag / STATE_FILE).read_text())
    log.info("resumed from %s (step %d)", ckpt_root / tag, state["step"])
    return state


def full_state_dict(module: torch.nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, gathered on rank 0 (CPU copies); {} on other ranks."""
    if zero_stage == 3:
        out = {}
        for name, p in module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if rank() == 0:
                    out[name] = p.detach().cpu().clone()
        if rank() == 0:
            persistent = set(module.state_dict())
            out.update({n: b.detach().cpu().clone() for n, b in module.named_buffers() if n in persistent})
        return out
    return {n: t.detach().cpu().clone() for n, t in module.state_dict().items()} if rank() == 0 else {}
