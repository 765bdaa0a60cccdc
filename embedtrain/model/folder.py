"""A run's weights folder (final/, best/, a checkpoint's weights/, an export): finding it and writing it.

The folder holds the weights as safetensors (the full model, or a LoRA adapter), the tokenizer and
embedtrain.json (family, pooling, attention, instruction format, base weights) so that the run loads
for inference without its recipe. A compression run writes its own kind (model/compression_io.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from embedtrain.files import replace_dir, temp_dir_beside
from embedtrain.model.embedder import resolve_weights

META = "embedtrain.json"


def find_final(path: str | Path) -> Path:
    """The folder holding embedtrain.json: path itself, a run directory's final/, or a checkpoint's
    weights/ (checkpoints/stepNNNNNNNN)."""
    p = Path(path)
    for candidate in (p, p / "final", p / "weights"):
        if (candidate / META).is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no {META} here or in final/ or weights/ below it (expected an embedtrain "
                            "run directory, its final/ folder, a checkpoints/stepNNNNNNNN folder written with "
                            "run.checkpoint_weights, or an `embedtrain export` folder)")


def trained_context(config) -> int:
    """The longest input the base model was trained for (its position table)."""
    n = getattr(config, "max_position_embeddings", None)
    if not n:
        raise ValueError(f"{getattr(config, 'model_type', 'model')} config has no max_position_embeddings: pass "
                         "max_length= to say how many tokens a text may have")
    return int(n)


def embedding_meta(cfg, family: str) -> dict:
    """embedtrain.json of a run that trains (or adapts) the LM itself."""
    return {"family": family, "pooling": cfg.model.pooling, "attention": cfg.model.attention,
            "instruction_format": cfg.data.instruction_format, "max_length": cfg.data.max_length,
            "instructions": dict(cfg.data.instructions), "default_instruction": cfg.data.default_instruction,
            "dtype": cfg.model.dtype, "base_model": cfg.model.path,
            # what a LoRA adapter sits on (a stage I run's weights with model.init_from), absolute
            "base_weights": str(Path(resolve_weights(cfg.model)).resolve()),
            "lora": dataclasses.asdict(cfg.model.lora)}


def write_lm_folder(state: dict[str, torch.Tensor], model, cfg, tokenizer, out: Path, extra_meta: dict = None) -> None:
    """The LM's gathered state (full weights or adapter: save_pretrained picks) + tokenizer + embedtrain.json
    (+ extra_meta from the objective), assembled beside `out` and renamed into place."""
    tmp = temp_dir_beside(out)
    model.lm.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    meta = dict(embedding_meta(cfg, model.family.name), **(extra_meta or {}))
    (tmp / META).write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, out)
