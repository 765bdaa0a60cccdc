"""Build the offline evaluation suite: small MTEB-shaped tasks made from real text.

    python -m embedtrain.evaluation.suite_build OUT_DIR [--work-dir DIR] [--seed N]

Sources are fetched with ordinary clients and nothing is installed: Debian's package lists and three Debian
packages through apt-get with a private state folder (the machine's apt state is neither read nor changed) and
`dpkg -x`, and gensim's wheel through `pip download`. embedtrain.evaluation.suite_tasks loads the result into
mteb with no network.

Layout: OUT/suite.json (tasks, sizes, sources, licences, query instructions, what was excluded), OUT/<Task>/<split>/
<part>.jsonl, OUT/LICENSES/ (the copyright file shipped with each source). Tasks are sized so that a 135M-parameter
model encodes each on 2 CPU cores in about a minute (see N_QUERIES and the sizes next to it). Lemmas and
definitions of the quickstart's training data are kept out of the WordNet and GCIDE tasks (suite_exclusion).

The parts live next to this module: suite_catalog (tasks, sources, sizes), suite_sources (fetching and reading
the sources), suite_tasks_data (each task's rows) and suite_exclusion; this module writes and checks the task
files and suite.json, and builds the whole suite.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

# re-exported: callers and tests import these from here
from embedtrain.evaluation.suite_catalog import (  # noqa: F401
    DEBIAN_TRAIN_FRACTION, DOC_WORDS, N_CORPUS, N_QUERIES, SOURCES, TASKS)
from embedtrain.evaluation.suite_exclusion import (  # noqa: F401
    QUICKSTART_TRAIN, Exclusion, check_excluded, exclusion_from_lines, read_exclusion)
from embedtrain.evaluation.suite_sources import (  # noqa: F401
    DEBIAN_SOURCE, DEBS, GENSIM, SourceError, fetch_sources, read_debian, read_dictd, read_lee, read_wordnet)
from embedtrain.evaluation.suite_tasks_data import (  # noqa: F401
    DEBIAN_CLASSES, DEBIAN_SKIP, FOLDOC_CLUSTERS, GCIDE_REDIRECT, WORDNET_CLUSTERS, _clip, _foldoc_entry, _frac,
    _gcide_sense, _retrieval, build_debian, build_foldoc, build_gcide, build_lee, build_wordnet)

FORMAT_VERSION = 1
# what each kind of task stores per split, one JSONL file each
PARTS = {
    "retrieval": ("corpus", "queries", "qrels"),
    "reranking": ("corpus", "queries", "qrels", "top_ranked"),
    "sts": ("pairs",),
    "classification": ("examples",),
    "clustering": ("examples",),
}
MTEB_TYPE = {"retrieval": "Retrieval", "reranking": "Reranking", "sts": "STS", "classification": "Classification",
             "clustering": "Clustering"}
MAIN_SCORE = {"retrieval": "ndcg_at_10", "reranking": "map_at_1000", "sts": "cosine_spearman",
              "classification": "accuracy", "clustering": "v_measure"}


# ---------------------------------------------------------------- writing task files

def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the suite is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_task(name: str, kind: str, splits: dict) -> None:
    def fail(msg):
        raise ValueError(f"task {name}: {msg}")

    if "test" not in splits:
        fail("no test split")
    if kind == "classification" and "train" not in splits:
        fail("classification needs a train split (the logistic-regression probe is fitted on it)")
    for split, data in splits.items():
        missing = [p for p in PARTS[kind] if not data.get(p)]
        if missing:
            fail(f"split {split}: missing or empty {', '.join(missing)}")
        if kind in ("retrieval", "reranking"):
            docs, queries = {d["id"] for d in data["corpus"]}, {q["id"] for q in data["queries"]}
            if len(docs) != len(data["corpus"]) or len(queries) != len(data["queries"]):
                fail(f"split {split}: duplicate corpus or query ids")
            if any(not str(r.get("text", "")).strip() for r in data["corpus"] + data["queries"]):
                fail(f"split {split}: empty text in corpus or queries")
            bad = [r for r in data["qrels"] if r["query-id"] not in queries or r["corpus-id"] not in docs]
            if bad:
                fail(f"split {split}: qrel {bad[0]} names an unknown query or document")
            if {r["query-id"] for r in data["qrels"] if r["score"] > 0} != queries:
                fail(f"split {split}: every query needs at least one relevant document")
            if kind == "reranking":
                ranked = {r["query-id"]: set(r["corpus-ids"]) for r in data["top_ranked"]}
                if set(ranked) != queries or any(not ids <= docs for ids in ranked.values()):
                    fail(f"split {split}: top_ranked must list known documents for every query")
                if any(r["corpus-id"] not in ranked[r["query-id"]] for r in data["qrels"] if r["score"] > 0):
                    fail(f"split {split}: a relevant document is missing from its query's candidates")
        elif kind == "sts":
            if any(not (r["sentence1"].strip() and r["sentence2"].strip()) or not isinstance(r["score"], (int, float))
                   for r in data["pairs"]):
                fail(f"split {split}: every pair needs two texts and a numeric score")
        else:
            if any(not r["text"].strip() or not str(r["label"]).strip() for r in data["examples"]):
                fail(f"split {split}: every example needs a text and a label")
            if len({r["label"] for r in data["examples"]}) < 2:
                fail(f"split {split}: fewer than 2 labels")
    if kind == "classification":
        train, test = splits["train"]["examples"], splits["test"]["examples"]
        if not {r["label"] for r in test} <= {r["label"] for r in train}:
            fail("a test label never occurs in train")
        shared = {r.get("key") for r in train} & {r.get("key") for r in test} - {None}
        if shared:
            fail(f"train and test share source items, e.g. {sorted(shared)[:3]}")


def write_task_files(out_dir: str | Path, name: str, kind: str, splits: dict, *, instruction: str,
                     description: str, source: str, domains: list[str] | None = None,
                     subtypes: list[str] | None = None, annotations: str = "derived") -> dict:
    """Check one task's data and write it as OUT/<name>/<split>/<part>.jsonl; return its suite.json entry.

    splits maps a split name ("test", and "train" for classification) to rows per part (PARTS[kind]):
    corpus/queries [{"id", "text"}], qrels [{"query-id", "corpus-id", "score"}], top_ranked
    [{"query-id", "corpus-ids"}], pairs [{"sentence1", "sentence2", "score"}], examples [{"text", "label"}]
    (an optional "key" names the source item, which train and test must not share).
    """
    if kind not in PARTS:
        raise ValueError(f"task {name}: unknown kind {kind!r} (one of {', '.join(PARTS)})")
    _check_task(name, kind, splits)
    digest, sizes = hashlib.sha256(), {}
    for split in sorted(splits):
        for part in PARTS[kind]:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in splits[split][part])
            _atomic_write(Path(out_dir, name, split, f"{part}.jsonl"), text)
            digest.update(f"{split}/{part}\n{text}".encode())
        sizes[split] = {part: len(splits[split][part]) for part in PARTS[kind]}
    entry = {"name": name, "kind": kind, "type": MTEB_TYPE[kind], "main_score": MAIN_SCORE[kind],
             "eval_splits": ["test"], "splits": sizes, "instruction": instruction, "description": description,
             "source": source, "domains": domains or [], "subtypes": subtypes or [], "annotations": annotations,
             "revision": digest.hexdigest()[:16]}
    if kind == "sts":
        scores = [r["score"] for s in splits.values() for r in s["pairs"]]
        entry["score_range"] = [min(0, min(scores)), max(1, max(scores))]
    return entry


def write_manifest(out_dir: str | Path, entries: list[dict], *, sources: dict | None = None, seed: int = 0,
                   built: dict | None = None, excluded: dict | None = None) -> dict:
    """Write OUT/suite.json (tasks, sources with licences, what was excluded and from which file (null: nothing),
    task -> query instruction) and return it."""
    manifest = {"format": FORMAT_VERSION, "seed": seed, "built": built or {},
                "tasks": {e["name"]: e for e in entries}, "sources": sources or {}, "excluded": excluded,
                "instructions": {e["name"]: e["instruction"] for e in entries}}
    _atomic_write(Path(out_dir, "suite.json"), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


# ---------------------------------------------------------------- the whole suite

def _build_all(got: dict, seed: int, say, exclusion: Exclusion | None = None) -> tuple[dict, bytes, dict | None]:
    """Every task's rows, gensim's licence, and suite.json's "excluded" entry (None without an exclusion)."""
    share = got["root"] / "usr" / "share"
    say("[suite] reading Debian descriptions, WordNet, FOLDOC, GCIDE and the Lee corpus", flush=True)
    wordnet = read_wordnet(share / "wordnet")
    lemmas = {w.lower() for s in wordnet.values() for w in s["words"]}
    docs, rows, gensim_licence = read_lee(got["wheel"])
    data = {}
    data.update(build_debian(read_debian(got["packages"], got["translation"]), seed))
    data.update(build_foldoc(read_dictd(share / "dictd", "foldoc"), seed))
    gcide, gcide_out = build_gcide(read_dictd(share / "dictd", "gcide"), lemmas, seed, exclusion)
    data.update(gcide)
    wordnet_data, wordnet_out = build_wordnet(wordnet, seed, exclusion)
    data.update(wordnet_data)
    data.update(build_lee(docs, rows, seed))
    if exclusion is None:
        return data, gensim_licence, None
    check_excluded(data, exclusion)
    counts = {**wordnet_out, **gcide_out}
    say(f"[suite] left out as in {exclusion.file}: " + "; ".join(
        f"{task}: " + ", ".join(f"{v} {k}" for k, v in c.items()) for task, c in counts.items()), flush=True)
    return data, gensim_licence, exclusion.record(counts)


