"""README.md for an exported folder: a model card with Hugging Face metadata, written from the run's summary
(run_summary.summarize), the folder's embedtrain.json and the prompts the export defines.

Every number in the card comes from the run's own files; a fact the run did not record is left out or
said to be unknown, never guessed.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from embedtrain.files import atomic_write_text

TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "embedtrain"]
POOLING = {"mean": "mean of the last hidden states over the text's tokens (the prompt's tokens excluded)",
           "last": "the last hidden state of the final (end-of-turn) token"}
SAMPLE_QUERY, SAMPLE_DOC = "a small domesticated carnivorous mammal", "cat"


def base_model_license(base_model: str | None) -> str | None:
    """`license:` of the base model folder's README.md front matter, if it has one."""
    if not base_model:
        return None
    readme = Path(base_model) / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    try:
        front = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if value else None


def _needs_embedtrain(out_dir: Path, meta: dict) -> bool:
    """Whether sentence-transformers must import embedtrain's modules (trust_remote_code) to load the folder."""
    modules = out_dir / "modules.json"
    if modules.is_file():
        return any(str(m.get("type", "")).startswith("embedtrain.") for m in json.loads(modules.read_text()))
    return meta.get("kind") == "compression" or meta.get("attention") == "bidirectional"


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _front_matter(summary: dict, license_: str | None) -> str:
    front = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity", "tags": TAGS}
    if summary.get("base_model"):
        front["base_model"] = summary["base_model"]
    if license_:
        front["license"] = license_
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def _model_section(summary: dict, meta: dict, path: str) -> list[str]:
    opts = ", ".join(f"{k} {v}" for k, v in (summary.get("objective_options") or {}).items() if v is not None)
    lines = ["## Model", "", f"- Base model: `{summary.get('base_model', 'unknown')}`"]
    if summary.get("objective"):
        lines.append(f"- Objective: `{summary['objective']}`" + (f" ({opts})" if opts else ""))
    if meta.get("kind") == "compression":
        c = summary.get("compression") or meta
        lines.append(f"- Trained: {c.get('thought_tokens')} thought and {c.get('compression_tokens')} compression "
                     "tokens appended to every text, and two linear maps; the language model stays frozen")
    lora = summary.get("lora") or {}
    if lora.get("enabled"):
        lines.append(f"- LoRA r {lora.get('r')}, alpha {lora.get('alpha')}; merged into the exported weights")
    elif "lora" in summary and meta.get("kind") != "compression":
        lines.append("- All weights trained (no LoRA)")
    if summary.get("pooling"):
        lines.append(f"- Pooling: {POOLING.get(summary['pooling'], summary['pooling'])}")
    if summary.get("attention"):
        lines.append(f"- Attention: {summary['attention']}")
    if summary.get("embedding_dim"):
        lines.append(f"- Embedding dimension: {summary['embedding_dim']}, L2-normalised")
    dims = summary.get("matryoshka_dims")
    if dims:
        lines.append(f"- Matryoshka dimensions: {', '.join(map(str, dims))}. The leading N dimensions are trained "
                     f"to work alone: `SentenceTransformer({path!r}, truncate_dim={min(dims)})`, or "
                     f"`encode(..., dim={min(dims)})` in embedtrain")
    if "weights_step" in summary:
        lines.append(f"- Weights: training step {summary['weights_step']} (`{Path(summary['weights_dir']).name}/`)")
    return lines


def _training_section(summary: dict) -> list[str]:
    lines = ["## Training", ""]
    if "run_dir" not in summary:
        return lines + ["The training run's directory was not available when this card was written."]
    data = summary.get("data") or []
    if data:
        lines += ["| data | examples |", "| --- | --- |"]
        lines += [f"| `{d['path']}` | {_num(d['examples']) if d.get('examples') is not None else 'unknown'} |"
                  for d in data]
        lines.append("")
    train = summary.get("train") or {}
    done, planned = summary.get("steps_done"), summary.get("steps_planned")
    if done is not None or planned is not None:
        early = " (stopped early)" if done is not None and planned is not None and done < planned else ""
        lines.append(f"- Steps: {_num(done if done is not None else 0)} of {_num(planned or '?')}{early}")
    if "tokens_seen" in summary:
        lines.append(f"- Tokens seen: {_num(summary['tokens_seen'])} (text tokens, no padding)")
    if "batch_size" in train:
        lines.append(f"- Batch: {train['batch_size']} examples x {train.get('grad_accum', 1)} accumulation per step")
    if "lr" in train:
        lines.append(f"- Learning rate: {train['lr']} ({train.get('schedule', '?')} schedule, "
                     f"{train.get('warmup_steps', 0)} warmup steps)")
    if "train_time_s" in summary:
        lines.append(f"- Training time: {summary['train_time_s']:.3g} s (evaluation excluded)")
    return lines


