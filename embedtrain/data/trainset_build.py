"""Build a training set of (query, positive[, negatives]) pairs from real text, disjoint from the offline suite.

    embedtrain build-train-set OUT_DIR [--work DIR] [--seed N] [--suite DIR]

Sources are fetched as the suite fetches its own (embedtrain.data.trainset_sources): Debian's package lists,
WordNet, GCIDE, FOLDOC, the Python 3.11 and Perl 5.36 documentation, the Debian FAQ and the Devil's Dictionary.
Every source item the suite's test splits use (rebuilt in memory with the same seed, plus the files of --suite)
is held out (embedtrain.data.trainset_holdout), and the result is checked again before anything is written.

Layout: OUT/train.jsonl (one pair per line, data.train reads it as is; each line names its task and instruction),
OUT/manifest.json (tasks, counts, sources with package versions and licences, what was held out), OUT/LICENSES/
(each package's copyright file). OUT is replaced as a whole, from a folder finished beside it.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from embedtrain.data import trainset_tasks as T
from embedtrain.data.jsonl import parse_example
from embedtrain.data.trainset_docs import devil_entry, read_debian_faq, read_sphinx_page
from embedtrain.data.trainset_holdout import LeakError, apply_holdout, check_disjoint, read_suite_tests, \
    suite_holdout
from embedtrain.data.trainset_sources import TRAIN_DEBS, fetch_train_sources, pod_items, pod_sections, read_pod, \
    source_path
from embedtrain.evaluation.suite_build import SOURCES as SUITE_SOURCES, _atomic_write, copy_deb_licences, staged_dir
from embedtrain.evaluation.suite_sources import DEBIAN_SOURCE, DEBS, SourceError, read_debian, read_dictd, \
    read_wordnet

FORMAT_VERSION = 1
BY = "embedtrain.data.trainset_build"
# Python pages that are release notes, indexes or boilerplate rather than documentation
PY_SKIP = ("whatsnew/", "genindex", "search.html", "py-modindex", "contents.html", "download.html", "bugs.html",
           "about.html", "copyright.html", "license.html", "_")
SOURCES = {
    "python-doc": {"title": "Python 3.11 documentation (Debian python3.11-doc, HTML)",
                   "reference": "https://docs.python.org/3.11/", "license": "PSF-2.0",
                   "licence": "Python Software Foundation License Version 2; code examples under the Zero-Clause "
                              "BSD licence (full text in LICENSES/)."},
    "perl-doc": {"title": "Perl 5.36 core documentation, pod (Debian perl-doc)",
                 "reference": "https://perldoc.perl.org/",
                 "license": "GPL-1.0-or-later OR Artistic-1.0-Perl",
                 "licence": "Same terms as Perl itself: GNU GPL version 1 or later, or the Artistic License "
                            "(full text in LICENSES/)."},
    "debian-faq": {"title": "The Debian GNU/Linux FAQ (Debian debian-faq, text rendering)",
                   "reference": "https://www.debian.org/doc/manuals/debian-faq/", "license": "verbatim-modified",
                   "licence": "Copyright Software in the Public Interest; verbatim and modified copies permitted "
                              "with the notice preserved (full text in LICENSES/)."},
    "devil": {"title": "The Devil's Dictionary by Ambrose Bierce (1911; Debian dict-devil)",
              "reference": "https://www.gutenberg.org/ebooks/972", "license": "public-domain",
              "licence": "Public domain, copyright expired (Debian's notice in LICENSES/)."},
}


def _progress(items, desc: str, verbose: bool):
    return tqdm(items, desc=f"[trainset] {desc}", unit="file", disable=not verbose, leave=False, mininterval=2)


def read_python_pages(html_dir: Path, verbose: bool = False) -> list:
    pages = [p for p in sorted(html_dir.rglob("*.html"))
             if not p.relative_to(html_dir).as_posix().startswith(PY_SKIP)]
    if not pages:
        raise SourceError(f"{html_dir}: no HTML pages (python3.11-doc)")
    return [(p.relative_to(html_dir).as_posix(), read_sphinx_page(p.read_text(encoding="utf-8", errors="replace")))
            for p in _progress(pages, "python3.11-doc pages", verbose)]


def read_perl_pods(pod_dir: Path, verbose: bool = False) -> list:
    """(page, sections, items) per core pod, release notes (perl*delta) left out: they list changes, not usage."""
    pods = [p for p in sorted(pod_dir.glob("*.pod")) if not p.stem.endswith("delta")]
    if not pods:
        raise SourceError(f"{pod_dir}: no .pod files (perl-doc)")
    out = []
    for p in _progress(pods, "perl-doc pods", verbose):
        blocks = read_pod(p.read_text(encoding="utf-8", errors="replace"))
        out.append((p.stem, pod_sections(blocks), pod_items(blocks)))
    return out


def candidate_rows(got: dict, pkgs: list[dict], seed: int, verbose: bool = False) -> list[dict]:
    """Every task's rows before holding out, deduplicating and capping."""
    share = got["root"] / "usr" / "share"
    wordnet = read_wordnet(share / "wordnet")
    lemmas = {w.lower() for s in wordnet.values() for w in s["words"]}
    faq_file = source_path(got["root"], "debian-faq")
    try:
        faq = read_debian_faq(gzip.open(faq_file, "rt", encoding="utf-8").read())
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise SourceError(f"{faq_file}: unreadable ({exc})") from None
    if len(faq) < 50:
        raise SourceError(f"{faq_file}: found {len(faq)} questions, expected over 50: did the layout change?")
    devil = [devil_entry(text) for _, text in read_dictd(source_path(got["root"], "devil"), "devil")]
    return (T.debian_rows(pkgs) + T.foldoc_rows(read_dictd(share / "dictd", "foldoc"))
            + T.gcide_rows(read_dictd(share / "dictd", "gcide"), lemmas) + T.wordnet_rows(wordnet, seed)
            + T.python_rows(read_python_pages(source_path(got["root"], "python-doc"), verbose))
            + T.perl_rows(read_perl_pods(source_path(got["root"], "perl-doc"), verbose))
            + T.faq_rows(faq) + T.devil_rows(devil))


