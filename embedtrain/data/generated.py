"""The generated-data folder: what `embedtrain generate` writes and the compression objective reads.

Layout (METHODS.md section 4, queries -> responses + teacher targets):
  generate.json             the settings that produced the folder; a restart with other settings is refused
  shard-00000.jsonl         {"query", "response", ["task", "instruction"]} one line per input row
  shard-00000.safetensors   {"teacher": (rows, D) float32}: row i is the teacher embedding of line i
  ...
  manifest.json             written once every shard is complete: rows, shards, teacher dimension
Shard k holds input rows [k * shard_size, (k + 1) * shard_size). Its safetensors file is renamed into
place first and its JSONL last, so a JSONL file present means the shard is complete; anything else
(a missing JSONL, a stray temp file) is redone on restart.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from embedtrain.data.rows import QUERY_FIELDS, DataError, check_object, parse_row  # noqa: F401 (parse_row: API)

MANIFEST = "manifest.json"
SETTINGS = "generate.json"


def shard_stem(k: int) -> str:
    return f"shard-{k:05d}"


def read_queries(paths: list[str]) -> list[dict]:
    """Every query line of every file, validated (errors name file:line); blank lines are skipped."""
    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"query file not found: {path} (generate.queries lists local JSONL files)")
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if raw.strip():
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise DataError(f"{path}:{n}: not valid UTF-8") from None
                    rows.append(check_object(text, f"{path}:{n}", QUERY_FIELDS, ("query",)))
    if not rows:
        raise DataError(f"no queries in {', '.join(paths)}")
    return rows


def write_shard(out_dir: Path, k: int, rows: list[dict], teacher_RD: torch.Tensor) -> None:
    if teacher_RD.shape[0] != len(rows):
        raise ValueError(f"shard {k}: {len(rows)} rows but {teacher_RD.shape[0]} teacher vectors")
    stem = shard_stem(k)
    tmp = out_dir / f".{stem}.safetensors.tmp{os.getpid()}"
    save_file({"teacher": teacher_RD.float().contiguous().cpu()}, str(tmp))
    os.replace(tmp, out_dir / f"{stem}.safetensors")
    tmp = out_dir / f".{stem}.jsonl.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out_dir / f"{stem}.jsonl")  # last: its presence marks the shard complete


def shard_rows(out_dir: Path, k: int) -> int | None:
    """Number of rows of a complete shard, or None when the shard must be (re)done."""
    stem = shard_stem(k)
    jsonl, tensors = out_dir / f"{stem}.jsonl", out_dir / f"{stem}.safetensors"
    if not (jsonl.is_file() and tensors.is_file()):
        return None
    with open(jsonl, "rb") as f:
        lines = sum(1 for raw in f if raw.strip())
    with safe_open(str(tensors), "pt") as f:
        vectors = f.get_slice("teacher").get_shape()[0]
    return lines if lines == vectors else None


def load_manifest(path: str | Path) -> dict:
    folder = Path(path)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        done = len(list(folder.glob("shard-*.jsonl")))
        raise DataError(f"{folder}: no {MANIFEST}: not a finished `embedtrain generate` output ({done} shard(s) "
                        "written so far); run or resume `embedtrain generate` on it first")
    meta = json.loads(manifest.read_text())
    for shard in meta["shards"]:
        if shard_rows(folder, shard["index"]) != shard["rows"]:
            raise DataError(f"{folder}: shard {shard_stem(shard['index'])} is missing or does not have the "
                            f"{shard['rows']} rows {MANIFEST} lists; rerun `embedtrain generate` to redo it")
    return meta


class TargetReader:
    """Row r of a shard's teacher matrix, read on demand (memory-mapped safetensors)."""

    def __init__(self):
        self._open: dict[str, object] = {}

    def read(self, path: str, row: int) -> torch.Tensor:
        handle = self._open.get(path)
        if handle is None:
            handle = self._open[path] = safe_open(path, "pt")
        return handle.get_slice("teacher")[row:row + 1][0]
