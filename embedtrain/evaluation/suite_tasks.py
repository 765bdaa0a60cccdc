"""mteb tasks over the offline suite that embedtrain.evaluation.suite_build writes; no network is needed.

One class per task type reads SUITE/<Task>/<split>/<part>.jsonl. suite_tasks() turns the entries of
SUITE/suite.json into task objects, giving each task a small subclass of its type's class that carries its
TaskMetadata: mteb keeps metadata on the class (unload_data() drops any copy set on the instance).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from embedtrain.evaluation.suite_build import FORMAT_VERSION

BUILD_HINT = "build it with: python -m embedtrain.evaluation.suite_build SUITE_DIR"


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the suite; {BUILD_HINT}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
    if not rows:
        raise ValueError(f"{path}: empty")
    return rows


class _SuiteFiles:
    """Where a task's files are; suite_tasks() sets suite_dir on each task's subclass."""

    suite_dir: str = ""

    def _part(self, split: str, part: str) -> Path:
        return Path(self.suite_dir, self.metadata.name, split, f"{part}.jsonl")


class SuiteRetrieval(_SuiteFiles, AbsTaskRetrieval):
    """corpus/queries {"id", "text"} and qrels {"query-id", "corpus-id", "score"} per split."""

    needs_candidates = False

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = {"default": {}}
        for split in self.eval_splits:
            qrels: dict[str, dict[str, int]] = {}
            for r in _rows(self._part(split, "qrels")):
                qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
            top_ranked = None
            if self.needs_candidates or self._part(split, "top_ranked").is_file():
                top_ranked = {str(r["query-id"]): [str(i) for i in r["corpus-ids"]]
                              for r in _rows(self._part(split, "top_ranked"))}
            self.dataset["default"][split] = RetrievalSplitData(
                corpus=Dataset.from_list([{"id": str(r["id"]), "text": r["text"]}
                                          for r in _rows(self._part(split, "corpus"))]),
                queries=Dataset.from_list([{"id": str(r["id"]), "text": r["text"]}
                                           for r in _rows(self._part(split, "queries"))]),
                relevant_docs=qrels, top_ranked=top_ranked)
        self.data_loaded = True


class SuiteReranking(SuiteRetrieval):
    """Retrieval restricted to each query's candidates: top_ranked {"query-id", "corpus-ids"} per split."""

    needs_candidates = True


class _EncodeEachTextOnce:
    """Stands in for the model during one STS evaluation. mteb's STS evaluator encodes every row, and the Lee
    pairs reuse 50 articles 1225 times a side: each distinct text is encoded once here and its vector reused."""

    def __init__(self, model):
        self._model, self._cache = model, {}

    def __getattr__(self, name: str):  # all but encode is the model's own (meta, similarity functions)
        if name in ("_model", "_cache"):
            raise AttributeError(name)
        return getattr(self._model, name)

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        from mteb._create_dataloaders import create_dataloader  # private in mteb 2.26: keep a break local to STS

        texts = [t for batch in inputs for t in batch["text"]]
        todo = sorted({t for t in texts if (prompt_type, t) not in self._cache})
        if todo:
            loader = create_dataloader(Dataset.from_dict({"text": todo}), task_metadata=task_metadata,
                                       input_column="text", batch_size=kwargs.get("batch_size", 32))
            vectors = self._model.encode(loader, task_metadata=task_metadata, hf_split=hf_split,
                                         hf_subset=hf_subset, prompt_type=prompt_type, **kwargs)
            if not isinstance(vectors, np.ndarray):
                vectors = vectors.detach().float().cpu().numpy()
            self._cache.update(zip([(prompt_type, t) for t in todo], vectors))
        return np.stack([self._cache[(prompt_type, t)] for t in texts])