def _evaluation_section(summary: dict) -> list[str]:
    ev = summary.get("evaluation") or {}
    columns = []  # (header, {metric: value})
    for key, label in (("before", "before training"), ("after", "after training")):
        if key in ev:
            columns.append((label, {f"retrieval/{k}": v for k, v in ev[key].items() if k != "n"}))
    if "best" in ev:
        columns.append((f"best (step {ev['best']['step']}, by {ev['best']['metric']})", ev["best"]["scores"]))
    if "last" in ev:
        columns.append((f"last (step {ev['last']['step']})", ev["last"]["scores"]))
    lines = ["## Evaluation", ""]
    if not columns:
        return lines + ["This run recorded no evaluation scores."]
    metrics = list(dict.fromkeys(m for _, scores in columns for m in scores))
    lines += ["| metric | " + " | ".join(h for h, _ in columns) + " |", "| --- |" + " --- |" * len(columns)]
    lines += [f"| {m} | " + " | ".join(_num(s[m]) if m in s else "" for _, s in columns) + " |" for m in metrics]
    notes = {"retrieval/": "retrieval/*: the run's held-out pairs (eval.retrieval), each query ranked against "
                           "every held-out positive.",
             "suite/": "suite/*: offline-suite tasks (eval.tasks) scored through mteb."}
    return lines + [""] + [note for prefix, note in notes.items() if any(m.startswith(prefix) for m in metrics)]


def _usage_section(meta: dict, prompts: dict, path: str, remote: bool) -> list[str]:
    instructions = dict(meta.get("instructions") or {})
    if meta.get("default_instruction"):
        instructions.setdefault("query", meta["default_instruction"])
    query_prompt = next((p for p in prompts if p in instructions), None)
    trust = ", trust_remote_code=True" if remote else ""
    lines = ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
             f"model = SentenceTransformer({path!r}{trust})"]
    if query_prompt:
        lines.append(f"queries = model.encode([{SAMPLE_QUERY!r}], prompt_name={query_prompt!r})")
    lines += [f"documents = model.encode([{SAMPLE_DOC!r}])", "```", ""]
    if remote:
        lines += ["`trust_remote_code=True` lets sentence-transformers import embedtrain's modules (embedtrain must "
                  "be installed).", ""]
    if prompts:
        lines.append("Prompts (`prompt_name=`):")
        lines += [f"- `{name}`" + (f": {instructions[name]}" if name in instructions else "")
                  + (" (default, for documents)" if name == "document" else "") for name in prompts]
        lines.append("")
    instruction = instructions.get(query_prompt) if query_prompt else None
    lines += ["With embedtrain (packed batches, no padding):", "", "```python", "import embedtrain", "",
              f"model = embedtrain.load({path!r})"]
    if instruction:
        lines.append(f"queries = model.encode([{SAMPLE_QUERY!r}], instruction={instruction!r})")
    lines += [f"documents = model.encode([{SAMPLE_DOC!r}])", "```"]
    return lines


def render_model_card(summary: dict, meta: dict, prompts: dict | None, path: str, remote: bool) -> str:
    """The card's text; path: how the snippets name the folder, remote: whether loading needs embedtrain."""
    license_ = base_model_license(summary.get("base_model"))
    base = f"`{summary['base_model']}`" if summary.get("base_model") else "an unrecorded base model"
    title = Path(path).name or path
    intro = [f"# {title}", "", f"A text embedding model trained from {base} with embedtrain."]
    licence = ["## Licence", ""]
    licence.append(f"{license_}, the base model's licence." if license_ else
                   f"The licence is that of the base model ({base}), whose folder states none; check it "
                   "before redistributing.")
    parts = [intro, _model_section(summary, meta, path), _training_section(summary),
             _evaluation_section(summary), _usage_section(meta, prompts or {}, path, remote), licence]
    return _front_matter(summary, license_) + "\n" + "\n\n".join("\n".join(p) for p in parts) + "\n"


def write_model_card(out_dir: str | Path, summary: dict, meta: dict, prompts: dict | None,
                     path: str | None = None) -> Path:
    """Write out_dir/README.md atomically. path: the name the usage snippets load (default out_dir; an export
    assembles its folder under a temporary name and passes the final one)."""
    out_dir = Path(out_dir)
    text = render_model_card(summary, meta, prompts, str(path or out_dir), _needs_embedtrain(out_dir, meta))
    target = out_dir / "README.md"
    atomic_write_text(target, text)
    return target