def copy_deb_licences(got: dict, stage: Path, debs: dict[str, str], sources: dict) -> None:
    """Each package's copyright file into stage/LICENSES/, and its .deb as the origin of sources[key]."""
    for key, pkg in debs.items():
        copyright_file = got["root"] / "usr" / "share" / "doc" / pkg / "copyright"
        if not copyright_file.is_file():
            raise SourceError(f"{copyright_file}: missing from {got['debs'][key].name}")
        _atomic_write(stage / "LICENSES" / f"{pkg}.copyright", copyright_file.read_text("utf-8", "replace"))
        if key in sources:
            sources[key].update(origin=f"Debian package {unquote(got['debs'][key].name)}",
                                licence_file=f"LICENSES/{pkg}.copyright")


def _sources(got: dict, stage: Path, gensim_licence: bytes) -> dict:
    """SOURCES plus where each came from, with its copyright file copied under LICENSES/."""
    sources = json.loads(json.dumps(SOURCES))
    copy_deb_licences(got, stage, DEBS, sources)
    _atomic_write(stage / "LICENSES" / "gensim.COPYING", gensim_licence.decode("utf-8", "replace"))
    sources["lee"].update(origin=f"PyPI wheel {got['wheel'].name}", licence_file="LICENSES/gensim.COPYING")
    release = got["release"]
    sources["debian"].update(origin=f"{DEBIAN_SOURCE}: {got['packages'].name}, {got['translation'].name}"
                                    + (f" (Release {release.get('version', '?')}, {release.get('date', '?')})"
                                       if release else ""))
    return sources


