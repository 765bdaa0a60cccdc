"""Cross-field checks that run before any model or data is loaded."""
from __future__ import annotations

import difflib

from embedtrain.config.schema import RecipeConfig


def _fail(origin: dict, key: str, message: str):
    from embedtrain.config.loader import RecipeError

    raise RecipeError(f"{origin.get(key, 'recipe')}: {key}: {message}")


def objective_options(cfg: RecipeConfig, origin: dict):
    """Typed options of the chosen objective, from `objective.<name>:`. Every block present is checked
    against its objective's schema (a base recipe may carry options for several objectives)."""
    from embedtrain.config.loader import build_dataclass
    from embedtrain.objectives.registry import get_objective, objective_names

    def lookup(name: str, key: str):
        try:
            return get_objective(name)[1]
        except KeyError:
            names = objective_names()
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            _fail(origin, key, f"unknown objective {name!r}; {hint}registered: {', '.join(names)}")

    chosen_cls = lookup(cfg.train.objective, "train.objective")
    built = {}
    for name, block in cfg.objective.items():
        options_cls = lookup(name, f"objective.{name}")
        if block is not None and not isinstance(block, dict):
            _fail(origin, f"objective.{name}", f"must be a mapping of {name} options, got {block!r}")
        built[name] = build_dataclass(options_cls, block or {}, origin, f"objective.{name}.")
    return built.get(cfg.train.objective) or chosen_cls()