class SuiteSTS(_SuiteFiles, AbsTaskSTS):
    """pairs {"sentence1", "sentence2", "score"} per split; the score range comes from suite.json."""

    def _evaluate_subset(self, model, data_split, **kwargs):
        return super()._evaluate_subset(_EncodeEachTextOnce(model), data_split, **kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = DatasetDict({split: Dataset.from_list(
            [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": float(r["score"])}
             for r in _rows(self._part(split, "pairs"))]) for split in self.eval_splits})
        self.data_loaded = True


def _labelled(task: _SuiteFiles, splits: list[str], text_column: str, label_column: str) -> DatasetDict:
    """examples {"text", "label"} -> label ids shared by all splits (sorted label names)."""
    rows = {split: _rows(task._part(split, "examples")) for split in splits}
    names = sorted({str(r["label"]) for split_rows in rows.values() for r in split_rows})
    ids = {name: i for i, name in enumerate(names)}
    return DatasetDict({split: Dataset.from_dict({text_column: [r["text"] for r in split_rows],
                                                  label_column: [ids[str(r["label"])] for r in split_rows]})
                        for split, split_rows in rows.items()})


class SuiteClassification(_SuiteFiles, AbsTaskClassification):
    """examples per split; the logistic-regression probe is fitted on train, scored on test."""

    samples_per_label = 16  # mteb's default of 8 gives a noisy probe; the train split holds 24 per label

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        splits = [self.train_split] + [s for s in self.eval_splits if s != self.train_split]
        self.dataset = _labelled(self, splits, self.input_column_name, self.label_column_name)
        self.data_loaded = True


class SuiteClustering(_SuiteFiles, AbsTaskClustering):
    """examples per split; k-means on bootstrap samples of all of them, scored by V-measure."""

    max_fraction_of_documents_to_embed = None  # the suite is small already: embed every text
    max_documents_per_cluster = 512

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = _labelled(self, list(self.eval_splits), self.input_column_name, self.label_column_name)
        self.data_loaded = True


TASK_CLASSES = {"retrieval": SuiteRetrieval, "reranking": SuiteReranking, "sts": SuiteSTS,
                "classification": SuiteClassification, "clustering": SuiteClustering}
CATEGORY = {"retrieval": "t2t", "reranking": "t2t", "sts": "t2t", "classification": "t2c", "clustering": "t2c"}


def load_manifest(suite_dir: str | Path) -> dict:
    path = Path(suite_dir, "suite.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no suite here; {BUILD_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: suite format {manifest.get('format')!r}, this embedtrain reads {FORMAT_VERSION}; "
                         f"rebuild it ({BUILD_HINT})")
    return manifest


def _metadata(entry: dict, source: dict, folder: Path) -> TaskMetadata:
    retrieval_like = entry["kind"] in ("retrieval", "reranking")
    return TaskMetadata(
        name=entry["name"], description=entry["description"], type=entry["type"], category=CATEGORY[entry["kind"]],
        dataset={"path": str(folder / entry["name"]), "revision": entry["revision"]},
        reference=source.get("reference"), eval_splits=entry["eval_splits"], eval_langs=["eng-Latn"],
        main_score=entry["main_score"], domains=entry.get("domains") or None,
        task_subtypes=entry.get("subtypes") or None, license=source.get("license", "not specified"),
        annotations_creators=entry.get("annotations", "derived"), dialect=[], sample_creation="found",
        bibtex_citation=source.get("bibtex", ""), modalities=["text"],
        # retrieval documents go in plain; everything else is encoded like a query
        prompt={"query": entry["instruction"]} if retrieval_like else entry["instruction"])


def suite_tasks(suite_dir: str, names: list[str] | None = None) -> list:
    """The suite's tasks (all, or those named, in that order) as mteb task objects."""
    folder = Path(suite_dir).resolve()
    manifest = load_manifest(folder)
    entries = manifest["tasks"]
    unknown = [n for n in names or [] if n not in entries]
    if unknown:
        raise ValueError(f"{folder / 'suite.json'}: no task {', '.join(unknown)} (the suite has {', '.join(entries)})")
    tasks = []
    for name in names or list(entries):
        entry = entries[name]
        if entry.get("kind") not in TASK_CLASSES:
            raise ValueError(f"{folder / 'suite.json'}: task {name} has unknown kind {entry.get('kind')!r}")
        attrs = {"metadata": _metadata(entry, manifest.get("sources", {}).get(entry.get("source"), {}), folder),
                 "suite_dir": str(folder), "__module__": __name__}
        if entry["kind"] == "sts":
            attrs["min_score"], attrs["max_score"] = entry.get("score_range", [0, 1])
        tasks.append(type(name, (TASK_CLASSES[entry["kind"]],), attrs)())
    return tasks
