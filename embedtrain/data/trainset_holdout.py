"""What the training set must never show: every source item of the offline suite's test splits.

The suite's test rows are rebuilt in memory from the same fetched sources and seed (suite_build._build_all), and,
given a built suite folder, its test files are read as well, so a suite built with another seed or an older
version is covered too. Items are kept as (kind, normalized value) -> the suite task that tests them:

  word            lemmas, headwords and other texts of under MIN_TEXT_WORDS words (casefolded, hyphens as
                  spaces, end punctuation cut: "double-bogey" and "double bogey" are one word)
  text            definitions, descriptions, questions, articles (norm_definition), compared whole and clipped to
                  the suite's DOC_WORDS, since the suite shows a document's first DOC_WORDS words only
  synset          WordNet synsets ("n01234567") of the reranking task
  debian-package  binary packages, and debian-source their source packages; every source package on the suite's
                  test side (DEBIAN_TRAIN_FRACTION) is held out, used by a test split or not

The quickstart's held-out evaluation file (recipes/quickstart/data/heldout.jsonl) is held out the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from embedtrain.evaluation import suite_build  # module attribute: the suite builder is looked up at call time
from embedtrain.evaluation.suite_catalog import DEBIAN_TRAIN_FRACTION, DOC_WORDS
from embedtrain.evaluation.suite_exclusion import (
    QUICKSTART_TRAIN,
    REPO_ROOT,
    norm_definition,
    norm_lemma,
    read_exclusion,
)
from embedtrain.evaluation.suite_sources import SourceError
from embedtrain.evaluation.suite_tasks_data import _clip, _frac

MIN_TEXT_WORDS = 4
QUICKSTART_HELDOUT = REPO_ROOT / "recipes" / "quickstart" / "data" / "heldout.jsonl"
# how the ids of a task's test rows name source items ("d-<package>", "q-<package>", "n01234567", "qn01234567")
ID_KINDS = {"EmbedtrainDebianRetrieval": "debian-package", "EmbedtrainWordNetReranking": "synset"}


def norm_word(text: str) -> str:
    return norm_lemma(text.replace("-", " ")).strip(" !?.,;:")


class LeakError(AssertionError):
    """A training row shows a source item of a suite test split; the message names the row, item and task."""


@dataclass
class Holdout:
    items: dict[tuple[str, str], str] = field(default_factory=dict)
    package_source: dict[str, str] = field(default_factory=dict)  # binary -> source package

    def add(self, kind: str, value: str, where: str) -> None:
        value = norm_word(value) if kind == "word" else norm_definition(value) if kind == "text" else value
        if value:
            self.items.setdefault((kind, value), where)
            if kind == "debian-package" and value in self.package_source:
                self.items.setdefault(("debian-source", self.package_source[value]), where)

    def add_text(self, text: str, where: str) -> None:
        self.add("text" if len(text.split()) >= MIN_TEXT_WORDS else "word", text, where)

    def text_hit(self, text: str) -> tuple[str, str, str] | None:
        """(kind, value, suite task) if text is a held-out word or text (whole or as the suite clips it)."""
        if len(text.split()) < MIN_TEXT_WORDS:
            key = ("word", norm_word(text))
            return (*key, self.items[key]) if key in self.items else None
        for t in (text, _clip(text, DOC_WORDS)):
            key = ("text", norm_definition(t))
            if key in self.items:
                return (*key, self.items[key])
        return None

    def key_hit(self, kind: str, value: str) -> str | None:
        value = norm_word(value) if kind == "word" else norm_definition(value) if kind == "text" else value
        return self.items.get((kind, value))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _ in self.items:
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))


def add_test_splits(holdout: Holdout, tasks: dict[str, dict], origin: str) -> None:
    """Hold out every text and id of each task's test split (rows per part, as the suite writes them)."""
    for name, test in tasks.items():
        where = f"{name} ({origin})"
        for part, rows in test.items():
            for row in rows:
                for key in ("text", "sentence1", "sentence2"):
                    if isinstance(row.get(key), str):
                        holdout.add_text(row[key], where)
                if "key" in row:  # Debian classification rows name their source package
                    holdout.add("debian-source", str(row["key"]), where)
                for key in ("id", "query-id", "corpus-id"):
                    if name in ID_KINDS and isinstance(row.get(key), str):
                        holdout.add(ID_KINDS[name], _item_id(name, row[key]), where)


