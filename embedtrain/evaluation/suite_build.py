"""Build the offline evaluation suite: small MTEB-shaped tasks made from real text.

    python -m embedtrain.evaluation.suite_build OUT_DIR [--work-dir DIR] [--seed N]

Sources are fetched with ordinary clients and nothing is installed: Debian's package lists and three Debian
packages through apt-get with a private state folder (the machine's apt state is neither read nor changed) and
`dpkg -x`, and gensim's wheel through `pip download`. embedtrain.evaluation.suite_tasks loads the result into
mteb with no network.

Layout: OUT/suite.json (tasks, sizes, sources, licences, query instructions), OUT/<Task>/<split>/<part>.jsonl,
OUT/LICENSES/ (the copyright file shipped with each source). Tasks are sized so that a 135M-parameter model
encodes each on 2 CPU cores in about a minute (see N_QUERIES and the sizes next to it).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

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

DEBIAN_SOURCE = "deb http://deb.debian.org/debian bookworm main"
DEBS = {"wordnet": "wordnet-base", "gcide": "dict-gcide", "foldoc": "dict-foldoc"}
GENSIM = "gensim==4.4.0"  # pinned: the Lee files live in its test data, which a release could move
# Sizes: a 135M-parameter model embeds a few hundred tokens per second on 2 CPU cores, so each task stays near
# 10-25k tokens (instructions included), about a minute; documents are clipped to DOC_WORDS words.
N_QUERIES = 200
N_CORPUS = {"debian": 400, "foldoc": 400, "gcide": 1000}
DOC_WORDS = 30
DEBIAN_TRAIN_FRACTION = 0.3  # of Debian source packages; only these may feed a train split

SOURCES = {
    "debian": {"title": "Debian 12 (bookworm) main: package short and long descriptions (Packages, Translation-en)",
               "reference": "https://packages.debian.org/bookworm/", "license": "multiple",
               "licence": "Each description is part of its package and is distributed under that package's licence "
                          "(see /usr/share/doc/<package>/copyright in the package); the index files come from the "
                          "Debian archive."},
    "wordnet": {"title": "WordNet 3.0 (Debian package wordnet-base)", "reference": "https://wordnet.princeton.edu/",
                "license": "https://wordnet.princeton.edu/license-and-commercial-use",
                "licence": "WordNet 3.0 licence: WordNet 3.0 Copyright 2006 by Princeton University. All rights "
                           "reserved. Use, copy, modify and distribute for any purpose without fee, provided the "
                           "copyright notice and disclaimer appear on all copies (full text in LICENSES/)."},
    "gcide": {"title": "GCIDE 0.48, GNU Collaborative International Dictionary of English (Debian dict-gcide); "
                       "senses taken from Webster's Revised Unabridged Dictionary (1913)",
              "reference": "https://www.gnu.org/software/gcide/",
              "license": "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html",
              "licence": "GNU GPL version 2 or (at your option) any later version (full notice in LICENSES/)."},
    "foldoc": {"title": "FOLDOC, the Free On-line Dictionary of Computing, editor Denis Howe (Debian dict-foldoc)",
               "reference": "https://foldoc.org/", "license": "https://www.gnu.org/licenses/old-licenses/fdl-1.1.html",
               "licence": "Copyright 1993 by Denis Howe; GNU Free Documentation License 1.1 or later, no invariant "
                          "sections, no cover texts. Debian's Dictionary.debian additions: copyright Joey Hess and "
                          "Robert D. Hilliard, verbatim copies and derived works under identical terms."},
    "lee": {"title": "Lee document-similarity corpus: 50 news articles with averaged human pairwise similarity "
                     "ratings (lee.cor, similarities0-1.txt from gensim's test data)",
            "reference": "https://radimrehurek.com/gensim/", "license": "lgpl",
            "licence": "Shipped in gensim, which is distributed under the GNU LGPL 2.1 (License: LGPL-2.1-only; "
                       "COPYING in LICENSES/). The corpus and ratings are by Michael D. Lee and colleagues.",
            "bibtex": "@inproceedings{lee2005empirical,\n  title={An empirical evaluation of models of text document "
                      "similarity},\n  author={Lee, Michael D. and Pincombe, Brandon and Welsh, Matthew},\n  "
                      "booktitle={Proceedings of the 27th Annual Conference of the Cognitive Science Society},\n  "
                      "year={2005}\n}"},
}

# Static description of every task; the builders below produce the data.
TASKS = {
    "EmbedtrainDebianRetrieval": dict(
        kind="retrieval", source="debian", domains=["Programming", "Written"],
        instruction="Given the one-line summary of a Debian software package, retrieve the package's full "
                    "description",
        description="Debian package short description -> its long description (first 30 words), among 400 "
                    "(one package per source package, library and language-ecosystem sections left out)."),
    "EmbedtrainFoldocRetrieval": dict(
        kind="retrieval", source="foldoc", domains=["Engineering", "Written"],
        instruction="Given a computing term, retrieve its dictionary definition",
        description="FOLDOC headword -> its definition (first 30 words; category tag, dates, links and a leading "
                    "alias removed), among 400 definitions."),
    "EmbedtrainGcideRetrieval": dict(
        kind="retrieval", source="gcide", domains=["Written"],
        instruction="Given a dictionary definition, retrieve the word it defines",
        description="Reverse dictionary: a Webster 1913 definition (GCIDE, first sense) -> its headword, among 1000 "
                    "headwords that are also WordNet lemmas; definitions containing the word's stem are left out."),
    "EmbedtrainWordNetReranking": dict(
        kind="reranking", source="wordnet", domains=["Written"],
        instruction="Given a definition, find the word it defines among related words",
        description="WordNet 3.0 definition -> its lemma, reranking the lemmas of up to 8 co-hyponyms (synsets "
                    "sharing a hypernym) of noun and verb synsets; definitions naming their own lemma are left out."),
    "EmbedtrainLeeSTS": dict(
        kind="sts", source="lee", domains=["News", "Written"], annotations="human-annotated",
        instruction="Retrieve news articles that are semantically similar to the given news article",
        description="All 1225 pairs of the 50 Lee corpus news articles with their averaged human similarity "
                    "ratings (0-1); each article is encoded once."),
    "EmbedtrainDebianSectionClassification": dict(
        kind="classification", source="debian", domains=["Programming", "Written"], subtypes=["Topic classification"],
        instruction="Classify the Debian archive section of a software package from its description",
        description="Debian long description (first 30 words) -> archive section (10 sections, 24 train and 30 "
                    "test descriptions each); train and test come from disjoint source packages."),
    "EmbedtrainWordNetClustering": dict(
        kind="clustering", source="wordnet", domains=["Written"], subtypes=["Thematic clustering"],
        instruction="Identify the semantic category of a concept from its dictionary definition",
        description="WordNet 3.0 noun definitions clustered by lexicographer file (animal, artifact, body, ...: 10 "
                    "categories, 60 definitions each)."),
    "EmbedtrainFoldocClustering": dict(
        kind="clustering", source="foldoc", domains=["Engineering", "Written"], subtypes=["Thematic clustering"],
        instruction="Identify the topic category of a computing term from its dictionary definition",
        description="FOLDOC definitions (first 30 words) clustered by their first category tag (language, "
                    "networking, hardware, ...: 10 categories, 50 definitions each)."),
}


class SourceError(RuntimeError):
    """A source could not be fetched, or a file of it is missing or malformed; the message names the file."""


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
                   built: dict | None = None) -> dict:
    """Write OUT/suite.json (tasks, sources with licences, task -> query instruction) and return it."""
    manifest = {"format": FORMAT_VERSION, "seed": seed, "built": built or {},
                "tasks": {e["name"]: e for e in entries}, "sources": sources or {},
                "instructions": {e["name"]: e["instruction"] for e in entries}}
    _atomic_write(Path(out_dir, "suite.json"), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


# ---------------------------------------------------------------- fetching (reused from work_dir when present)

def _run(cmd: list[str], cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise SourceError(f"{cmd[0]} not found: building the suite needs apt-get and dpkg (Debian/Ubuntu) "
                          "and pip") from None
    if proc.returncode:
        raise SourceError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")


def _apt(work: Path, *args: str, cwd: Path | None = None) -> None:
    """apt-get on lists and a cache of its own under work/apt: no root, no change to the machine."""
    root = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(DEBIAN_SOURCE + "\n")
    opts = {"Dir::State::Lists": root / "lists", "Dir::Cache": root / "cache",
            "Dir::Etc::SourceList": root / "sources.list", "Dir::Etc::SourceParts": root / "parts",
            "Acquire::Languages": "en",  # long descriptions live in Translation-en, which Docker images switch off
            "Acquire::GzipIndexes": "false", "APT::Sandbox::User": "root"}
    _run(["apt-get", "-q", *(f"-o{k}={v}" for k, v in opts.items()), *args], cwd=cwd)


def _one(pattern: str, folder: Path, what: str) -> Path | None:
    hits = sorted(folder.glob(pattern))
    if len(hits) > 1:
        raise SourceError(f"{folder}: several {what} files ({', '.join(h.name for h in hits)}); remove the stale ones")
    return hits[0] if hits else None


def fetch_sources(work: Path, say=print) -> dict:
    """Download (or find under work) every source; return their local paths and versions."""
    lists = work / "apt" / "lists"
    packages = _one("*_main_binary-*_Packages", lists, "Packages") if lists.is_dir() else None
    translation = _one("*_main_i18n_Translation-en", lists, "Translation-en") if lists.is_dir() else None
    if packages is None or translation is None:
        say(f"[suite] apt-get update ({DEBIAN_SOURCE}, private lists under {work / 'apt'})", flush=True)
        _apt(work, "update")
        packages = _one("*_main_binary-*_Packages", lists, "Packages")
        translation = _one("*_main_i18n_Translation-en", lists, "Translation-en")
        if packages is None or translation is None:
            raise SourceError(f"{lists}: apt-get update left no Packages/Translation-en file")
    release = _one("*_InRelease", lists, "InRelease")
    out = {"packages": packages, "translation": translation, "debs": {},
           "release": _release_info(release) if release else {}}
    debs, root = work / "debs", work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    for key, pkg in DEBS.items():
        deb = _one(f"{pkg}_*.deb", debs, pkg)
        if deb is None:
            say(f"[suite] apt-get download {pkg}", flush=True)
            _apt(work, "download", pkg, cwd=debs)
            deb = _one(f"{pkg}_*.deb", debs, pkg)
            if deb is None:
                raise SourceError(f"{debs}: apt-get download {pkg} produced no .deb")
        _run(["dpkg", "-x", str(deb), str(root)])
        out["debs"][key] = deb
    wheel_dir = work / "wheel"
    wheel = _one("gensim-*.whl", wheel_dir, "gensim wheel") if wheel_dir.is_dir() else None
    if wheel is None:
        say(f"[suite] pip download {GENSIM} --no-deps", flush=True)
        _run([sys.executable, "-m", "pip", "download", GENSIM, "--no-deps", "--only-binary=:all:", "-q",
              "-d", str(wheel_dir)])
        wheel = _one("gensim-*.whl", wheel_dir, "gensim wheel")
        if wheel is None:
            raise SourceError(f"{wheel_dir}: pip download {GENSIM} produced no wheel")
    out["wheel"], out["root"] = wheel, root
    return out


def _release_info(path: Path) -> dict:
    """Origin, suite, version and date from an InRelease file (a signed header precedes the fields)."""
    fields = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Origin", "Suite", "Codename", "Version", "Date"):
            fields.setdefault(key.lower(), value.strip())
        if line.startswith(("MD5Sum:", "SHA256:")):  # the file list follows
            break
    return fields


# ---------------------------------------------------------------- reading sources

def _deb822(path: Path, keep: set[str]):
    """Stanzas of a Packages / Translation file, keeping only the fields in keep (continuations joined by \\n)."""
    stanza, key = {}, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                if stanza:
                    yield stanza
                stanza, key = {}, None
            elif line[0] in " \t":
                if key is None:
                    raise SourceError(f"{path}:{n}: continuation line outside a field")
                if key in stanza:
                    stanza[key] += "\n" + line
            else:
                key, sep, value = line.partition(":")
                if not sep:
                    raise SourceError(f"{path}:{n}: malformed line {line[:60]!r}")
                if key in keep:
                    stanza[key] = value.strip()
    if stanza:
        yield stanza


def _debian_long(body: str) -> str:
    """Long description in debian/control layout -> paragraphs separated by newlines."""
    paras, cur = [], []
    for line in body.split("\n"):
        line = line.strip()
        if line == ".":
            paras.append(" ".join(cur))
            cur = []
        elif line:
            cur.append(line)
    paras.append(" ".join(cur))
    return "\n".join(p for p in paras if p)


def read_debian(packages: Path, translation: Path) -> list[dict]:
    longs = {}
    for st in _deb822(translation, {"Package", "Description-md5", "Description-en"}):
        if "Description-en" in st:
            longs[(st.get("Package"), st.get("Description-md5"))] = st["Description-en"]
    if not longs:
        raise SourceError(f"{translation}: no Description-en fields")
    out = []
    for st in _deb822(packages, {"Package", "Source", "Section", "Description", "Description-md5"}):
        if "Package" not in st:
            raise SourceError(f"{packages}: a stanza without a Package field")
        full = longs.get((st["Package"], st.get("Description-md5"))) or st.get("Description", "")
        short, _, body = full.partition("\n")
        out.append({"package": st["Package"], "source": (st.get("Source") or st["Package"]).split()[0],
                    "section": st.get("Section", "").rsplit("/", 1)[-1], "short": short.strip(),
                    "long": _debian_long(body)})
    if sum(bool(p["long"]) for p in out) < len(out) // 2:
        raise SourceError(f"{translation}: long descriptions found for under half of the packages in {packages}")
    return out


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def read_dictd(folder: Path, name: str) -> list[tuple[list[str], str]]:
    """(headwords, text) per distinct entry of a dictd database: NAME.index (word, base64 offset and length
    into the uncompressed data) and NAME.dict.dz (dictzip, which gzip reads)."""
    index, data_path = folder / f"{name}.index", folder / f"{name}.dict.dz"
    for p in (index, data_path):
        if not p.is_file():
            raise SourceError(f"{p}: missing (was the dict-{name} package unpacked?)")
    try:
        data = gzip.open(data_path).read()
    except (OSError, EOFError) as exc:
        raise SourceError(f"{data_path}: not a readable dictzip file ({exc})") from None
    entries: dict[tuple[int, int], list[str]] = {}
    with open(index, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            try:
                off, length = (sum(_B64[c] * 64 ** i for i, c in enumerate(reversed(v))) for v in parts[1:3])
            except (KeyError, ValueError):
                raise SourceError(f"{index}:{n}: expected word<TAB>offset<TAB>length in dictd base64") from None
            if off + length > len(data):
                raise SourceError(f"{index}:{n}: entry runs past the end of {data_path.name}")
            entries.setdefault((off, length), []).append(parts[0])
    return [(words, data[off:off + size].decode("utf-8", "replace")) for (off, size), words in entries.items()]


def read_wordnet(folder: Path) -> dict[tuple[str, str], dict]:
    """(pos, offset) -> {"lex", "words", "hyper", "definition"} for nouns, verbs and adjectives.

    The key holds the part of speech because offsets are byte positions in separate files and collide."""
    synsets = {}
    for pos, fname in (("n", "data.noun"), ("v", "data.verb"), ("a", "data.adj")):
        path = folder / fname
        if not path.is_file():
            raise SourceError(f"{path}: missing (was wordnet-base unpacked?)")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.startswith("  "):  # the licence header
                    continue
                try:
                    head, gloss = line.split(" | ", 1)
                    tok = head.split()
                    w_cnt = int(tok[3], 16)  # the word count is hex, the pointer count decimal
                    words = [re.sub(r"\(\w+\)$", "", tok[4 + 2 * i]).replace("_", " ") for i in range(w_cnt)]
                    at = 4 + 2 * w_cnt
                    ptrs = [tok[at + 1 + 4 * j: at + 4 + 4 * j] for j in range(int(tok[at]))]
                except (ValueError, IndexError):
                    raise SourceError(f"{path}:{n}: malformed synset line") from None
                # instance hypernyms count too: else named entities would have no siblings
                hyper = [(p, off) for sym, off, p in ptrs if sym in ("@", "@i")]
                # examples follow the definition as '; "..."'
                cut = re.search(r'[;:]\s*"', gloss)
                definition = (gloss[:cut.start()] if cut else gloss).strip().rstrip(";:, ")
                synsets[(pos, tok[0])] = {"lex": int(tok[1]), "words": words, "hyper": hyper,
                                          "definition": definition}
    return synsets


def read_lee(wheel: Path) -> tuple[list[str], list[list[float]], bytes]:
    """The 50 Lee articles, their 50x50 upper-triangular human similarity matrix, and gensim's COPYING."""
    base = "gensim/test/test_data/"
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            for member in (base + "lee.cor", base + "similarities0-1.txt"):
                if member not in names:
                    raise SourceError(f"{wheel}: no {member} (gensim moved its test data? pin another version)")
            docs = [d.strip() for d in z.read(base + "lee.cor").decode("latin-1").splitlines() if d.strip()]
            rows = [[float(x) for x in line.split()] for line in
                    z.read(base + "similarities0-1.txt").decode("ascii").splitlines() if line.strip()]
            licence = next((z.read(n) for n in sorted(names) if re.search(r"dist-info/(licenses/)?COPYING$", n)), b"")
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{wheel}: unreadable Lee corpus ({exc})") from None
    if len(docs) != 50 or len(rows) != 50 or any(len(r) != 50 for r in rows):
        raise SourceError(f"{wheel}: expected 50 Lee articles and a 50x50 matrix, got {len(docs)} and {len(rows)} rows")
    return docs, rows, licence


