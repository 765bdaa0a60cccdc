"""Fetching and reading the suite's sources: Debian's package lists and three Debian packages (WordNet, GCIDE,
FOLDOC) through apt-get with a private state folder and `dpkg -x`, and gensim's wheel (the Lee corpus) through
`pip download`. Everything fetched is reused from the work folder when present.
"""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
import zipfile
from pathlib import Path

DEBIAN_SOURCE = "deb http://deb.debian.org/debian bookworm main"
DEBS = {"wordnet": "wordnet-base", "gcide": "dict-gcide", "foldoc": "dict-foldoc"}
GENSIM = "gensim==4.4.0"  # pinned: the Lee files live in its test data, which a release could move


class SourceError(RuntimeError):
    """A source could not be fetched, or a file of it is missing or malformed; the message names the file."""



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


def fetch_deb(work: Path, pkg: str, root: Path, say=print, tag: str = "suite") -> Path:
    """work/debs/<pkg>_*.deb (downloaded unless there), unpacked into root with `dpkg -x`."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _one(f"{pkg}_*.deb", debs, pkg)
    if deb is None:
        say(f"[{tag}] apt-get download {pkg}", flush=True)
        _apt(work, "download", pkg, cwd=debs)
        deb = _one(f"{pkg}_*.deb", debs, pkg)
        if deb is None:
            raise SourceError(f"{debs}: apt-get download {pkg} produced no .deb")
    _run(["dpkg", "-x", str(deb), str(root)])
    return deb


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
        out["debs"][key] = fetch_deb(work, pkg, root, say)
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

