"""What a training run did, read back from the files it left: `embedtrain info` prints it and exported
model cards are written from it.

Reads config.yaml (the resolved recipe), metrics.jsonl, eval.json, best.json, checkpoints/ and final/.
A missing or half-written file leaves its fields out instead of failing, so a run still in progress, a
copied final/ folder or an export (whose embedtrain.json is all there is) can be summarised too.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from embedtrain.data.generated import MANIFEST
from embedtrain.model.folder import META, find_final

RUN_FILES = ("config.yaml", "metrics.jsonl")
# weights folders that sit inside a run directory, and how many levels up the run directory is
WEIGHTS_DEPTH = {"final": 1, "best": 1, "weights": 3}  # weights/: checkpoints/stepNNNNNNNN/weights


def read_metrics(run: Path) -> list[dict]:
    """Every row of RUN/metrics.jsonl in file order ([] without the file). A run killed while writing can
    leave a cut last line: unparsable lines are skipped."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def read_run_log(run: Path) -> tuple[list[dict], list[dict], dict | None]:
    """(rows with a training loss, rows with an in-training evaluation, eval.json's "before": eval.retrieval
    on the untrained model, the curves' step 0, or None) of RUN/metrics.jsonl and RUN/eval.json."""
    rows = read_metrics(run)
    before = (_read_json(Path(run) / "eval.json") or {}).get("before")
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_time_s" in r], before


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def _locate(path: Path) -> tuple[Path | None, Path | None]:
    """(run directory or None, folder holding embedtrain.json or None) for any folder summarize() takes."""
    try:
        weights = find_final(path)
    except FileNotFoundError:
        weights = None
    if _is_run(path):
        return path, weights
    if weights is not None:
        up = WEIGHTS_DEPTH.get(weights.name)
        run = weights.parents[up - 1] if up and len(weights.parents) >= up else None
        return (run if run is not None and _is_run(run) else None), weights
    raise FileNotFoundError(f"{path}: not an embedtrain run (expected a run directory with config.yaml or "
                            f"metrics.jsonl, its final/ or best/ folder, a checkpoints/stepNNNNNNNN folder, or an "
                            f"`embedtrain export` folder with {META})")


def _by_step(rows: list[dict]) -> list[dict]:
    """One row per step, the last one logged: a resumed run logs again the steps after its checkpoint."""
    last = {r["step"]: r for r in rows if isinstance(r.get("step"), int)}
    return [last[s] for s in sorted(last)]


def _training_dir(run: Path, cfg: dict) -> Path | None:
    """The directory training ran in, when run.output_dir was relative: recipe paths are relative to it."""
    out = Path(str((cfg.get("run") or {}).get("output_dir") or ""))
    if not out.parts or out.is_absolute():
        return None
    full = run.resolve()
    n = len(out.parts)
    return full.parents[n - 1] if len(full.parts) > n and full.parts[-n:] == out.parts else None


def _data_source(entry, base: Path | None) -> dict:
    """A data.train entry (a path, or a mapping with path / weight / max_examples) and its example count:
    non-blank lines of a JSONL file, a generated folder's manifest rows, or None when neither can be read."""
    if isinstance(entry, dict):
        extra = {k: entry[k] for k in ("weight", "max_examples") if entry.get(k) is not None}
        return {**_data_source(str(entry.get("path", "")), base), **extra}
    name = str(entry)
    raw = Path(name)
    candidates = [raw] if raw.is_absolute() else [c for c in (base / raw if base else None, raw) if c is not None]
    path = next((c for c in candidates if c.exists()), None)
    if path is None:
        return {"path": name, "examples": None, "note": "not found"}
    if path.is_dir():
        rows = (_read_json(path / MANIFEST) or {}).get("rows")
        note = {} if isinstance(rows, int) else {"note": f"no readable {MANIFEST}"}
        return {"path": name, "kind": "generated", "examples": rows if isinstance(rows, int) else None, **note}
    try:
        with open(path, "rb") as f:
            count = sum(1 for line in f if line.strip())
    except OSError as exc:
        return {"path": name, "examples": None, "note": str(exc)}
    return {"path": name, "kind": "jsonl", "examples": count}


def _scores(row: dict) -> dict:
    return {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}


def _evaluation(run: Path, rows: list[dict], cfg: dict) -> dict:
    """last: the latest evaluation step's scores; best: best.json, else the logged step with the highest
    value of the metric run.keep_best would use; before / after: eval.json (eval.retrieval scores)."""
    out = {}
    evals = [(r["step"], _scores(r)) for r in rows if _scores(r)]
    if evals:
        out["last"] = {"step": evals[-1][0], "scores": evals[-1][1]}
    best = _read_json(run / "best.json")
    if best is None and evals:
        ev = cfg.get("eval") or {}
        # as config.validate.best_metric picks it (config.yaml is a dict here, not a RecipeConfig)
        metric = ev.get("best_metric") or ("retrieval/mrr" if ev.get("retrieval") else "suite/mean")
        scored = [(step, s) for step, s in evals if isinstance(s.get(metric), (int, float))]
        if scored:
            step, s = max(scored, key=lambda e: e[1][metric])  # the first of equal scores, as keep_best keeps
            best = {"step": step, "metric": metric, "value": s[metric], "scores": s}
    if best is not None:
        out["best"] = best
    for key, value in (_read_json(run / "eval.json") or {}).items():
        if key in ("before", "after") and isinstance(value, dict):
            out[key] = value
    return out


def _checkpoints(run: Path) -> dict:
    root = run / "checkpoints"
    tags = sorted(p.name for p in root.glob("step*") if p.is_dir()) if root.is_dir() else []
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else None
    return {"tags": tags, "latest": latest}


