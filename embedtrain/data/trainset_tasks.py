"""The training set's tasks: candidate rows per task from what the source readers return.

A row is a data.train pair ({"query", "positive", optional "negative", "task", "instruction"}) plus "keys": the
source items it shows, as (kind, value) pairs in embedtrain.data.trainset_holdout's kinds, so that rows of items
the suite tests can be dropped and the drop checked. Builders only shape and filter text; holding out, removing
duplicates and capping happen in finish().
"""
from __future__ import annotations

import random
import re
from collections import defaultdict

from embedtrain.evaluation.suite_catalog import DOC_WORDS
from embedtrain.evaluation.suite_exclusion import norm_definition
from embedtrain.evaluation.suite_tasks_data import _clip, _foldoc_entry, gcide_senses

POSITIVE_WORDS = 80  # data.max_length is small (64-128 tokens): longer positives would mostly be cut anyway
QUERY_WORDS = 48
JARGON = re.compile(r"jargon file", re.I)
MAX_ROWS = {"gcide_definition_word": 15000, "wordnet_definition_lemma": 15000}  # else the dictionaries dominate

TASKS = {
    "debian_summary_description": ("debian", "Given the one-line summary of a Debian software package, retrieve "
                                   "the package's full description"),
    "foldoc_term_definition": ("foldoc", "Given a computing term, retrieve its dictionary definition"),
    "gcide_definition_word": ("gcide", "Given a dictionary definition, retrieve the word it defines"),
    "wordnet_definition_lemma": ("wordnet", "Given a definition, retrieve the word it defines"),
    "python_api_doc": ("python-doc", "Given a Python API signature, retrieve its documentation"),
    "python_doc_section": ("python-doc", "Given a section title of the Python documentation, retrieve the "
                           "section's text"),
    "perl_doc_item": ("perl-doc", "Given a Perl function, variable, option or message, retrieve its documentation"),
    "perl_doc_section": ("perl-doc", "Given a section title of the Perl documentation, retrieve the section's text"),
    "debian_faq_answer": ("debian-faq", "Given a question about Debian, retrieve its answer"),
    "devil_word_definition": ("devil", "Given a word, retrieve its satirical definition from Ambrose Bierce's "
                              "Devil's Dictionary"),
}


def _clean(text: str) -> str:
    return " ".join(re.sub(r"(^|\s)[*\u2022](?=\s|$)", " ", text).split())  # list bullets carry no meaning


def row(task: str, query: str, positive: str, keys=(), negative=None) -> dict:
    out = {"query": _clip(_clean(query), QUERY_WORDS), "positive": _clip(_clean(positive), POSITIVE_WORDS),
           "task": task, "instruction": TASKS[task][1], "keys": list(keys)}
    if negative:
        out["negative"] = negative
    return out


def debian_rows(pkgs: list[dict]) -> list[dict]:
    """Short -> long description, one binary per source package (the one named after it if any)."""
    # templated sections: Rust crates all read "This package contains the source for the Rust X crate..."
    skip = {"debug", "oldlibs", "libdevel", "localization", "metapackages", "tasks", "introspection", "rust"}
    by_source = defaultdict(list)
    for p in pkgs:
        if p["section"] not in skip and p["short"] and len(p["long"].split()) >= 8:
            by_source[p["source"]].append(p)
    out = []
    for source in sorted(by_source):
        p = max(by_source[source], key=lambda p: (p["package"] == source, len(p["long"]), p["package"]))
        out.append(row("debian_summary_description", p["short"], p["long"],
                       [("debian-package", p["package"]), ("debian-source", source),
                        ("text", _clip(p["long"], DOC_WORDS))]))
    return out


def foldoc_rows(entries: list[tuple[list[str], str]]) -> list[dict]:
    """Term -> definition, leaving out what FOLDOC took from the Jargon File (cited, or opening with a
    /pronunciation/ as the Jargon File does): the Jargon File (dict-jargon) is kept for independent evaluation."""
    out = []
    for words, text in entries:
        if any(w.startswith(("00-database", "00database")) for w in words) or JARGON.search(text):
            continue
        title, _, body = _foldoc_entry(text)
        if title and len(body.split()) >= 8 and not body.startswith("/"):
            out.append(row("foldoc_term_definition", title, body, [("word", title),
                                                                   ("text", _clip(body, DOC_WORDS))]))
    return out


def gcide_rows(entries: list[tuple[list[str], str]], lemmas: set[str]) -> list[dict]:
    """Webster 1913 first sense -> headword, for headwords still in use (WordNet lemmas), as the suite reads them."""
    # a bracket left in the sense is the tail of an etymology the reader did not skip
    return [row("gcide_definition_word", sense, w, [("word", w), ("text", sense)])
            for w, sense in gcide_senses(entries, lemmas, min_letters=3, min_words=4, keep=lambda s: "]" not in s)]


