"""Fetching the training set's sources, and reading Perl's pod documentation.

fetch_train_sources is the suite's fetcher (embedtrain.evaluation.suite_sources: Debian's package lists, WordNet,
GCIDE, FOLDOC, gensim's wheel) plus TRAIN_DEBS, fetched the same way: apt-get with a private state folder under
the work folder, then `dpkg -x` into work/root. The pod parser returns plain text (formatting codes resolved,
verbatim code left out); embedtrain.data.trainset_docs parses the other documentation formats.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

from embedtrain.evaluation.suite_sources import DEBS, SourceError, fetch_deb, fetch_sources

# Debian packages read only by the training set (all in bookworm main).
TRAIN_DEBS = {"python-doc": "python3.11-doc", "perl-doc": "perl-doc", "debian-faq": "debian-faq",
              "devil": "dict-devil"}
# Reserved for independent evaluation: never fetched nor read by anything that feeds training.
RESERVED_DEBS = ("manpages", "manpages-dev", "fortunes", "dict-vera", "dict-jargon")
# where each package's text lies once unpacked (relative to work/root/usr/share)
PATHS = {"python-doc": "doc/python3.11/html", "perl-doc": "perl/5.36.0/pod",
         "debian-faq": "doc/debian/FAQ/debian-faq.txt.gz", "devil": "dictd"}


def refuse_reserved(pkg: str) -> None:
    """Raise if pkg is (or is a variant of) a package kept for independent evaluation."""
    if pkg == "manpages" or pkg.startswith(("manpages-", "fortune", "dict-vera", "dict-jargon")):
        raise SourceError(f"{pkg}: reserved for independent evaluation ({', '.join(RESERVED_DEBS)}); "
                          "it must never feed the training set")


def _words(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- fetching

def fetch_train_sources(work: Path, say=print, debs: dict[str, str] | None = None) -> dict:
    """The suite's sources (fetch_sources) plus debs (default TRAIN_DEBS), downloaded into work (reused when
    present) and unpacked into work/root; got["debs"] maps every source key to its .deb."""
    debs = TRAIN_DEBS if debs is None else debs
    for pkg in (*DEBS.values(), *debs.values()):
        refuse_reserved(pkg)  # before any download: a reserved package never reaches the work folder
    got = fetch_sources(work, say)
    for key, pkg in debs.items():
        got["debs"][key] = fetch_deb(work, pkg, got["root"], say, "trainset")
    got["packages_used"] = {**DEBS, **debs}
    return got


def source_path(root: Path, key: str) -> Path:
    """Where package key's text lies under an unpacked root; SourceError naming the package if it is missing."""
    path = root / "usr" / "share" / PATHS[key]
    if not path.exists():
        raise SourceError(f"{path}: missing (was {TRAIN_DEBS[key]} unpacked? its layout may have changed)")
    return path


# ---------------------------------------------------------------- pod (perl-doc)

_E = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_link(inner: str) -> str:
    """L<text|target> shows text; L<name/"sec"> and L</sec> show the section (and the page it is in)."""
    if "|" in inner:
        return inner.split("|", 1)[0]
    name, sep, sec = inner.partition("/")
    if not sep:
        return name
    sec = sec.strip('"')
    return f"{sec} in {name}" if name else sec


