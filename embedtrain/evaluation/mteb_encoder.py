"""mteb on anything that encodes: the encoder adapter, instruction policies, task lookup and scoring.

The model is wrapped in mteb's encoder interface. Queries (and both sides of symmetric tasks: STS,
classification, clustering) get the task's instruction from a JSON file (task name -> instruction;
embedtrain ships one for MTEB English); retrieval documents get none. A compression (LLM2Vec-Gen) run
instead phrases every input as a request for the answer it embeds (GENERATION_REQUESTS). Tasks are
mteb's own names or the offline suite's (embedtrain.evaluation.suite_tasks, built by
`embedtrain build-eval-suite`).
Results are mteb's JSON under OUTPUT/results plus OUTPUT/summary.md, one table. Used by `embedtrain eval`
(evaluation/mteb_run.py), by evaluation during training, and by the benches' baselines.
"""
from __future__ import annotations

import json
import logging
import os
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np

from embedtrain.evaluation.requests import ASYMMETRIC_TYPES, GENERATION_REQUESTS, generation_request

__all__ = ["ASYMMETRIC_TYPES", "GENERATION_REQUESTS", "EvalError", "embedder_encoder", "evaluate_encoder",
           "generation_request", "load_instructions", "make_encoder", "resolve_tasks"]

log = logging.getLogger("embedtrain.eval")


class EvalError(RuntimeError):
    pass


def default_instructions() -> dict[str, str]:
    text = resources.files("embedtrain.evaluation").joinpath("mteb_english_instructions.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def make_encoder(encode_fn, name: str, dim: int, instructions: dict[str, str | None], n_params: int | None = None,
                 max_tokens: int | None = None, policy=None):
    """An mteb encoder around encode_fn(texts, instruction) -> (N, D) array/tensor: embedtrain models,
    and the baselines of the quality table (teacher, TF-IDF) through the same instruction policy.
    policy(task_metadata, prompt_type) -> instruction replaces the per-task lookup (compression runs)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType

    class EmbedtrainEncoder(AbsEncoder):
        def __init__(self):
            self.instructions = instructions
            self.mteb_model_meta = ModelMeta(
                loader=None, name=f"embedtrain/{name}", revision="local", release_date=None, languages=None,
                n_parameters=n_params, memory_usage_mb=None, max_tokens=max_tokens, embed_dim=dim, license=None,
                open_weights=False, public_training_code=None, public_training_data=None,
                similarity_fn_name="cosine", framework=["PyTorch"], reference=None, use_instructions=True,
                training_datasets=None, model_type=["dense"])

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            instruction = None
            if policy is not None:
                instruction = policy(task_metadata, prompt_type)
            elif prompt_type != PromptType.document:
                if task_metadata.name not in self.instructions:
                    log.warning("no instruction for %s in the instructions file: encoding without", task_metadata.name)
                    self.instructions[task_metadata.name] = None
                instruction = self.instructions[task_metadata.name]
            vectors = encode_fn(texts, instruction)
            vectors = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
            return vectors.astype(np.float32)

    return EmbedtrainEncoder()


def embedder_encoder(embedder, name: str, instructions: dict[str, str | None], batch_size: int = 64,
                     dim: int | None = None):
    """dim: score the leading `dim` dimensions of each embedding (Matryoshka truncation)."""
    def encode_fn(texts, instruction):
        return embedder.encode(texts, instruction=instruction, batch_size=batch_size, normalize=True,
                               show_progress=False, dim=dim)

    policy = None
    if embedder.meta.get("kind") == "compression":
        policy = partial(generation_request, document=embedder.meta.get("document_instruction"))
    return make_encoder(encode_fn, name, dim or embedder.dim, instructions,
                        sum(p.numel() for p in embedder.model.parameters()), embedder.meta.get("max_length"), policy)


def load_instructions(instructions_file: str | None = None, suite_dir: str | None = None) -> dict[str, str]:
    instructions = default_instructions()
    if suite_dir and (Path(suite_dir) / "suite.json").is_file():
        instructions.update(json.loads((Path(suite_dir) / "suite.json").read_text()).get("instructions", {}))
    if instructions_file:
        try:
            instructions.update(json.loads(Path(instructions_file).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise EvalError(f"--instructions {instructions_file}: {exc}") from None
    return instructions


def _offline_hint(task_name: str, exc: Exception) -> str | None:
    text = f"{type(exc).__name__}: {exc}".lower()
    markers = ("offline", "connection", "couldn't reach", "could not reach", "max retries", "name resolution",
               "hub is unreachable", "local_files_only", "not found on the hub", "cannot find the requested files")
    if any(m in text for m in markers):
        return (f"mteb task {task_name}: its dataset is not on disk and the Hugging Face hub is unreachable "
                f"({'HF_HUB_OFFLINE is set' if os.environ.get('HF_HUB_OFFLINE') else 'no network'}). Download it "
                "into the HF cache on a machine with access (same HF_HOME), or evaluate on the offline suite "
                "(embedtrain build-eval-suite DIR; --suite DIR)")
    return None


def resolve_tasks(names: list[str], suite_dir: str | None) -> list:
    import mteb

    tasks, missing = [], []
    suite = {}
    if suite_dir:
        from embedtrain.evaluation.suite_tasks import suite_tasks

        suite = {t.metadata.name: t for t in suite_tasks(suite_dir)}
    for name in names:
        if name in suite:
            tasks.append(suite[name])
            continue
        try:
            tasks.extend(mteb.get_tasks(tasks=[name], languages=["eng"]))
        except Exception:  # mteb raises KeyError or ValueError for unknown names depending on version
            missing.append(name)
    if missing:
        known = f"; suite tasks: {', '.join(sorted(suite))}" if suite else ""
        raise EvalError(f"unknown task(s) {', '.join(missing)} (not an mteb task name{known})")
    return tasks


def evaluate_encoder(encoder, tasks: list, output: str | Path, title: str) -> dict[str, float]:
    """mteb on every task (one at a time, so an offline failure names its task); JSON + summary.md."""
    import mteb
    from mteb.cache import ResultCache

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    for task in tasks:
        try:
            result = mteb.evaluate(encoder, task, cache=ResultCache(cache_path=out), overwrite_strategy="always",
                                   show_progress_bar=False)
        except Exception as exc:
            hint = _offline_hint(task.metadata.name, exc)
            if hint:
                raise EvalError(hint) from None
            raise
        for task_result in result.task_results:
            scores[task_result.task_name] = float(task_result.get_score())
    lines = ["| task | type | main score | value |", "|---|---|---|---|"]
    for task in tasks:
        n = task.metadata.name
        lines.append(f"| {n} | {task.metadata.type} | {task.metadata.main_score} | {scores.get(n, float('nan')):.4f} |")
    if scores:
        lines.append(f"| **mean** | | | {sum(scores.values()) / len(scores):.4f} |")
    (out / "summary.md").write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    print("\n".join(lines))
    return scores
