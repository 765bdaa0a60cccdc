"""Parsers for the training set's documentation sources: the Python documentation's Sphinx HTML, the Debian FAQ
(its plain-text rendering) and the Devil's Dictionary entries (dictd, read with the suite's read_dictd).

They return plain text (markup, links and code blocks removed, whitespace collapsed); what is too short or
duplicated is decided by embedtrain.data.trainset_tasks, which counts it.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser


def _words(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- Sphinx HTML (python3.11-doc)

class SphinxPage(HTMLParser):
    """One Sphinx HTML page -> sections [(id, heading, body)] and API entries [(kind, id, signature, body)].

    Text goes to the innermost open section or API entry, so a section's body holds neither its subsections
    nor the functions documented in it; code blocks (<pre>) and permalink marks are left out."""

    BLOCK = {"p", "div", "li", "dt", "dd", "pre", "table", "tr", "td", "th", "br", "h1", "h2", "h3", "h4", "h5",
             "h6", "section", "dl", "ul", "ol", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title, self.sections, self.api = None, [], []
        self._stack = []  # [tag, record or None] per open <section> / <dl>
        self._skip = None  # [tag, depth] while inside a left-out element
        self._buf = None  # heading or signature text being collected, with the record it belongs to

    def _record(self):
        return next((r for _, r in reversed(self._stack) if r is not None), None)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if self._skip:
            self._skip[1] += tag == self._skip[0]
            return
        if tag in ("pre", "script", "style") or (tag == "a" and "headerlink" in cls):
            self._skip = [tag, 1]
            return
        if tag in self.BLOCK:
            self._text(" ")
        if tag == "section":
            self._stack.append(["section", {"id": a.get("id", ""), "head": None, "body": []}])
        elif tag == "dl":
            api = "py" in cls and len(cls) > 1
            self._stack.append(["dl", {"kind": cls[1], "id": "", "sig": None, "body": []} if api else None])
        elif re.fullmatch(r"h[1-6]", tag) and self._stack and self._stack[-1][0] == "section" \
                and self._stack[-1][1]["head"] is None:
            self._buf = (tag, self._stack[-1][1], "head", [])
        elif tag == "dt" and self._stack and self._stack[-1][1] is not None and "sig" in self._stack[-1][1]:
            rec = self._stack[-1][1]
            # a second signature line (an overload) is neither signature nor body
            self._buf = ("dt", rec, "sig" if rec["sig"] is None else None, [])
            rec["id"] = rec["id"] or a.get("id", "")

    def handle_endtag(self, tag):
        if self._skip:
            self._skip[1] -= tag == self._skip[0]
            if self._skip[1] == 0:
                self._skip = None
            return
        if self._buf and tag == self._buf[0]:
            _, rec, field, parts = self._buf
            if field:
                rec[field] = _words("".join(parts))
                if field == "head" and self.title is None:
                    self.title = rec[field]
            self._buf = None
        if tag in self.BLOCK:
            self._text(" ")
        if tag in ("section", "dl"):
            while self._stack:
                kind, rec = self._stack.pop()
                if rec is not None:
                    body = _words("".join(rec["body"]))
                    if kind == "section":
                        self.sections.append((rec["id"], rec["head"] or "", body))
                    else:
                        self.api.append((rec["kind"], rec["id"], rec["sig"] or "", body))
                if kind == tag:
                    break

    def handle_data(self, data):
        if not self._skip:
            self._text(data)

    def _text(self, data):
        if self._buf:
            self._buf[3].append(data)
            return
        rec = self._record()
        if rec is not None:
            rec["body"].append(data)


def read_sphinx_page(text: str) -> SphinxPage:
    """Parse the main part of a Sphinx page (<div role="main">, or the whole page where it has none)."""
    start = re.search(r'<div class="body" role="main">', text)
    page = SphinxPage()
    page.feed(text[start.end():] if start else text)
    page.close()
    return page


# ---------------------------------------------------------------- Debian FAQ (text) and Devil's Dictionary

_FAQ_Q = re.compile(r"^(\d+\.\d+)\. (\S.*)$")
_URL_AGAIN = re.compile(r"\s*\((https?|ftp)://[^)]*\)")  # the text renderer repeats each link's address


def read_debian_faq(text: str) -> list[tuple[str, str, str]]:
    """(number, question, answer) from the FAQ's text rendering (debian-faq.txt.gz): a question starts at
    column 0 with "N.M. " and may wrap onto further unindented lines; its answer is the indented text up to the
    next unindented line."""
    out, num, q, ans, in_q = [], None, [], [], False
    # the renderer puts no-break spaces in headings and some indents: as spaces, indents are indents again
    text = text.replace("\xa0", " ").replace("\r\n", "\n")
    body = text.split("\nChapter 1.", 1)[-1]  # after the table of contents

    def flush():
        if num:
            answer = _words(_URL_AGAIN.sub("", " ".join(ans)))
            out.append((num, _words(" ".join(q)), answer))

    for line in body.split("\n"):
        m = _FAQ_Q.match(line)
        if m:
            flush()
            num, q, ans, in_q = m.group(1), [m.group(2)], [], True
        elif not line.strip():
            in_q = False
        elif line[0] not in " \t":
            if in_q:
                q.append(line)
            else:  # a chapter heading or other unindented text ends the answer
                flush()
                num, q, ans = None, [], []
        elif num:
            in_q = False
            ans.append(line.strip())
    flush()
    return out


def devil_entry(text: str) -> tuple[str, str]:
    """Devil's Dictionary entry -> (headword, definition): "WORD, n.  Text..." with indented verse and
    attributions left out."""
    lines = text.strip("\n").split("\n")
    m = re.match(r"([A-Z][A-Z' .-]*?),\s*(?:([a-z]{1,4}\.)(?:\s*and\s*[a-z]{1,4}\.)?)?\s*(.*)$", lines[0])
    if not m:
        return "", ""
    prose = [m.group(3)]
    for line in lines[1:]:
        if line.startswith((" ", "\t")) or not line.strip():
            if prose[-1] and not line.strip():
                prose.append("")
            continue
        prose.append(line)
    return m.group(1).strip().lower(), _words(" ".join(prose))