def _sources(got: dict, stage: Path) -> dict:
    """Each source with the package it came from and its copyright file copied under LICENSES/."""
    sources = {k: dict(v) for k, v in {**SUITE_SOURCES, **SOURCES}.items() if k in {s for s, _ in T.TASKS.values()}}
    copy_deb_licences(got, stage, {**DEBS, **TRAIN_DEBS}, sources)
    release = got["release"]
    sources["debian"]["origin"] = (f"{DEBIAN_SOURCE}: {got['packages'].name}, {got['translation'].name}"
                                   + (f" (Release {release.get('version', '?')}, {release.get('date', '?')})"
                                      if release else ""))
    return sources


def write_lines(rows: list[dict]) -> str:
    """The JSONL text, every line checked with the parser data.train uses."""
    lines = []
    for n, r in enumerate(rows, 1):
        line = json.dumps({k: r[k] for k in ("query", "positive", "negative", "task", "instruction") if r.get(k)},
                          ensure_ascii=False)
        parse_example(line, f"train.jsonl:{n}", "train")
        lines.append(line + "\n")
    return "".join(lines)


def split_heldout(rows: list[dict], per_task: int) -> tuple[list[dict], list[dict]]:
    """The first per_task rows of each task (at most a tenth of it) as held-out pairs for eval.retrieval
    (rows are shuffled already); the rest for training."""
    sizes = {}
    for r in rows:
        sizes[r["task"]] = sizes.get(r["task"], 0) + 1
    quota = {t: min(per_task, n // 10) for t, n in sizes.items()}
    train, held = [], []
    for r in rows:
        if quota[r["task"]] > 0:
            quota[r["task"]] -= 1
            held.append(r)
        else:
            train.append(r)
    return train, held


def build_train_set(out_dir: str, work_dir: str | None = None, seed: int = 0, suite_dir: str | None = None,
                    verbose: bool = True, heldout_per_task: int = 25) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise SourceError(f"{out}: exists and is not a training-set folder (no manifest.json); refusing to replace it")
    started = time.time()
    suite_seed = read_suite_tests(suite_dir)[1] if suite_dir else seed
    with tempfile.TemporaryDirectory(prefix="embedtrain-trainset-") as tmp:
        work = Path(work_dir).resolve() if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        got = fetch_train_sources(work, say)
        pkgs = read_debian(got["packages"], got["translation"])
        holdout = suite_holdout(got, pkgs, suite_seed, suite_dir, say)
        say(f"[trainset] holding out {len(holdout.items)} suite test items: " +
            ", ".join(f"{n} {k}" for k, n in holdout.counts().items()), flush=True)
        say("[trainset] reading Debian, WordNet, GCIDE, FOLDOC, Python and Perl docs, the FAQ and Bierce", flush=True)
        candidates = candidate_rows(got, pkgs, seed, verbose)
        kept, held = apply_holdout(candidates, holdout)
        rows, dropped = T.finish(kept, seed)
        checked = check_disjoint(rows, holdout)  # the guarantee, verified on exactly what is written
        random.Random(f"{seed}/order").shuffle(rows)
        rows, heldout = split_heldout(rows, heldout_per_task)
        counts = {t: sum(r["task"] == t for r in rows) for t in T.TASKS}
        for task, n in counts.items():
            say(f"[trainset] {task}: {n} pairs ({held.get(task, 0)} held out, "
                f"{dropped.get(task, {}).get('duplicates', 0)} duplicates, "
                f"{dropped.get(task, {}).get('capped', 0)} over the cap)", flush=True)
        text = write_lines(rows)
        with staged_dir(out) as stage:
            _atomic_write(stage / "train.jsonl", text)
            _atomic_write(stage / "heldout.jsonl", write_lines(heldout))
            manifest = {
                "format": FORMAT_VERSION, "seed": seed, "files": ["train.jsonl"], "total": len(rows),
                "heldout": {"file": "heldout.jsonl", "per_task": heldout_per_task, "total": len(heldout)},
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "built": {"seconds": round(time.time() - started, 1), "by": BY},
                "tasks": {t: {"pairs": counts[t], "heldout_pairs": sum(r["task"] == t for r in heldout),
                              "source": T.TASKS[t][0], "instruction": T.TASKS[t][1],
                              "held_out": held.get(t, 0), **dropped.get(t, {"duplicates": 0, "capped": 0})}
                          for t in T.TASKS},
                "holdout": {"suite_seed": suite_seed, "suite_dir": str(suite_dir) if suite_dir else None,
                            "items": holdout.counts(), "rows_checked": checked, "leaks": 0},
                "limits": {"positive_words": T.POSITIVE_WORDS, "query_words": T.QUERY_WORDS, "max_rows": T.MAX_ROWS},
                "sources": _sources(got, stage)}
            _atomic_write(stage / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="embedtrain build-train-set",
                                 description="Build a training set of pairs from real text, disjoint from the "
                                             "offline evaluation suite.")
    ap.add_argument("out_dir", help="folder to write (replaced if it already holds a training set)")
    ap.add_argument("--work", "--work-dir", dest="work", help="keep the downloads here and reuse them "
                                                              "(default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0, help="sampling; also the suite seed held out when no --suite")
    ap.add_argument("--heldout", type=int, default=25, help="pairs per task (at most a tenth of it) kept out of "
                                                             "train.jsonl for eval.retrieval, in heldout.jsonl")
    ap.add_argument("--suite", default=None, help="a built suite folder: its test files are held out too, and its "
                                                  "seed replaces --seed for rebuilding its test splits")
    args = ap.parse_args(argv)
    try:
        manifest = build_train_set(args.out_dir, args.work, args.seed, args.suite, heldout_per_task=args.heldout)
    except (SourceError, LeakError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[trainset] {manifest['total']} pairs in {len(manifest['tasks'])} tasks written to "
          f"{args.out_dir}/train.jsonl in {manifest['built']['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