def pod_text(text: str) -> str:
    """Plain text of a pod paragraph: formatting codes (B<>, C<< >>, L<>, E<>, X<> ...) resolved, nested or not."""
    out, i, n = [], 0, len(text)
    while i < n:
        m = re.compile(r"([A-Z])(<+)").search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i:m.start()])
        code, opens = m.group(1), len(m.group(2))
        if opens > 1 and m.end() < n and text[m.end()].isspace():
            # C<< ... >>: ends at the first run of as many '>' preceded by whitespace; no nesting inside
            close = re.compile(r"\s" + ">" * opens).search(text, m.end())
            end = close.end() if close else n
            inner = text[m.end():close.start()] if close else text[m.end():]
            inner = pod_text(inner.strip())
        else:
            # single brackets (or '<<' not followed by a space, read as '<' then '<'): nest on letter codes only
            start = m.start(1) + 2
            depth, j = 1, start
            while j < n and depth:
                if text[j] == ">":
                    depth -= 1
                elif text[j] == "<" and j > 0 and text[j - 1].isupper():
                    depth += 1
                j += 1
            inner, end = pod_text(text[start:j - 1] if not depth else text[start:]), j
            if opens > 1:
                inner = "<" * (opens - 1) + inner
        if code in "XZ":
            pass  # index entries and zero-width markers show nothing
        elif code == "E":
            key = inner.strip()
            out.append(_E.get(key) or (chr(int(key, 0)) if key[:1].isdigit() else html.unescape(f"&{key};")))
        elif code == "L":
            out.append(_pod_link(inner))
        else:
            out.append(inner)
        i = end
    return "".join(out)


def read_pod(text: str) -> list[tuple[str, str]]:
    """Pod source -> blocks (kind, plain text): kind is head1..head4, item, over, back or para. Verbatim
    (indented: code) paragraphs and =begin/=end, =for and non-pod regions are left out."""
    blocks, in_pod, skip_until = [], False, None
    for para in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        if not para.strip():
            continue
        para = para.strip("\n")
        if para.startswith("="):
            cmd, _, rest = para[1:].partition(" ") if " " in para.split("\n", 1)[0] else (
                para[1:].split("\n", 1)[0], "", para.split("\n", 1)[1] if "\n" in para else "")
            cmd = cmd.strip()
            in_pod = cmd != "cut"
            if skip_until:
                if cmd == "end" and rest.split()[:1] == [skip_until]:
                    skip_until = None
                continue
            if cmd == "begin":
                skip_until = (rest.split() or [""])[0]
            elif cmd in ("head1", "head2", "head3", "head4", "item"):
                blocks.append((cmd, _words(pod_text(rest))))
            elif cmd in ("over", "back"):
                blocks.append((cmd, ""))
            continue  # =pod, =cut, =encoding, =for (one paragraph of another format)
        if not in_pod or skip_until or para[0] in " \t":
            continue
        blocks.append(("para", _words(pod_text(para))))
    return blocks


def pod_sections(blocks: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    """(level, heading, body) per =headN: the body is the text up to the next heading of any level, list item
    labels included ("*" bullets dropped)."""
    out, head, level, body = [], None, 0, []
    for kind, text in blocks + [("head1", None)]:
        if kind.startswith("head"):
            if head is not None:
                out.append((level, head, _words(" ".join(body))))
            head, level, body = text, int(kind[4]), []
        elif kind in ("para", "item") and head is not None:
            label = re.sub(r"^(\*|\d+\.?)(\s+|$)", "", text)
            if label:
                body.append(label)
    return out


def pod_items(blocks: list[tuple[str, str]], after: str | None = None) -> list[tuple[str, str]]:
    """(label, body) per entry of the outermost =over list (after the heading `after`, if given): consecutive
    =item lines are alternatives of one entry (the first is kept); deeper lists belong to the body."""
    out, depth, label, body, active = [], 0, None, [], after is None

    def flush():
        if label is not None:
            out.append((label, _words(" ".join(body))))

    for kind, text in blocks:
        if kind.startswith("head"):
            flush()
            label, body, depth = None, [], 0
            active = after is None or text == after or (active and kind not in ("head1", "head2"))
        elif not active:
            continue
        elif kind == "over":
            depth += 1
        elif kind == "back":
            depth -= 1
            if depth == 0:
                flush()
                label, body = None, []
        elif kind == "item" and depth == 1:
            if label is None or body:
                flush()
                label, body = text, []
        elif depth >= 1 and label is not None and text:
            body.append(text)
    flush()
    return out
