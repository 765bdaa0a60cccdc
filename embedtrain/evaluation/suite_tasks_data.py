"""Each task's rows, built from what embedtrain.evaluation.suite_sources reads (see TASKS in suite_catalog)."""
from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict

from embedtrain.evaluation.suite_catalog import DEBIAN_TRAIN_FRACTION, DOC_WORDS, N_CORPUS, N_QUERIES
from embedtrain.evaluation.suite_exclusion import Exclusion
from embedtrain.evaluation.suite_sources import SourceError

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


def gcide_senses(entries: list[tuple[list[str], str]], lemmas: set[str], min_letters: int = 4,
                 min_words: int = 5, keep=None):
    """(word, first sense) per headword, once: WordNet lemmas only (words still in use), min_letters
    letters or more, a sense of min_words..60 words that is no redirect and does not name its own word.
    keep(sense) -> bool filters further (the training set drops etymology tails)."""
    seen = set()
    for words, text in entries:
        for word in words:
            w = word.lower()
            if w in seen or not re.fullmatch(rf"[a-z]{{{min_letters},}}", w) or w not in lemmas:
                continue
            sense = _gcide_sense(word, text)
            if not sense or not min_words <= len(sense.split()) <= 60 or GCIDE_REDIRECT.match(sense):
                continue
            if keep is not None and not keep(sense):
                continue
            stem = w[:max(4, min(6, len(w) - 2))]
            if any(t.startswith(stem) for t in re.findall(r"[a-z]+", sense.lower())):
                continue  # a definition naming its own word is a string match, not a semantic one
            seen.add(w)
            yield w, sense


def build_gcide(entries: list[tuple[list[str], str]], lemmas: set[str], seed: int,
                exclude: Exclusion | None = None) -> tuple[dict, dict]:
    """The reverse-dictionary task, and how many usable words were left out as lemmas of exclude."""
    rows, excluded = [], 0
    for w, sense in gcide_senses(entries, lemmas):
        if exclude is not None and exclude.has_lemma(w):
            excluded += 1
            continue
        rows.append((w, sense, w))
    data = {"EmbedtrainGcideRetrieval": _retrieval(rows, random.Random(f"{seed}/EmbedtrainGcideRetrieval"),
                                                   N_CORPUS["gcide"])}
    return data, {"EmbedtrainGcideRetrieval": {"words": excluded, "usable": len(rows) + excluded}}


def build_wordnet(syn: dict, seed: int, exclude: Exclusion | None = None) -> tuple[dict, dict]:
    """The reranking and clustering tasks, and per task how many of the synsets they draw on exclude keeps out.

    Reranking: of the noun and verb synsets with a hypernym, "lemmas" can be no candidate (their lemma is
    excluded), and "definitions" no query (their lemma is not, their definition is). Clustering: of the nouns
    in the ten categories, "definitions" can be no example."""
    def lemma_out(k):
        return exclude is not None and exclude.has_lemma(syn[k]["words"][0])

    def definition_out(k):
        return exclude is not None and exclude.has_definition(syn[k]["definition"])

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
            if k not in used and not lemma_out(k):
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
            if definition_out(target):
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
    hyponyms = sorted({k for ks in children.values() for k in ks})
    counts = {"EmbedtrainWordNetReranking": {
        "synsets": len(hyponyms), "lemmas": sum(map(lemma_out, hyponyms)),
        "definitions": sum(1 for k in hyponyms if not lemma_out(k) and definition_out(k))}}
    rng = random.Random(f"{seed}/EmbedtrainWordNetClustering")
    examples, n_pool, n_out = [], 0, 0
    for lex, label in WORDNET_CLUSTERS.items():
        cands = sorted(k for k, s in syn.items()
                       if k[0] == "n" and s["lex"] == lex and len(s["definition"].split()) >= 4)
        kept = [k for k in cands if not definition_out(k)]
        n_pool, n_out = n_pool + len(cands), n_out + len(cands) - len(kept)
        examples += [{"text": syn[k]["definition"], "label": label} for k in rng.sample(kept, 60)]
    counts["EmbedtrainWordNetClustering"] = {"synsets": n_pool, "definitions": n_out}
    data = {"EmbedtrainWordNetReranking": rerank, "EmbedtrainWordNetClustering": {"test": {"examples": examples}}}
    return data, counts


def build_lee(docs: list[str], rows: list[list[float]], seed: int) -> dict:
    """Every pair of articles with its rating (upper triangle of the matrix); seed unused, nothing is sampled."""
    return {"EmbedtrainLeeSTS": {"test": {"pairs": [
        {"sentence1": docs[i], "sentence2": docs[j], "score": round(rows[i][j], 6)}
        for i in range(len(docs)) for j in range(i + 1, len(docs))]}}}
