"""Final weights of a run as safetensors: the full model, or the LoRA adapter (+ merged on request).

run_dir/final/ holds model.safetensors (or adapter_model.safetensors), config, tokenizer and
embedtrain.json (family, pooling, attention, instruction format) so the run can be loaded for
inference without its recipe. Folders are written beside the target and renamed into place.
Each checkpoint gets the same files in checkpoints/stepN/weights/ (run.checkpoint_weights), so a
mid-run step loads, evaluates and serves as model.init_from without unpickling DeepSpeed's states.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch.distributed as dist

from embedtrain.config.schema import RecipeConfig
from embedtrain.distributed import rank
from embedtrain.engine.checkpoint import full_state_dict, replace_dir


def embedding_meta(cfg: RecipeConfig, family: str) -> dict:
    from embedtrain.model.embedder import resolve_weights

    return {"family": family, "pooling": cfg.model.pooling, "attention": cfg.model.attention,
            "instruction_format": cfg.data.instruction_format, "max_length": cfg.data.max_length,
            "instructions": dict(cfg.data.instructions), "default_instruction": cfg.data.default_instruction,
            "dtype": cfg.model.dtype, "base_model": cfg.model.path,
            # what a LoRA adapter sits on (a stage I run's weights with model.init_from), absolute
            "base_weights": str(Path(resolve_weights(cfg.model)).resolve()),
            "lora": dataclasses.asdict(cfg.model.lora)}


def save_weights(model, cfg: RecipeConfig, tokenizer, out: Path, zero_stage: int, options=None) -> Path:
    """The run's weights as they are now, as safetensors with tokenizer and embedtrain.json, into `out`
    (written beside it and renamed into place). Every rank calls it: ZeRO-3 gathers the weights."""
    if hasattr(model, "compression"):  # frozen backbone: only the compression tokens and maps are saved
        from embedtrain.model.compression_io import save_compression_final

        state = full_state_dict(model.compression, zero_stage)
        if rank() == 0:
            save_compression_final(state, model.compression, cfg, model.family.name, tokenizer, out, options)
    else:
        state = full_state_dict(model.lm, zero_stage)
        if rank() == 0:
            tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
            model.lm.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            (tmp / "embedtrain.json").write_text(json.dumps(embedding_meta(cfg, model.family.name), indent=1))
            replace_dir(tmp, out)
    if dist.is_initialized():
        dist.barrier()
    return out


def save_final(model, cfg: RecipeConfig, tokenizer, run_dir: Path, zero_stage: int, merged: bool,
               options=None) -> Path:
    out = save_weights(model, cfg, tokenizer, run_dir / "final", zero_stage, options)
    if merged and cfg.model.lora.enabled and not hasattr(model, "compression"):
        if rank() == 0:
            save_merged(out, cfg, tokenizer, run_dir / "final_merged")
        if dist.is_initialized():
            dist.barrier()
    return out


def save_merged(adapter_dir: Path, cfg: RecipeConfig, tokenizer, target: Path) -> Path:
    """Base weights + adapter merged into one plain checkpoint (loads without peft)."""
    from embedtrain.model.embedder import DTYPES, load_causal_lm

    merged = load_causal_lm(adapter_dir, DTYPES[cfg.model.dtype])  # its embedtrain.json names the base
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    merged.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    meta = json.loads((adapter_dir / "embedtrain.json").read_text())
    meta["lora"]["enabled"] = False
    (tmp / "embedtrain.json").write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, target)
    return target
