"""Keeping the CPU quickstart's training data out of the suite.

The quickstart trains on WordNet pairs (recipes/quickstart/data/train.jsonl): wordnet_def2lemma rows have a
definition as query and lemmas as positive and negatives, wordnet_lemma2def rows a lemma as query and definitions
as positive and negatives. Every lemma and definition of that file, negatives included, is kept out of the WordNet
tasks, and its lemmas out of the GCIDE reverse dictionary. The held-out file is a separate evaluation and is not
read. In an installed wheel the file is absent and the suite is built without exclusion ("excluded": null).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from embedtrain.evaluation.suite_sources import SourceError

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_TRAIN = REPO_ROOT / "recipes" / "quickstart" / "data" / "train.jsonl"
# which fields of a row hold lemmas and which hold definitions, per task
FIELDS = {"wordnet_def2lemma": {"query": "definitions", "positive": "lemmas", "negative": "lemmas"},
          "wordnet_lemma2def": {"query": "lemmas", "positive": "definitions", "negative": "definitions"}}
_EXAMPLE = re.compile(r'[;:,]\s*"')


def norm_lemma(text: str) -> str:
    return " ".join(text.replace("_", " ").casefold().split())


def norm_definition(text: str) -> str:
    """The part of a gloss both the suite and the quickstart keep: they cut quoted examples and trailing
    punctuation a little differently, so cut at the first '; "' (or ': "', ', "') and strip the end."""
    text = text.casefold()
    m = _EXAMPLE.search(text)
    text = " ".join((text[:m.start()] if m else text).split())
    while True:
        cut = text.rstrip(' ;:,."')
        cut = cut[:-4] if cut.endswith(" e.g") else cut
        if cut == text:
            return text
        text = cut


@dataclass(frozen=True)
class Exclusion:
    """Lemmas and definitions (normalized) that the suite must not show, and the file they came from."""

    file: str
    sha256: str
    lines: int
    lemmas: frozenset[str]
    definitions: frozenset[str]

    def has_lemma(self, text: str) -> bool:
        return norm_lemma(text) in self.lemmas

    def has_definition(self, text: str) -> bool:
        return norm_definition(text) in self.definitions

    def record(self, counts: dict[str, dict[str, int]]) -> dict:
        """suite.json's "excluded" entry: the file, what it holds, and per task how many items were left out."""
        return {"file": self.file, "sha256": self.sha256, "lines": self.lines, "lemmas": len(self.lemmas),
                "definitions": len(self.definitions), "tasks": counts}


def exclusion_from_lines(lines, file: str, sha256: str = "") -> Exclusion:
    """Parse quickstart training lines (JSON objects with query, positive, negative and task)."""
    found: dict[str, set[str]] = {"lemmas": set(), "definitions": set()}
    n = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            fields = FIELDS[row["task"]]
            texts = {"query": [row["query"]], "positive": [row["positive"]], "negative": list(row.get("negative", []))}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SourceError(f"{file}:{n}: expected a JSON object with query, positive, negative and a task of "
                              f"{', '.join(FIELDS)} ({type(exc).__name__}: {exc})") from None
        for field, kind in fields.items():
            norm = norm_lemma if kind == "lemmas" else norm_definition
            found[kind].update(norm(t) for t in texts[field] if isinstance(t, str) and t.strip())
    return Exclusion(file=file, sha256=sha256, lines=n, lemmas=frozenset(found["lemmas"]),
                     definitions=frozenset(found["definitions"]))


def read_exclusion(path: Path = QUICKSTART_TRAIN) -> Exclusion | None:
    """The quickstart training file's lemmas and definitions, or None where the file is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        name = path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        name = str(path)
    return exclusion_from_lines(raw.decode("utf-8").splitlines(), name, hashlib.sha256(raw).hexdigest())


def check_excluded(data: dict, exclusion: Exclusion) -> None:
    """Fail if a built WordNet or GCIDE task still shows a lemma or definition of the training file."""
    def leak(task, what, texts, test):
        hits = sorted({t for t in texts if test(t)})
        if hits:
            raise AssertionError(f"{task}: {len(hits)} {what} of {exclusion.file} left in, e.g. {hits[:3]}")

    for task, rows in data.items():
        test = rows["test"]
        if task == "EmbedtrainWordNetReranking":
            leak(task, "lemmas", [r["text"] for r in test["corpus"]], exclusion.has_lemma)
            leak(task, "definitions", [r["text"] for r in test["queries"]], exclusion.has_definition)
        elif task == "EmbedtrainWordNetClustering":
            leak(task, "definitions", [r["text"] for r in test["examples"]], exclusion.has_definition)
        elif task == "EmbedtrainGcideRetrieval":
            leak(task, "lemmas", [r["text"] for r in test["corpus"]], exclusion.has_lemma)