def validate_recipe(cfg: RecipeConfig, origin: dict) -> None:
    from embedtrain.families import FAMILIES

    if not cfg.model.path:
        _fail(origin, "model.path", "is required (a local Hugging Face model folder)")
    if cfg.model.family != "auto" and cfg.model.family not in FAMILIES:
        close = difflib.get_close_matches(cfg.model.family, list(FAMILIES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        _fail(origin, "model.family", f"unknown family {cfg.model.family!r}; {hint}known: auto, {', '.join(FAMILIES)}")
    if not cfg.data.train:
        _fail(origin, "data.train", "is required: a list of JSONL files")
    if cfg.data.max_length < 4:
        _fail(origin, "data.max_length", f"must be >= 4, got {cfg.data.max_length}")
    if cfg.data.max_length > cfg.data.max_tokens_per_batch:
        _fail(origin, "data.max_tokens_per_batch",
              f"({cfg.data.max_tokens_per_batch}) must be >= data.max_length ({cfg.data.max_length}): "
              "one text must fit in one packed stream")
    if cfg.data.max_negatives is not None and cfg.data.max_negatives < 0:
        _fail(origin, "data.max_negatives", f"must be >= 0, got {cfg.data.max_negatives}")
    if "{instruction}" not in cfg.data.instruction_format:
        _fail(origin, "data.instruction_format", "must contain {instruction}")
    t = cfg.train
    for key, value, low in (("train.batch_size", t.batch_size, 1), ("train.grad_accum", t.grad_accum, 1),
                            ("train.steps", t.steps, 1), ("run.log_every", cfg.run.log_every, 1)):
        if value < low:
            _fail(origin, key, f"must be >= {low}, got {value}")
    if t.lr <= 0:
        _fail(origin, "train.lr", f"must be > 0, got {t.lr}")
    if t.warmup_steps > t.steps:
        _fail(origin, "train.warmup_steps", f"({t.warmup_steps}) exceeds train.steps ({t.steps})")
    if len(t.betas) != 2:
        _fail(origin, "train.betas", f"needs two values, got {t.betas}")
    ds = cfg.deepspeed
    if ds.zero_stage not in (0, 1, 2, 3):
        _fail(origin, "deepspeed.zero_stage", f"must be 0, 1, 2 or 3, got {ds.zero_stage}")
    if ds.offload and ds.zero_stage != 3:
        _fail(origin, "deepspeed.offload", f"CPU offload is set up for ZeRO-3 only; zero_stage is {ds.zero_stage}")
    if ds.config is not None and (ds.offload or "deepspeed.zero_stage" in origin):
        _fail(origin, "deepspeed.config",
              "an explicit DeepSpeed config file already states the ZeRO stage and offload; "
              "remove deepspeed.zero_stage / deepspeed.offload or deepspeed.config")
    if cfg.model.attn_backend == "flash_attn" and cfg.model.dtype == "float32":
        _fail(origin, "model.attn_backend", "flash_attn needs model.dtype bfloat16 (its kernels have no fp32)")
    lora = cfg.model.lora
    if lora.enabled and (lora.r < 1 or lora.alpha < 1 or not 0 <= lora.dropout < 1):
        _fail(origin, "model.lora", f"needs r >= 1, alpha >= 1, 0 <= dropout < 1; got {lora}")
    if cfg.run.checkpoint_every < 0 or cfg.run.keep_checkpoints < 0:
        _fail(origin, "run.checkpoint_every", "checkpoint_every and keep_checkpoints must be >= 0")
    if t.micro_batch_per_rank is not None:
        from embedtrain.objectives.registry import get_objective

        if t.micro_batch_per_rank < 1:
            _fail(origin, "train.micro_batch_per_rank", f"must be >= 1, got {t.micro_batch_per_rank}")
        if t.grad_accum != 1:
            _fail(origin, "train.micro_batch_per_rank", "derives train.grad_accum; remove one of the two")
        if not get_objective(t.objective)[0].splittable:
            _fail(origin, "train.micro_batch_per_rank",
                  f"splitting a batch changes the {t.objective} loss (in-batch negatives); keep the global "
                  "contrastive batch with objective.infonce.grad_cache: true and data.max_tokens_per_batch instead")
    _validate_eval(cfg, origin)
    options = objective_options(cfg, origin)
    check = getattr(options, "validate", None)
    if check is not None:
        problem = check(cfg)
        if problem:
            key, message = problem
            _fail(origin, key, message)


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
        _fail(origin, "eval.every_steps", f"must be >= 0 (0: no evaluation during training), got {ev.every_steps}")
    if ev.every_steps and not (ev.retrieval or ev.tasks):
        _fail(origin, "eval.every_steps", "has nothing to score: set eval.retrieval (held-out pairs) and/or "
                                          "eval.tasks with eval.suite")
    if ev.tasks:
        if not ev.suite:
            _fail(origin, "eval.tasks", "needs eval.suite: the offline suite folder (embedtrain build-eval-suite DIR)")
        if not ev.every_steps:
            _fail(origin, "eval.tasks", "are scored during training only: set eval.every_steps")
    if cfg.run.keep_best and not ev.every_steps:
        _fail(origin, "run.keep_best", "needs evaluations to compare: set eval.every_steps and eval.retrieval "
                                       "and/or eval.tasks")
    if ev.every_steps:
        names = metric_names(cfg)
        if best_metric(cfg) not in names:
            key = "eval.best_metric" if ev.best_metric else "run.keep_best"
            _fail(origin, key, f"{best_metric(cfg)!r} is not a score this recipe's evaluation produces; "
                               f"one of: {', '.join(names)}")


def check_eval_suite(cfg: RecipeConfig, origin: dict) -> None:
    """eval.suite holds every task of eval.tasks. Checked with the data files (train start, `embedtrain
    check`), not at load: a shipped recipe names a suite folder the user builds later."""
    import json
    from pathlib import Path

    ev = cfg.eval
    if not ev.tasks:
        return
    manifest = Path(ev.suite) / "suite.json"
    if not manifest.is_file():
        _fail(origin, "eval.suite", f"{ev.suite}: no suite.json (build it with: embedtrain build-eval-suite {ev.suite})")
    known = json.loads(manifest.read_text()).get("tasks", {})
    unknown = [t for t in ev.tasks if t not in known]
    if unknown:
        _fail(origin, "eval.tasks", f"not in {manifest}: {', '.join(unknown)}; it has {', '.join(sorted(known))}")