def _item_id(task: str, ident: str) -> str:
    if task == "EmbedtrainDebianRetrieval":
        return ident.split("-", 1)[1]  # "d-<package>", "q-<package>"
    return ident.removeprefix("q")  # "n01234567", "qn01234567"


def read_suite_tests(suite_dir: str | Path) -> tuple[dict[str, dict], int]:
    """Test split rows per task of a built suite folder, and the seed it was built with."""
    suite = Path(suite_dir)
    try:
        manifest = json.loads((suite / "suite.json").read_text(encoding="utf-8"))
        tasks = {}
        for name, entry in manifest["tasks"].items():
            tasks[name] = {}
            for part in entry["splits"]["test"]:
                path = suite / name / "test" / f"{part}.jsonl"
                tasks[name][part] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                     if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{suite}: not a readable suite folder ({type(exc).__name__}: {exc})") from None
    return tasks, int(manifest.get("seed", 0))


def suite_holdout(got: dict, pkgs: list[dict], seed: int, suite_dir: str | Path | None = None, say=print,
                  heldout_file: Path = QUICKSTART_HELDOUT) -> Holdout:
    """Everything the suite (built from got with seed, plus suite_dir's files when given) tests."""
    holdout = Holdout(package_source={p["package"]: p["source"] for p in pkgs})
    say(f"[trainset] rebuilding the suite's test splits in memory (seed {seed}) to hold them out", flush=True)
    # the suite's sampling depends on what it excluded, so rebuild it with the same exclusion
    data, _, _ = suite_build._build_all(got, seed, lambda *a, **k: None, read_exclusion(QUICKSTART_TRAIN))
    add_test_splits(holdout, {name: d["test"] for name, d in data.items()}, f"suite seed {seed}")
    if suite_dir is not None:
        tests, _ = read_suite_tests(suite_dir)
        add_test_splits(holdout, tests, str(suite_dir))
    for p in pkgs:
        if _frac(seed, "debian:" + p["source"]) >= DEBIAN_TRAIN_FRACTION:
            holdout.add("debian-source", p["source"], "Debian test side (DEBIAN_TRAIN_FRACTION)")
    heldout = read_exclusion(heldout_file)
    if heldout is not None:
        for lemma in heldout.lemmas:
            holdout.add("word", lemma, heldout.file)
        for definition in heldout.definitions:
            holdout.add("text", definition, heldout.file)
    return holdout


def row_leak(row: dict, holdout: Holdout) -> str | None:
    """Why row shows a held-out item (its keys, then its query, positive and negatives), or None."""
    for kind, value in row.get("keys", ()):
        where = holdout.key_hit(kind, value)
        if where:
            return f"{kind} {value!r} is tested by {where}"
    for name, text in (("query", row["query"]), ("positive", row["positive"]),
                       *(("negative", n) for n in row.get("negative", ()))):
        hit = holdout.text_hit(text)
        if hit:
            return f"{name} {hit[0]} {hit[1][:80]!r} is tested by {hit[2]}"
    return None


def apply_holdout(rows: list[dict], holdout: Holdout) -> tuple[list[dict], dict[str, int]]:
    """Drop held-out negatives, then rows that still show a held-out item; return kept rows and drops per task."""
    kept, dropped = [], {}
    for row in rows:
        if row.get("negative"):
            row = {**row, "negative": [n for n in row["negative"] if not holdout.text_hit(n)
                                       and not holdout.key_hit("word", n)]}
        if row_leak(row, holdout):
            dropped[row["task"]] = dropped.get(row["task"], 0) + 1
        else:
            kept.append(row)
    return kept, dropped


def check_disjoint(rows: list[dict], holdout: Holdout) -> int:
    """Raise LeakError naming the first row that shows a held-out item; return how many rows were checked."""
    for n, row in enumerate(rows, 1):
        why = row_leak(row, holdout)
        if why:
            raise LeakError(f"training row {n} (task {row['task']}, query {row['query'][:60]!r}): {why}")
    return len(rows)