def wordnet_rows(syn: dict, seed: int, n_negatives: int = 3) -> list[dict]:
    """Definition -> first lemma; negatives: lemmas of co-hyponyms (synsets sharing a hypernym) not naming the
    target, the hardest negatives WordNet offers for free."""
    children = defaultdict(list)
    for key, s in syn.items():
        for h in s["hyper"]:
            children[h].append(key)
    rng = random.Random(f"{seed}/wordnet_definition_lemma")
    out = []
    for key in sorted(syn):
        s = syn[key]
        lemma, own = s["words"][0], {w.lower() for w in s["words"]}
        definition = s["definition"]
        giveaway = {t for w in own for t in w.split() if len(t) > 3}
        if len(definition.split()) < 3 or giveaway & set(re.findall(r"[\w'-]+", definition.lower())):
            continue
        siblings = sorted({syn[c]["words"][0] for h in s["hyper"] for c in children[h]
                           if c != key and syn[c]["words"][0].lower() not in own})
        negatives = rng.sample(siblings, min(n_negatives, len(siblings)))
        out.append(row("wordnet_definition_lemma", definition, lemma,
                       [("synset", f"{key[0]}{key[1]}"), ("word", lemma), ("text", definition)], negatives))
    return out


def python_rows(pages) -> list[dict]:
    """pages: (relative path, SphinxPage). API entries: "kind qualified.name(args)" -> its text; sections:
    "page title: heading" -> the section's own text (not its subsections')."""
    out = []
    for rel, page in pages:
        title = _unnumber(page.title or rel)
        for kind, ident, sig, body in page.api:
            name = ident or sig.split("(")[0]
            args = sig[sig.index("("):] if "(" in sig else ""
            if name and len(body.split()) >= 5:
                out.append(row("python_api_doc", f"{kind} {name}{args}", body))
        for _, head, body in page.sections:
            head = _unnumber(head)
            if head and len(body.split()) >= 8:
                out.append(row("python_doc_section", title if head == title else f"{title}: {head}", body))
    return out


def _unnumber(heading: str) -> str:
    return re.sub(r"^(\d+\.)+\s+", "", heading)  # "9.6. distutils..." -> "distutils..."


def perl_rows(pods) -> list[dict]:
    """pods: (page name, sections, items) from pod_sections / pod_items; queries name the page, since headings
    like "DESCRIPTION" and items like "-n" recur across pages."""
    out = []
    for page, sections, items in pods:
        for _, head, body in sections:
            if head and head not in ("NAME", "AUTHOR", "AUTHORS", "SEE ALSO") and len(body.split()) >= 8:
                out.append(row("perl_doc_section", f"{page}: {head}", body))
        for label, body in items:
            if re.search(r"[A-Za-z]", label) and len(body.split()) >= 8:
                out.append(row("perl_doc_item", f"{page}: {label}", body))
    return out


def faq_rows(faq: list[tuple[str, str, str]]) -> list[dict]:
    return [row("debian_faq_answer", q, a) for _, q, a in faq if q and len(a.split()) >= 5]


def devil_rows(entries: list[tuple[str, str]]) -> list[dict]:
    return [row("devil_word_definition", word, text, [("word", word)]) for word, text in entries
            if word and len(text.split()) >= 3]


def finish(rows: list[dict], seed: int) -> tuple[list[dict], dict]:
    """Drop rows whose query or positive repeats an earlier one of the task (it would be a false negative in its
    batch), then cap big tasks at MAX_ROWS by seeded sampling; return the rows and per-task counts of both."""
    by_task, dropped = defaultdict(list), defaultdict(lambda: {"duplicates": 0, "capped": 0})
    seen = defaultdict(set)
    for r in rows:
        sigs = {("q", norm_definition(r["query"])), ("p", norm_definition(r["positive"]))}
        if sigs & seen[r["task"]]:
            dropped[r["task"]]["duplicates"] += 1
            continue
        seen[r["task"]] |= sigs
        by_task[r["task"]].append(r)
    out = []
    for task in TASKS:
        kept = by_task.get(task, [])
        if len(kept) > MAX_ROWS.get(task, len(kept)):
            dropped[task]["capped"] = len(kept) - MAX_ROWS[task]
            kept = random.Random(f"{seed}/{task}").sample(kept, MAX_ROWS[task])
        out += kept
    return out, {t: dict(d) for t, d in dropped.items()}
