"""`embedtrain eval RUN_DIR --tasks ...`: mteb on a saved embedtrain model, offline-friendly.

Loads the run through embedtrain.load and scores it with the adapter of evaluation/mteb_encoder.py (whose
names are re-exported here). Results are mteb's JSON under OUTPUT/results plus OUTPUT/summary.md.
"""
from __future__ import annotations

from pathlib import Path

from embedtrain.api import check_dim, load
from embedtrain.evaluation.mteb_encoder import (ASYMMETRIC_TYPES, GENERATION_REQUESTS, EvalError,  # noqa: F401
                                                embedder_encoder, evaluate_encoder, generation_request,
                                                load_instructions, make_encoder, resolve_tasks)


def run_eval(run_dir: str, task_names: list[str], output: str, instructions_file: str | None = None,
             suite_dir: str | None = None, batch_size: int = 64, device: str | None = None,
             max_length: int | None = None, dim: int | None = None) -> dict[str, float]:
    """Evaluate a run and return {task: main score}; writes mteb JSON and summary.md under output.
    dim: score the embeddings truncated to their leading `dim` dimensions (Matryoshka)."""
    instructions = load_instructions(instructions_file, suite_dir)
    tasks = resolve_tasks(task_names, suite_dir)
    embedder = load(run_dir, device=device, max_length=max_length)
    check_dim(dim, embedder.dim, "--dim")
    name = Path(run_dir).resolve().name or "model"
    title = f"{run_dir} (first {dim} dimensions)" if dim else str(run_dir)
    return evaluate_encoder(embedder_encoder(embedder, name, instructions, batch_size, dim), tasks, output, title)
