"""Recipe loading: YAML with `base:` inheritance, dotted overrides, typed validation.

Each leaf value remembers the file (or `--set`) that set it, so an error can name where the bad key
came from. Unknown keys get the closest valid key as a suggestion.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from embedtrain.config.errors import RecipeError
from embedtrain.config.objective_options import OPTIONS
from embedtrain.config.schema import RecipeConfig
from embedtrain.config.validate import fail, validate_recipe

__all__ = ["RecipeError", "build_dataclass", "load_recipe", "parse_override"]


# Names users bring from the HF Trainer / DeepSpeed / sentence-transformers, mapped to ours.
ALIASES = {"learning_rate": "lr", "max_steps": "steps", "num_steps": "steps", "num_train_steps": "steps",
           "gradient_accumulation_steps": "grad_accum", "max_grad_norm": "grad_clip",
           "gradient_clipping": "grad_clip", "warmup": "warmup_steps", "lr_scheduler": "schedule",
           "lr_scheduler_type": "schedule", "temp": "temperature", "tau": "temperature",
           "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "model_name_or_path": "path",
           "output": "output_dir", "max_seq_length": "max_length", "stage": "zero_stage", "bf16": "dtype",
           "torch_dtype": "dtype", "pooling_mode": "pooling", "attn_implementation": "attn_backend"}


def _scale_hint(prefix: str, value: Any) -> str:
    """sentence-transformers' `scale` multiplies the cosine similarities: it is 1 / temperature, not a
    temperature, so it gets an explanation instead of an alias."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    example = (f"scale {value:g} is `{prefix}temperature: {1 / value:g}`" if numeric
               else f"scale 20 is `{prefix}temperature: 0.05`")
    return f"; `scale` (sentence-transformers) multiplies the similarities, it is 1 / temperature: {example}"


# Keys that mean something else here than their name suggests: explained, not aliased.
HINTS = {"scale": _scale_hint}


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key repeated in one mapping is an error: YAML would keep only the last
    one, silently dropping e.g. a whole `model:` section written twice."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} appears twice (first on line {seen[key] + 1}); merge the two", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: dict, origin: dict, source: str, prefix: str = "") -> None:
    """Deep-merge src into dst; origin maps dotted key -> file that set it."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = value
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _dotted_keys(value, dotted + "."):
                    origin[sub] = source


def _dotted_keys(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out.extend(_dotted_keys(v, f"{prefix}{k}."))
    return out


def _load_chain(path: Path, origin: dict, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: `base:` cycle: {' -> '.join(map(str, seen + (path,)))}")
    raw = _read_yaml(path)
    bases = raw.pop("base", None)
    merged: dict = {}
    if bases is not None:
        for base in [bases] if isinstance(bases, str) else bases:
            if not isinstance(base, str):
                raise RecipeError(f"{path}: `base:` must be a path or a list of paths, got {base!r}")
            _merge(merged, _load_chain(path.parent / base, origin, seen + (path,)), origin, str(path.parent / base))
    _merge(merged, raw, origin, str(path))
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key.sub=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check value against the annotation; ints are accepted for floats. Returns the value to store."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = {}
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except RecipeError as exc:
                errors[arg] = str(exc)
        # a mapping meant the section type: its own error (an unknown key) says more than "must be str"
        section = next((a for a in errors if isinstance(value, dict) and dataclasses.is_dataclass(a)), None)
        raise RecipeError(errors[section] if section else next(iter(errors.values()), f"{where}: {key}: bad value {value!r}"))
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(map(repr, get_args(tp)))
            raise RecipeError(f"{where}: {key} = {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: {key} must be a list, got {type(value).__name__} ({value!r})")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key} must be a mapping, got {type(value).__name__}")
        _, val_tp = get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):  # a section inside a list or a union (e.g. a data.train entry)
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: {key} must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, "
                              f"got {type(value).__name__} ({value!r})")
        return build_dataclass(tp, value, {}, f"{key}.", where)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise RecipeError(f"{where}: {key} must be {_type_name(tp)}, got {type(value).__name__} ({value!r})")
    return value


def build_dataclass(cls: type, data: dict, origin: dict, prefix: str = "", default_where: str = "recipe"):
    """Instantiate dataclass `cls` from a dict, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = origin.get(dotted, default_where)
        if key not in names and key in HINTS and "temperature" in names:
            raise RecipeError(f"{where}: unknown key `{dotted}`{HINTS[key](prefix, value)}")
        if key not in names:
            # Match against our names and the familiar aliases of them (learning_rate, lerning_rate -> lr).
            known = {n: n for n in names} | {a: t for a, t in ALIASES.items() if t in names}
            close = [known[m] for m in difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)]
            hint = f"; did you mean `{prefix}{close[0]}`?" if close else f"; valid keys: {', '.join(names)}"
            raise RecipeError(f"{where}: unknown key `{dotted}`{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: `{dotted}` must be a section (mapping), got {value!r}")
            kwargs[key] = build_dataclass(tp, value, origin, dotted + ".", default_where)
        else:
            kwargs[key] = _coerce(value, tp, dotted, where)
    return cls(**kwargs)


def type_objective_options(cfg: RecipeConfig, origin: dict) -> dict:
    """Every `objective.<name>` block typed by that objective's options class (a base recipe may carry
    blocks for several objectives); the chosen objective gets its defaults when it has no block."""
    def schema(name: str, key: str) -> type:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, sorted(OPTIONS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            fail(origin, key, f"unknown objective {name!r}; {hint}registered: {', '.join(sorted(OPTIONS))}")
        return OPTIONS[name]

    chosen = schema(cfg.train.objective, "train.objective")
    typed = {}
    for name, block in cfg.objective.items():
        options_cls = schema(name, f"objective.{name}")
        if block is not None and not isinstance(block, dict):
            fail(origin, f"objective.{name}", f"must be a mapping of {name} options, got {block!r}")
        typed[name] = build_dataclass(options_cls, block or {}, origin, f"objective.{name}.")
    typed.setdefault(cfg.train.objective, chosen())
    return typed


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[RecipeConfig, dict]:
    """Load, merge, override, type and validate. Returns (typed config, origin map); cfg.objective maps
    each objective name to its options dataclass, cfg.options() is the chosen one's."""
    origin: dict[str, str] = {}
    tree = _load_chain(Path(path), origin)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value)
        origin[".".join(keys)] = "--set"
    cfg = build_dataclass(RecipeConfig, tree, origin, default_where=str(path))
    cfg.objective = type_objective_options(cfg, origin)
    # Relative data/model paths in a recipe are relative to the directory the command runs in,
    # like every other CLI path; we do not rewrite them.
    validate_recipe(cfg, origin)
    return cfg, origin