# ---------------------------------------------------------------- building tasks

# Library, debug and language-ecosystem sections hold templated descriptions ("This package contains the
# development files..."), which make short -> long retrieval ambiguous and sections trivially guessable.
DEBIAN_SKIP = {"libs", "libdevel", "oldlibs", "debug", "doc", "introspection", "metapackages", "tasks", "localization",
               "kernel", "fonts", "rust", "golang", "haskell", "perl", "python", "javascript", "ruby", "php", "ocaml",
               "java", "gnu-r", "lisp", "cli-mono", "zope"}
DEBIAN_CLASSES = ("admin", "database", "editors", "games", "graphics", "hamradio", "mail", "math", "science",
                  "sound")
FOLDOC_CLUSTERS = ("language", "networking", "programming", "operating system", "hardware", "company",
                   "mathematics", "database", "graphics", "person")
WORDNET_CLUSTERS = {5: "animal", 6: "artifact", 8: "body", 10: "communication", 12: "feeling", 13: "food",
                    15: "location", 18: "person", 20: "plant", 27: "substance"}  # lexicographer file numbers
GCIDE_REDIRECT = re.compile(r"(see|same as|alt\.|obs\.|imp\.|p\. ?p\.|pl\.|var\.|syn\.)(\s|$)", re.I)


