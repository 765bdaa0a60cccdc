"""Final weights of a run as safetensors: what the objective saves (objective.saved_module / write_weights),
plus, for LoRA runs on request, base + adapter merged.

run_dir/final/ holds the weights, the tokenizer and embedtrain.json so the run can be loaded for inference
without its recipe (model/folder.py). Folders are written beside the target and renamed into place.
Each checkpoint gets the same files in checkpoints/stepN/weights/ (run.checkpoint_weights), so a
mid-run step loads, evaluates and serves as model.init_from without unpickling DeepSpeed's states.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from embedtrain.config.schema import RecipeConfig
from embedtrain.distributed import rank
from embedtrain.engine.checkpoint import full_state_dict
from embedtrain.files import replace_dir, temp_dir_beside
from embedtrain.model.embedder import DTYPES, EmbeddingModel, load_causal_lm
from embedtrain.model.folder import META
from embedtrain.objectives.base import Objective


def save_weights(objective: Objective, model: EmbeddingModel, cfg: RecipeConfig, tokenizer, out: Path,
                 zero_stage: int) -> Path:
    """The run's weights as they are now, into folder `out` (written beside it and renamed into place).
    Every rank calls it: ZeRO-3 gathers the weights."""
    state = full_state_dict(objective.saved_module(model), zero_stage)
    if rank() == 0:
        objective.write_weights(state, model, cfg, tokenizer, out)
    if dist.is_initialized():
        dist.barrier()
    return out


def save_final(objective: Objective, model: EmbeddingModel, cfg: RecipeConfig, tokenizer, run_dir: Path,
               zero_stage: int, merged: bool) -> Path:
    out = save_weights(objective, model, cfg, tokenizer, run_dir / "final", zero_stage)
    if merged and cfg.model.lora.enabled:
        if rank() == 0:
            save_merged(out, cfg, tokenizer, run_dir / "final_merged")
        if dist.is_initialized():
            dist.barrier()
    return out


def save_merged(adapter_dir: Path, cfg: RecipeConfig, tokenizer, target: Path) -> Path:
    """Base weights + adapter merged into one plain checkpoint (loads without peft)."""
    merged = load_causal_lm(adapter_dir, DTYPES[cfg.model.dtype])  # its embedtrain.json names the base
    tmp = temp_dir_beside(target)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    meta = json.loads((adapter_dir / META).read_text())
    meta["lora"]["enabled"] = False
    (tmp / META).write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, target)
    return target
