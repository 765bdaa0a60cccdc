"""Inputs of `embedtrain mine`: the pair lines (kept whole for writing back), an optional corpus, and
per task the candidate pool with what each line may never get as a negative."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from embedtrain.data.jsonl import DataError, Example, build_index, parse_example


def normalize(text: str) -> str:
    """Texts equal up to whitespace are one candidate."""
    return " ".join(text.split())


def read_pairs(paths: list[str]) -> tuple[list[dict], list[Example]]:
    """Every line of the pair files, in order: its JSON object (all fields, to write back) and its
    Example. build_index validates everything first, so a bad line raises DataError naming file:line."""
    for path in paths:
        if Path(path).is_dir():
            raise DataError(f"{path} is a folder; mine takes pair JSONL files (query, positive, ...)")
    index = build_index(list(paths))
    objs, examples = [], []
    handles = {}
    try:
        for i in range(len(index)):
            fid = int(index.file_id[i])
            if fid not in handles:
                handles[fid] = open(index.files[fid], "rb")
            f = handles[fid]
            f.seek(int(index.offset[i]))
            line = f.readline().decode("utf-8")
            path = index.files[fid]
            examples.append(parse_example(line, f"{path}:{index.line_no[i]}", Path(path).stem))
            objs.append(json.loads(line))
    finally:
        for f in handles.values():
            f.close()
    return objs, examples


def read_corpus(path: str) -> list[str]:
    """Extra candidates for every task. A .jsonl file holds objects with a "text" string (other fields,
    such as ids or titles, are not used); any other file is plain text, one document per line. Blank
    lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--corpus {path}: file not found")
    texts = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if p.suffix != ".jsonl":
                texts.append(line.rstrip("\n"))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise DataError(f'{path}:{n}: expected an object with a non-empty "text" string, e.g. '
                                '{"text": "..."} (or use a plain-text file, one document per line)')
            texts.append(obj["text"])
    if not texts:
        raise DataError(f"--corpus {path}: no documents")
    return texts


@dataclass
class TaskPool:
    """One task's candidates and, per line of the task (in file order), what ranking needs."""

    task: str
    texts: list[str] = field(default_factory=list)  # (P,) distinct candidate texts
    rows: list[int] = field(default_factory=list)  # (Q,) example indices
    pos: list[int] = field(default_factory=list)  # (Q,) pool index of the line's positive
    excluded: list[list[int]] = field(default_factory=list)  # (Q, *) never negatives: the query's positives
    given: list[set[int]] = field(default_factory=list)  # (Q, *) pool indices of the line's given negatives
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, text: str) -> int:
        key = normalize(text)
        if key not in self._index:
            self._index[key] = len(self.texts)
            self.texts.append(text)
        return self._index[key]


def build_pools(examples: list[Example], corpus: list[str], keep_given: bool) -> list[TaskPool]:
    """Pools in order of first appearance of each task. Lines that share a query (same task, same text up
    to whitespace) exclude each other's positives: one is an unlabelled positive of the other."""
    pools: dict[str, TaskPool] = {}
    for i, ex in enumerate(examples):
        pool = pools.setdefault(ex.task, TaskPool(ex.task))
        pool.rows.append(i)
        pool.pos.append(pool.add(ex.positive))
    positives_of: dict[tuple[str, str], set[int]] = {}
    for pool in pools.values():
        for text in corpus:
            pool.add(text)
        for row, pos in zip(pool.rows, pool.pos):
            positives_of.setdefault((pool.task, normalize(examples[row].query)), set()).add(pos)
    for pool in pools.values():
        for row in pool.rows:
            ex = examples[row]
            pool.excluded.append(sorted(positives_of[(pool.task, normalize(ex.query))]))
            given = {pool._index.get(normalize(n)) for n in ex.negatives} if keep_given else set()
            pool.given.append(given - {None})
    return list(pools.values())