def _frac(seed: int, key: str) -> float:
    """A fixed pseudo-random number in [0, 1) per item: its train/test side never depends on what else is built."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16 ** 12


def _clip(text: str, n_words: int) -> str:
    words = text.split()
    if len(words) <= n_words:
        return text
    cut = " ".join(words[:n_words])
    end = cut.rfind(". ")
    return cut[:end + 1] if end > len(cut) // 2 else cut + " ..."


def _retrieval(pairs: list[tuple[str, str, str]], rng: random.Random, n_corpus: int) -> dict:
    """(id, query, document) items -> a corpus of n_corpus documents, the first N_QUERIES of them queried."""
    if len(pairs) < n_corpus:
        raise SourceError(f"only {len(pairs)} usable items for a {n_corpus}-document corpus: did the source change?")
    picked = rng.sample(pairs, n_corpus)
    queries = picked[:N_QUERIES]
    return {"test": {"corpus": [{"id": f"d-{i}", "text": doc} for i, _, doc in sorted(picked)],
                     "queries": [{"id": f"q-{i}", "text": q} for i, q, _ in queries],
                     "qrels": [{"query-id": f"q-{i}", "corpus-id": f"d-{i}", "score": 1} for i, _, _ in queries]}}


def build_debian(pkgs: list[dict], seed: int) -> dict:
    by_source = defaultdict(list)
    for p in pkgs:
        if p["section"] not in DEBIAN_SKIP and p["short"] and 20 <= len(p["long"].split()) <= 250:
            by_source[p["source"]].append(p)
    items, seen = [], set()
    for source in sorted(by_source):
        # the binary named after its source usually carries the main description
        p = max(by_source[source], key=lambda p: (p["package"] == source, len(p["long"]), p["package"]))
        sigs = {("s", p["short"].lower()), ("l", p["long"][:200].lower())}
        if sigs & seen:  # descriptions shared between sources would make a query ambiguous
            continue
        seen |= sigs
        items.append(p)
    train = [p for p in items if _frac(seed, "debian:" + p["source"]) < DEBIAN_TRAIN_FRACTION]
    test = [p for p in items if _frac(seed, "debian:" + p["source"]) >= DEBIAN_TRAIN_FRACTION]
    rng = random.Random(f"{seed}/EmbedtrainDebianRetrieval")
    retrieval = _retrieval([(p["package"], p["short"], _clip(p["long"], DOC_WORDS)) for p in test], rng,
                           N_CORPUS["debian"])
    rng = random.Random(f"{seed}/EmbedtrainDebianSectionClassification")

    def per_section(pool, n):
        rows = []
        for section in DEBIAN_CLASSES:
            cands = [p for p in pool if p["section"] == section]
            rows += [{"text": _clip(p["long"], DOC_WORDS), "label": section, "key": p["source"]}
                     for p in rng.sample(cands, min(n, len(cands)))]
        return rows

    classification = {"train": {"examples": per_section(train, 24)}, "test": {"examples": per_section(test, 30)}}
    return {"EmbedtrainDebianRetrieval": retrieval, "EmbedtrainDebianSectionClassification": classification}


def _foldoc_entry(text: str) -> tuple[str, list[str], str]:
    """FOLDOC entry -> (title, category tags, definition without tags, dates, links and citations)."""
    head, _, body = text.strip("\n").partition("\n\n")
    m = re.match(r"\s*<([^>]*)>", body)
    tags = [t.strip() for t in m.group(1).split(",")] if m else []
    paras = []
    for para in re.split(r"\n\s*\n", body[m.end():] if m else body):
        para = re.sub(r"\(?\b(https?|ftp|gopher|telnet|news|mailto):[^\s)}]*\)?", "", para)
        para = " ".join(para.replace("{", "").replace("}", "").replace("()", "").split())
        para = re.sub(r"([.;:,])(\s+\.)+", r"\1", para)  # what a removed link leaves: "dialled. ."
        # "[...]" paragraphs are citations or editor's notes; "(1994-12-01)" is the date of the last edit
        if para.startswith("[") or re.fullmatch(r"\(\d{4}-\d\d-\d\d\)", para) or not re.search(r"[A-Za-z]{2}", para):
            continue
        paras.append(para)
    # a leading "(DNIS)" or '(Or "whole number")' restates the term itself
    body = re.sub(r"^\((Or |Also )?[^()]{1,60}\)\s*", "", " ".join(paras))
    return head.split("\n")[0].strip(), tags, body


def build_foldoc(entries: list[tuple[list[str], str]], seed: int) -> dict:
    rows, seen = [], set()
    for words, text in entries:
        if any(w.startswith("00-database") or w.startswith("00database") for w in words):
            continue
        title, tags, body = _foldoc_entry(text)
        if title and title.lower() not in seen and len(body.split()) >= 12:
            seen.add(title.lower())
            rows.append((len(rows), title, tags, _clip(body, DOC_WORDS)))
    retrieval = _retrieval([(i, title, body) for i, title, _, body in rows],
                           random.Random(f"{seed}/EmbedtrainFoldocRetrieval"), N_CORPUS["foldoc"])
    rng = random.Random(f"{seed}/EmbedtrainFoldocClustering")
    examples = []
    for cat in FOLDOC_CLUSTERS:
        cands = [body for _, _, tags, body in rows if tags and tags[0] == cat]
        examples += [{"text": body, "label": cat} for body in rng.sample(cands, min(50, len(cands)))]
    return {"EmbedtrainFoldocRetrieval": retrieval, "EmbedtrainFoldocClustering": {"test": {"examples": examples}}}


def _gcide_sense(word: str, text: str) -> str | None:
    """First Webster 1913 sense of an entry whose headword is word, or None."""
    lines = text.strip("\n").split("\n")
    head = re.match(r"([^\\]+?)\s*\\", lines[0])
    if not head or head.group(1).strip().lower() != word.lower():
        return None  # the index points inflections and run-in phrases at another headword's entry
    # The header (pronunciation, part of speech, [etymology]) can run over several lines; the sense starts on
    # the first line outside brackets that begins like a definition.
    depth, start = lines[0].count("[") - lines[0].count("]"), None
    for i, line in enumerate(lines[1:], 1):
        s = line.strip()
        if not s:
            break
        if depth <= 0 and re.match(r"\d+\.\s|\([a-z]\)\s|[A-Z(]", s):
            start = i
            break
        depth += s.count("[") - s.count("]")
    if start is None:
        return None
    para = " ".join(line.strip() for line in lines[start:next(
        (j for j in range(start, len(lines)) if not lines[j].strip()), len(lines))])
    if "[1913 Webster]" not in para:
        return None  # senses GCIDE took from WordNet would repeat the WordNet tasks
    sense = re.sub(r"^(\d+\.|\([a-z]\))\s*", "", para.split("[1913 Webster]")[0])
    sense = re.sub(r"\s--.*$", "", sense)  # quotation authors and run-in derived words
    sense = re.sub(r"\[[^\]]*\]", "", sense).replace("{", "").replace("}", "")
    return " ".join(sense.split()).strip(" ;,")


def build_gcide(entries: list[tuple[list[str], str]], lemmas: set[str], seed: int) -> dict:
    rows, seen = [], set()
    for words, text in entries:
        for word in words:
            w = word.lower()
            # WordNet lemmas only: keeps the vocabulary to words still in use
            if w in seen or not re.fullmatch(r"[a-z]{4,}", w) or w not in lemmas:
                continue
            sense = _gcide_sense(word, text)
            if not sense or not 5 <= len(sense.split()) <= 60 or GCIDE_REDIRECT.match(sense):
                continue
            stem = w[:max(4, min(6, len(w) - 2))]
            if any(t.startswith(stem) for t in re.findall(r"[a-z]+", sense.lower())):
                continue  # a definition naming its own word is a string match, not a semantic one
            seen.add(w)
            rows.append((w, sense, w))
    return {"EmbedtrainGcideRetrieval": _retrieval(rows, random.Random(f"{seed}/EmbedtrainGcideRetrieval"),
                                                   N_CORPUS["gcide"])}


def build_wordnet(syn: dict, seed: int) -> dict:
    children = defaultdict(list)
    for key, s in syn.items():
        if key[0] in "nv":
            for h in s["hyper"]:
                children[h].append(key)
    rng = random.Random(f"{seed}/EmbedtrainWordNetReranking")
    hypernyms = sorted(children)
    rng.shuffle(hypernyms)
    sid = "{0[0]}{0[1]}".format
    used, corpus, queries, qrels, ranked = set(), {}, [], [], []
    for h in hypernyms:
        if len(queries) >= N_QUERIES:
            break
        by_lemma = {}  # one candidate per distinct name: siblings named alike cannot be told apart
        for k in sorted(children[h]):
            if k not in used:
                by_lemma.setdefault(syn[k]["words"][0].lower(), k)
        if len(by_lemma) < 6:
            continue
        cands = rng.sample(sorted(by_lemma.values()), min(8, len(by_lemma)))
        for target in rng.sample(cands, 2):
            if len(queries) >= N_QUERIES:
                break
            own = {w.lower() for w in syn[target]["words"]}
            definition = syn[target]["definition"]
            # a word of the target's names in its definition gives the answer away, unless every candidate
            # shares it ("cross" for the kinds of cross)
            shared = set.intersection(*(set(syn[c]["words"][0].lower().split()) for c in cands))
            giveaway = {t for w in own for t in w.split() if len(t) > 3} - shared
            if len(definition.split()) < 3 or giveaway & set(re.findall(r"[\w'-]+", definition.lower())):
                continue
            # a sibling whose name is also a synonym of the target would be a right answer scored wrong
            ids = [sid(c) for c in cands if c == target or syn[c]["words"][0].lower() not in own]
            queries.append({"id": "q" + sid(target), "text": definition})
            qrels.append({"query-id": "q" + sid(target), "corpus-id": sid(target), "score": 1})
            ranked.append({"query-id": "q" + sid(target), "corpus-ids": ids})
            corpus.update((i, None) for i in ids)
        used.update(cands)
    by_id = {sid(k): s["words"][0] for k, s in syn.items()}
    rerank = {"test": {"corpus": [{"id": i, "text": by_id[i]} for i in sorted(corpus)], "queries": queries,
                       "qrels": qrels, "top_ranked": ranked}}
    rng = random.Random(f"{seed}/EmbedtrainWordNetClustering")
    examples = []
    for lex, label in WORDNET_CLUSTERS.items():
        cands = sorted(k for k, s in syn.items()
                       if k[0] == "n" and s["lex"] == lex and len(s["definition"].split()) >= 4)
        examples += [{"text": syn[k]["definition"], "label": label} for k in rng.sample(cands, 60)]
    return {"EmbedtrainWordNetReranking": rerank, "EmbedtrainWordNetClustering": {"test": {"examples": examples}}}


def build_lee(docs: list[str], rows: list[list[float]], seed: int) -> dict:
    """Every pair of articles with its rating (upper triangle of the matrix); seed unused, nothing is sampled."""
    return {"EmbedtrainLeeSTS": {"test": {"pairs": [
        {"sentence1": docs[i], "sentence2": docs[j], "score": round(rows[i][j], 6)}
        for i in range(len(docs)) for j in range(i + 1, len(docs))]}}}


# ---------------------------------------------------------------- the whole suite

def _build_all(got: dict, seed: int, say) -> tuple[dict, bytes]:
    share = got["root"] / "usr" / "share"
    say("[suite] reading Debian descriptions, WordNet, FOLDOC, GCIDE and the Lee corpus", flush=True)
    wordnet = read_wordnet(share / "wordnet")
    lemmas = {w.lower() for s in wordnet.values() for w in s["words"]}
    docs, rows, gensim_licence = read_lee(got["wheel"])
    data = {}
    data.update(build_debian(read_debian(got["packages"], got["translation"]), seed))
    data.update(build_foldoc(read_dictd(share / "dictd", "foldoc"), seed))
    data.update(build_gcide(read_dictd(share / "dictd", "gcide"), lemmas, seed))
    data.update(build_wordnet(wordnet, seed))
    data.update(build_lee(docs, rows, seed))
    return data, gensim_licence


def _sources(got: dict, stage: Path, gensim_licence: bytes) -> dict:
    """SOURCES plus where each came from, with its copyright file copied under LICENSES/."""
    from urllib.parse import unquote

    sources = json.loads(json.dumps(SOURCES))
    for key, pkg in DEBS.items():
        copyright_file = got["root"] / "usr" / "share" / "doc" / pkg / "copyright"
        if not copyright_file.is_file():
            raise SourceError(f"{copyright_file}: missing from {got['debs'][key].name}")
        _atomic_write(stage / "LICENSES" / f"{pkg}.copyright", copyright_file.read_text("utf-8", "replace"))
        sources[key].update(origin=f"Debian package {unquote(got['debs'][key].name)}",
                            licence_file=f"LICENSES/{pkg}.copyright")
    _atomic_write(stage / "LICENSES" / "gensim.COPYING", gensim_licence.decode("utf-8", "replace"))
    sources["lee"].update(origin=f"PyPI wheel {got['wheel'].name}", licence_file="LICENSES/gensim.COPYING")
    release = got["release"]
    sources["debian"].update(origin=f"{DEBIAN_SOURCE}: {got['packages'].name}, {got['translation'].name}"
                                    + (f" (Release {release.get('version', '?')}, {release.get('date', '?')})"
                                       if release else ""))
    return sources


def _replace_dir(stage: Path, out: Path) -> None:
    """Swap the finished suite into place, so a failed build never leaves a half-written one behind."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "suite")
    os.replace(stage, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_suite(out_dir: str, work_dir: str | None = None, seed: int = 0, *, verbose: bool = True) -> dict:
    """Download the sources (reusing what work_dir already holds), build every task under out_dir, write
    out_dir/suite.json and return it. out_dir is replaced as a whole, and only if it is a suite folder or empty."""
    say = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "suite.json").is_file())):
        raise SourceError(f"{out}: exists and is not a suite folder (no suite.json); refusing to replace it")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="embedtrain-suite-") as tmp:
        work = Path(work_dir).resolve() if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        got = fetch_sources(work, say)
        data, gensim_licence = _build_all(got, seed, say)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
        stage.chmod(0o755)
        try:
            entries = []
            for name, spec in TASKS.items():
                entries.append(write_task_files(stage, name, splits=data[name], **spec))
                sizes = "; ".join(f"{split}: " + ", ".join(f"{n} {part}" for part, n in parts.items())
                                  for split, parts in entries[-1]["splits"].items())
                say(f"[suite] {name} ({entries[-1]['type']}, {entries[-1]['main_score']}): {sizes}", flush=True)
            manifest = write_manifest(stage, entries, sources=_sources(got, stage, gensim_licence), seed=seed,
                                      built={"seconds": round(time.time() - started, 1),
                                             "by": "embedtrain.evaluation.suite_build"})
            _replace_dir(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
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
