"""One data row: parsed and checked, with errors that name file:line (METHODS.md section 4).

Pair rows ({"query", "positive", ["negative", "task", "instruction"]}) and the rows of `embedtrain
generate` output ({"query", "response", ["task", "instruction"]}, data/generated.py) share these checks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

QUERY_FIELDS = {"query", "task", "instruction"}
ROW_FIELDS = QUERY_FIELDS | {"response"}


class DataError(ValueError):
    pass


@dataclass
class Example:
    query: str
    positive: str
    negatives: list[str]
    task: str
    instruction: str | None
    target: torch.Tensor | None = None  # (D,) teacher embedding of the response (generated data)


PAIR_FIELDS = ("query", "positive", "negative", "task", "instruction")


def load_object(line: str, where: str, allowed: tuple[str, ...]) -> dict:
    """One JSON object line with no field outside `allowed`; raises DataError naming `where` (file:line)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - set(allowed)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    return obj


def check_task_and_instruction(obj: dict, where: str) -> None:
    for key in ("task", "instruction"):
        if key in obj and not (isinstance(obj[key], str) and obj[key].strip()):
            raise DataError(f"{where}: field {key!r} must be a non-empty string when present")


def parse_example(line: str, where: str, default_task: str) -> Example:
    """Parse and check one line; raises DataError naming `where` (file:line) and the fix."""
    obj = load_object(line, where, PAIR_FIELDS)
    for key in ("query", "positive"):
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
        if not obj[key].strip():
            raise DataError(f"{where}: field {key!r} is empty")
    neg = obj.get("negative", [])
    negatives = [neg] if isinstance(neg, str) else neg
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise DataError(f"{where}: field 'negative' must be a string or a list of strings")
    for i, n in enumerate(negatives):
        if not n.strip():
            raise DataError(f"{where}: negative {i} is empty")
    check_task_and_instruction(obj, where)
    return Example(obj["query"], obj["positive"], negatives, obj.get("task", default_task), obj.get("instruction"))


def check_object(line: str, where: str, allowed: set[str], required: tuple[str, ...]) -> dict:
    obj = load_object(line, where, tuple(sorted(allowed)))
    for key in required:
        if not isinstance(obj.get(key), str):
            raise DataError(f"{where}: field {key!r} must be a string" + ("" if key in obj else " (missing)"))
    if "query" in required and not obj["query"].strip():
        raise DataError(f"{where}: field 'query' is empty")
    check_task_and_instruction(obj, where)
    return obj


def parse_row(line: str, where: str) -> dict:
    return check_object(line, where, ROW_FIELDS, ("query", "response"))