def _hidden_size(folder: Path) -> int | None:
    config = _read_json(folder / "config.json") or {}
    size = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    return size if isinstance(size, int) else None


def _embedding_dim(meta: dict, weights: Path | None, base: str | None) -> int | None:
    if meta.get("kind") == "compression":
        return meta.get("teacher_dim")
    # a LoRA folder holds the adapter only: the hidden size is its base's
    folders = [weights, *(Path(p) for p in (meta.get("base_weights"), base) if p)]
    return next((n for n in (_hidden_size(f) for f in folders if f is not None) if n), None)


def _weights_step(weights: Path | None, summary: dict) -> int | None:
    """The step whose weights the weights folder holds: a checkpoint's tag, best/'s best step, final/'s last."""
    if weights is None:
        return None
    if weights.name == "weights" and weights.parent.name.startswith("step"):
        return int(weights.parent.name[len("step"):])
    if weights.name == "best":
        return ((summary.get("evaluation") or {}).get("best") or {}).get("step")
    return summary.get("steps_done") if weights.name == "final" and "run_dir" in summary else None


def summarize(path: str | Path) -> dict:
    """A JSON-ready dict of what the run at `path` did (see the module docstring); unknown fields are left out.
    Raises FileNotFoundError when `path` is no run directory, weights folder or export."""
    path = Path(path)
    run, weights = _locate(path)
    meta = (_read_json(weights / META) or {}) if weights is not None else {}
    cfg = _read_yaml(run / "config.yaml") if run is not None else {}
    model, train, data = cfg.get("model") or {}, cfg.get("train") or {}, cfg.get("data") or {}
    objective = train.get("objective") or ("compression" if meta.get("kind") == "compression" else None)
    options = (cfg.get("objective") or {}).get(objective) if objective else None
    base = model.get("path") or meta.get("base_model")
    out = {"path": str(path), "kind": "run" if run else ("export" if meta.get("exported") else "weights"),
           "run_dir": str(run) if run else None, "weights_dir": str(weights) if weights else None,
           "base_model": base, "family": meta.get("family") or model.get("family"),
           "objective": objective, "objective_options": options,
           "pooling": meta.get("pooling") or model.get("pooling"),
           "attention": meta.get("attention") or model.get("attention"),
           "lora": meta.get("lora") or model.get("lora"), "dtype": meta.get("dtype") or model.get("dtype"),
           "embedding_dim": _embedding_dim(meta, weights, base),
           "matryoshka_dims": meta.get("matryoshka_dims") or (options or {}).get("matryoshka_dims")}
    if meta.get("kind") == "compression":
        out["compression"] = {k: meta.get(k) for k in ("thought_tokens", "compression_tokens", "teacher_dim")}
    if run is not None:
        base_dir = _training_dir(run, cfg)
        out["data"] = [_data_source(e, base_dir) for e in data.get("train") or []] or None
        out["train"] = {k: train[k] for k in ("steps", "batch_size", "grad_accum", "lr", "schedule",
                                              "warmup_steps") if k in train} or None
        out["steps_planned"] = train.get("steps")
        rows = _by_step(read_metrics(run))
        if rows:
            out["steps_done"] = rows[-1]["step"]
            tokens = [r["real_tokens"] for r in rows if isinstance(r.get("real_tokens"), (int, float))]
            out["tokens_seen"] = int(sum(tokens)) if tokens else None
            times = [r["step_time_s"] for r in rows if isinstance(r.get("step_time_s"), (int, float))]
            out["train_time_s"] = sum(times) if times else None  # the steps' own time, evaluation left out
        out["evaluation"] = _evaluation(run, rows, cfg) or None
        out["checkpoints"] = _checkpoints(run)
        out["final"] = (run / "final" / META).is_file()
    out["weights_step"] = _weights_step(weights, out)
    return {k: v for k, v in out.items() if v is not None}


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_summary(s: dict) -> str:
    """A few lines for a terminal: what `embedtrain info` prints."""
    lines = [f"{s['path']} ({s['kind']})"]
    if "weights_dir" in s:
        step = f" (step {s['weights_step']})" if "weights_step" in s else ""
        lines.append(f"weights: {s['weights_dir']}{step}")
    if "base_model" in s:
        lines.append(f"base model: {s['base_model']}")
    if "objective" in s:
        opts = ", ".join(f"{k} {v}" for k, v in (s.get("objective_options") or {}).items() if v is not None)
        lines.append(f"objective: {s['objective']}" + (f" ({opts})" if opts else ""))
    if "steps_planned" in s or "steps_done" in s:
        lines.append(f"steps: {s.get('steps_done', 0)} of {s.get('steps_planned', '?')}")
    if "tokens_seen" in s:
        lines.append(f"tokens seen: {s['tokens_seen']:,}")
    ev = s.get("evaluation") or {}
    for key in ("last", "best"):
        if key in ev:
            scores = "  ".join(f"{k} {_fmt(v)}" for k, v in ev[key]["scores"].items())
            lines.append(f"{key} scores (step {ev[key]['step']}): {scores}")
    for key in ("before", "after"):
        if key in ev:
            lines.append(f"held-out retrieval {key} training: "
                         + "  ".join(f"{k} {_fmt(v)}" for k, v in ev[key].items() if k != "n"))
    if not ev and s["kind"] == "run":
        lines.append("scores: none logged")
    if "checkpoints" in s:
        ck = s["checkpoints"]
        latest = f" (latest {ck['latest']})" if ck["latest"] else ""
        lines.append(f"checkpoints: {', '.join(ck['tags']) or 'none'}{latest}")
    if "final" in s:
        lines.append(f"final/: {'present' if s['final'] else 'missing'}")
    if "matryoshka_dims" in s:
        lines.append(f"matryoshka dims: {s['matryoshka_dims']}")
    return "\n".join(lines)