@contextlib.contextmanager
def staged_dir(out: Path):
    """A folder beside out to write into; swapped into place when the block ends without error, removed
    otherwise, so a failed build never leaves a half-written folder behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    stage.chmod(0o755)
    try:
        yield stage
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(stage, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def build_suite(out_dir: str, work_dir: str | None = None, seed: int = 0, *, verbose: bool = True,
                exclude_from: str | Path = QUICKSTART_TRAIN) -> dict:
    """Download the sources (reusing what work_dir already holds), build every task under out_dir, write
    out_dir/suite.json and return it. out_dir is replaced as a whole, and only if it is a suite folder or empty.
    The lemmas and definitions of exclude_from (quickstart training lines) are kept out of the WordNet and GCIDE
    tasks; where that file is missing (an installed wheel), nothing is, and suite.json says "excluded": null."""
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "suite.json").is_file())):
        raise SourceError(f"{out}: exists and is not a suite folder (no suite.json); refusing to replace it")
    started = time.time()
    exclusion = read_exclusion(exclude_from)
    if exclusion is None:
        say(f"[suite] {exclude_from}: missing, so no training data is excluded", flush=True)
    with tempfile.TemporaryDirectory(prefix="embedtrain-suite-") as tmp:
        work = Path(work_dir).resolve() if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        got = fetch_sources(work, say)
        data, gensim_licence, excluded = _build_all(got, seed, say, exclusion)
        with staged_dir(out) as stage:
            entries = []
            for name, spec in TASKS.items():
                entries.append(write_task_files(stage, name, splits=data[name], **spec))
                sizes = "; ".join(f"{split}: " + ", ".join(f"{n} {part}" for part, n in parts.items())
                                  for split, parts in entries[-1]["splits"].items())
                say(f"[suite] {name} ({entries[-1]['type']}, {entries[-1]['main_score']}): {sizes}", flush=True)
            manifest = write_manifest(stage, entries, sources=_sources(got, stage, gensim_licence), seed=seed,
                                      built={"seconds": round(time.time() - started, 1),
                                             "by": "embedtrain.evaluation.suite_build"}, excluded=excluded)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m embedtrain.evaluation.suite_build",
                                 description="Build the offline MTEB-shaped evaluation suite from real text.")
    ap.add_argument("out_dir", help="suite folder to build (replaced if it already holds a suite)")
    ap.add_argument("--work-dir", help="keep the downloads here and reuse them next time (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and the train/test assignment of source items")
    args = ap.parse_args(argv)
    started = time.time()
    try:
        manifest = build_suite(args.out_dir, args.work_dir, args.seed)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[suite] {len(manifest['tasks'])} tasks written to {args.out_dir} in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
