"""Cross-field checks that run before any model or data is loaded."""
from __future__ import annotations

import difflib
import json
from pathlib import Path

from embedtrain.config.errors import RecipeError
from embedtrain.config.schema import RecipeConfig
from embedtrain.families import FAMILIES


def fail(origin: dict, key: str, message: str):
    raise RecipeError(f"{origin.get(key, 'recipe')}: {key}: {message}")


def objective_options(cfg: RecipeConfig, origin: dict | None = None):
    """The chosen objective's typed options (typed once, by load_recipe)."""
    return cfg.options()


def validate_recipe(cfg: RecipeConfig, origin: dict) -> None:
    """Cross-field checks, then the chosen objective's own (its options' validate): a pure function of the
    loaded recipe; origin only names where a key was set."""
    if not cfg.model.path:
        fail(origin, "model.path", "is required (a local Hugging Face model folder)")
    if cfg.model.family != "auto" and cfg.model.family not in FAMILIES:
        close = difflib.get_close_matches(cfg.model.family, list(FAMILIES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail(origin, "model.family", f"unknown family {cfg.model.family!r}; {hint}known: auto, {', '.join(FAMILIES)}")
    if not cfg.data.train:
        fail(origin, "data.train", "is required: a list of JSONL files")
    _validate_mixing(cfg, origin)
    if cfg.data.max_length < 4:
        fail(origin, "data.max_length", f"must be >= 4, got {cfg.data.max_length}")
    if cfg.data.max_length > cfg.data.max_tokens_per_batch:
        fail(origin, "data.max_tokens_per_batch",
              f"({cfg.data.max_tokens_per_batch}) must be >= data.max_length ({cfg.data.max_length}): "
              "one text must fit in one packed stream")
    if cfg.data.max_negatives is not None and cfg.data.max_negatives < 0:
        fail(origin, "data.max_negatives", f"must be >= 0, got {cfg.data.max_negatives}")
    if "{instruction}" not in cfg.data.instruction_format:
        fail(origin, "data.instruction_format", "must contain {instruction}")
    t = cfg.train
    for key, value, low in (("train.batch_size", t.batch_size, 1), ("train.grad_accum", t.grad_accum, 1),
                            ("train.steps", t.steps, 1), ("run.log_every", cfg.run.log_every, 1)):
        if value < low:
            fail(origin, key, f"must be >= {low}, got {value}")
    if t.max_bad_steps < 0:
        fail(origin, "train.max_bad_steps", f"must be >= 0 (0: stop at the first non-finite step), got {t.max_bad_steps}")
    if t.lr <= 0:
        fail(origin, "train.lr", f"must be > 0, got {t.lr}")
    if t.warmup_steps > t.steps:
        fail(origin, "train.warmup_steps", f"({t.warmup_steps}) exceeds train.steps ({t.steps})")
    if len(t.betas) != 2:
        fail(origin, "train.betas", f"needs two values, got {t.betas}")
    ds = cfg.deepspeed
    if ds.zero_stage not in (0, 1, 2, 3):
        fail(origin, "deepspeed.zero_stage", f"must be 0, 1, 2 or 3, got {ds.zero_stage}")
    if ds.offload and ds.zero_stage != 3:
        fail(origin, "deepspeed.offload", f"CPU offload is set up for ZeRO-3 only; zero_stage is {ds.zero_stage}")
    if ds.config is not None and (ds.offload or "deepspeed.zero_stage" in origin):
        fail(origin, "deepspeed.config",
              "an explicit DeepSpeed config file already states the ZeRO stage and offload; "
              "remove deepspeed.zero_stage / deepspeed.offload or deepspeed.config")
    if cfg.model.attn_backend == "flash_attn" and cfg.model.dtype == "float32":
        fail(origin, "model.attn_backend", "flash_attn needs model.dtype bfloat16 (its kernels have no fp32)")
    lora = cfg.model.lora
    if lora.enabled and (lora.r < 1 or lora.alpha < 1 or not 0 <= lora.dropout < 1):
        fail(origin, "model.lora", f"needs r >= 1, alpha >= 1, 0 <= dropout < 1; got {lora}")
    if cfg.run.checkpoint_every < 0 or cfg.run.keep_checkpoints < 0:
        fail(origin, "run.checkpoint_every", "checkpoint_every and keep_checkpoints must be >= 0")
    if t.micro_batch_per_rank is not None:
        if t.micro_batch_per_rank < 1:
            fail(origin, "train.micro_batch_per_rank", f"must be >= 1, got {t.micro_batch_per_rank}")
        if t.grad_accum != 1:
            fail(origin, "train.micro_batch_per_rank", "derives train.grad_accum; remove one of the two")
    _validate_eval(cfg, origin)
    check = getattr(cfg.options(), "validate", None)
    problem = check(cfg) if check is not None else None
    if problem:
        key, message = problem
        fail(origin, key, message)


def _validate_mixing(cfg: RecipeConfig, origin: dict) -> None:
    d = cfg.data
    for i, src in enumerate(d.sources()):
        key = f"data.train[{i}]"
        if not src.path:
            fail(origin, "data.train", f"{key} has no path")
        if src.weight is not None and not src.weight > 0:
            fail(origin, "data.train", f"{key}.weight must be > 0, got {src.weight}")
        if src.weight is not None and d.mixing != "weights":
            fail(origin, "data.train", f"{key}.weight is used with data.mixing: weights (data.mixing is {d.mixing!r})")
        if src.max_examples is not None and src.max_examples < 1:
            fail(origin, "data.train", f"{key}.max_examples must be >= 1, got {src.max_examples}")
        unknown = set(src.columns or {}) - {"query", "positive", "negative", "task", "instruction"}
        if unknown:
            fail(origin, "data.train", f"{key}.columns: unknown field(s) {sorted(unknown)}; map query, positive, "
                                       "negative, task, instruction")
        for field, cols in (src.columns or {}).items():
            if field != "negative" and not isinstance(cols, str):
                fail(origin, "data.train", f"{key}.columns.{field} must name one column, got {cols!r}")
    if not d.mixing_temperature > 0:
        fail(origin, "data.mixing_temperature", f"must be > 0, got {d.mixing_temperature}")


def best_metric(cfg: RecipeConfig) -> str:
    """The score run.keep_best maximises: eval.best_metric, else the retrieval MRR, else the suite mean."""
    if cfg.eval.best_metric:
        return cfg.eval.best_metric
    return "retrieval/mrr" if cfg.eval.retrieval else "suite/mean"


def metric_names(cfg: RecipeConfig) -> list[str]:
    """Every score key an evaluation of this recipe produces."""
    names = [f"retrieval/{m}" for m in ("recall@1", "recall@10", "mrr")] if cfg.eval.retrieval else []
    if cfg.eval.tasks:
        names += [f"suite/{t}" for t in cfg.eval.tasks] + ["suite/mean"]
    return names


def _validate_eval(cfg: RecipeConfig, origin: dict) -> None:
    """eval.every_steps / eval.tasks / run.keep_best: checked here, so a typo fails before a model loads."""
    ev = cfg.eval
    if ev.every_steps < 0:
        fail(origin, "eval.every_steps", f"must be >= 0 (0: no evaluation during training), got {ev.every_steps}")
    if ev.every_steps and not (ev.retrieval or ev.tasks):
        fail(origin, "eval.every_steps", "has nothing to score: set eval.retrieval (held-out pairs) and/or "
                                          "eval.tasks with eval.suite")
    if ev.tasks:
        if not ev.suite:
            fail(origin, "eval.tasks", "needs eval.suite: the offline suite folder (embedtrain build-eval-suite DIR)")
        if not ev.every_steps:
            fail(origin, "eval.tasks", "are scored during training only: set eval.every_steps")
    if cfg.run.keep_best and not ev.every_steps:
        fail(origin, "run.keep_best", "needs evaluations to compare: set eval.every_steps and eval.retrieval "
                                       "and/or eval.tasks")
    if ev.every_steps:
        names = metric_names(cfg)
        if best_metric(cfg) not in names:
            key = "eval.best_metric" if ev.best_metric else "run.keep_best"
            fail(origin, key, f"{best_metric(cfg)!r} is not a score this recipe's evaluation produces; "
                               f"one of: {', '.join(names)}")


def check_eval_suite(cfg: RecipeConfig, origin: dict) -> None:
    """eval.suite holds every task of eval.tasks. Checked with the data files (train start, `embedtrain
    check`), not at load: a shipped recipe names a suite folder the user builds later."""
    ev = cfg.eval
    if not ev.tasks:
        return
    manifest = Path(ev.suite) / "suite.json"
    if not manifest.is_file():
        fail(origin, "eval.suite", f"{ev.suite}: no suite.json (build it with: embedtrain build-eval-suite {ev.suite})")
    known = json.loads(manifest.read_text()).get("tasks", {})
    unknown = [t for t in ev.tasks if t not in known]
    if unknown:
        fail(origin, "eval.tasks", f"not in {manifest}: {', '.join(unknown)}; it has {', '.join(sorted(known))}")
