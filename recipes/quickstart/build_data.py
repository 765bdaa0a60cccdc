#!/usr/bin/env python3
"""Build the CPU-quickstart train/held-out data from WordNet 3.0 (Debian's wordnet-base).

Two retrieval tasks, both from noun and verb synsets:
  wordnet_def2lemma  query = definition, positive = lemma, negatives = co-hyponym lemmas (<= 3)
  wordnet_lemma2def  query = lemma, positive = definition, negatives = co-hyponym definitions (<= 2)

Adjectives and adverbs are left out: WordNet gives them no hypernym tree, so they
have no co-hyponyms to serve as hard negatives.

Usage (stdlib only):
  python recipes/quickstart/build_data.py                    # downloads wordnet-base itself
  python recipes/quickstart/build_data.py --wordnet-dir /tmp/wn/usr/share/wordnet
"""
import argparse
import glob
import json
import os
import random
import re
import subprocess
import tempfile
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
POS_FILES = {"n": "data.noun", "v": "data.verb"}
HYPERNYM_PTRS = {"@", "@i"}  # instance hypernyms too, else named entities get no siblings
# Example sentences follow the definition as '; "..."', in a few hundred glosses
# as ': "..."' or ', "..."' (sometimes after "e.g.").
EXAMPLE_START = re.compile(r'[;:,]\s*"')
TRAILING_JUNK = re.compile(r'[\s;:,]*(e\.g\.)?[\s;:,]*$')


def fetch_wordnet(tmp):
    """apt-get download + dpkg -x: gets the data without root and without installing."""
    subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, check=True)
    deb = glob.glob(os.path.join(tmp, "wordnet-base_*.deb"))[0]
    print("using", os.path.basename(deb))
    subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, "root")], check=True)
    return os.path.join(tmp, "root", "usr", "share", "wordnet")


def clean_definition(gloss):
    for m in EXAMPLE_START.finditer(gloss):
        head = gloss[: m.start()]
        # '(e.g., "...")' inside parentheses is part of the definition: keep it.
        if head.count("(") == head.count(")"):
            gloss = head
            break
    gloss = TRAILING_JUNK.sub("", gloss.strip())
    # A few glosses end in a stray unmatched quote (upstream typo).
    if gloss.count('"') % 2 and gloss.endswith('"'):
        gloss = gloss[:-1]
    return gloss


def parse(wordnet_dir):
    """Return {(pos, offset): {"words": [...], "hyper": [keys], "definition": str}}.

    Keys include the POS because noun and verb offsets are independent byte offsets
    and do collide (e.g. 00001740 is both 'entity' and 'breathe').
    """
    synsets = {}
    for pos, fname in POS_FILES.items():
        with open(os.path.join(wordnet_dir, fname), encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # licence header lines
                    continue
                data, gloss = line.split(" | ", 1)
                tok = data.split()
                offset, w_cnt = tok[0], int(tok[3], 16)  # w_cnt is hex, p_cnt is decimal
                words = [tok[4 + 2 * i].replace("_", " ") for i in range(w_cnt)]
                i = 4 + 2 * w_cnt
                p_cnt = int(tok[i])
                hyper = []
                for j in range(p_cnt):
                    sym, off, ppos = tok[i + 1 + 4 * j : i + 4 + 4 * j]
                    if sym in HYPERNYM_PTRS:
                        hyper.append((ppos, off))
                # verb frame fields after the pointers are irrelevant here
                synsets[(pos, offset)] = {
                    "words": words, "hyper": hyper, "definition": clean_definition(gloss)}
    return synsets


def check(train, heldout):
    """Guard the promise the quickstart eval relies on: held-out is truly unseen."""
    held = {r["positive"].lower() for r in heldout} | {r["query"].lower() for r in heldout}
    for r in train:
        texts = {r["query"].lower(), r["positive"].lower(), *(n.lower() for n in r["negative"])}
        assert not texts & held, f"held-out text leaked into train: {texts & held}"
    for r in train + heldout:
        assert r["query"] and r["positive"] and r["negative"] and all(r["negative"]), r
    assert len({r["positive"].lower() for r in train + heldout}) == len(train) + len(heldout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet-dir", help="dir holding data.noun/data.verb (default: download wordnet-base)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "data"))
    ap.add_argument("--seed", type=int, default=13, help="selection, negatives and order")
    ap.add_argument("--n-heldout", type=int, default=500, help="def2lemma held-out lines")
    ap.add_argument("--n-train-def2lemma", type=int, default=5000, help="def2lemma train lines")
    ap.add_argument("--n-train-lemma2def", type=int, default=1000, help="lemma2def train lines")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wn_dir = args.wordnet_dir or fetch_wordnet(tmp)
        synsets = parse(wn_dir)
    print(f"parsed {len(synsets)} noun+verb synsets")

    children = defaultdict(list)
    for key, s in synsets.items():
        for h in s["hyper"]:
            children[h].append(key)

    # Keep only synsets usable in both tasks: a definition and >= 1 co-hyponym whose
    # lemma differs from every word of the synset (else the "negative" is a synonym).
    skipped = Counter()
    cands = {}  # key -> sorted sibling keys with a usable lemma
    for key in sorted(synsets):
        s = synsets[key]
        own = {w.lower() for w in s["words"]}
        if not s["definition"]:
            skipped["empty definition"] += 1
            continue
        if not s["hyper"]:
            skipped["no hypernym (top of a tree)"] += 1
            continue
        sibs = sorted({c for h in s["hyper"] for c in children[h]} - {key})
        sibs = [c for c in sibs if synsets[c]["words"][0].lower() not in own]
        if not sibs:
            skipped["no co-hyponym with a different lemma"] += 1
            continue
        cands[key] = sibs
    for why, n in sorted(skipped.items()):
        print(f"skipped {n} synsets: {why}")
    print(f"eligible {len(cands)} synsets")

    rng = random.Random(args.seed)
    order = sorted(cands)
    rng.shuffle(order)

    def lemma(k):
        return synsets[k]["words"][0]

    def negatives(key, n, field, banned):
        # Dedupe by text: two siblings can share a lemma (homonyms like 'bass').
        own = {w.lower() for w in synsets[key]["words"]} | {synsets[key]["definition"].lower()}
        seen, texts = set(), []
        for c in cands[key]:
            t = lemma(c) if field == "lemma" else synsets[c]["definition"]
            if t.lower() in seen or t.lower() in own or t.lower() in banned or lemma(c).lower() in banned:
                continue
            seen.add(t.lower())
            texts.append(t)
        return rng.sample(texts, min(n, len(texts)))

    def d2l(k, banned):
        return {"query": synsets[k]["definition"], "positive": lemma(k),
                "negative": negatives(k, 3, "lemma", banned), "task": "wordnet_def2lemma"}

    def l2d(k, banned):
        return {"query": lemma(k), "positive": synsets[k]["definition"],
                "negative": negatives(k, 2, "definition", banned), "task": "wordnet_lemma2def"}

    # Every selected synset's lemma and definition are texts no other selected synset
    # uses (case-insensitive; some glosses are just another synset's lemma). So no
    # held-out text is a train query/positive, and no two train rows share a target,
    # so in-batch negatives are never secretly positives.
    used = set()
    pool = order[::-1]  # pop() from the end == walk the shuffled order
    rejected = Counter()

    def take(n, make_row, banned):
        rows = []
        while pool and len(rows) < n:
            k = pool.pop()
            lem, d = lemma(k).lower(), synsets[k]["definition"].lower()
            if lem in used or d in used:
                rejected["lemma or definition text already used"] += 1
                continue
            row = make_row(k, banned)
            if not row["negative"]:  # every sibling text is held out
                rejected["no negative left after removing held-out texts"] += 1
                continue
            used.update((lem, d))
            rows.append(row)
        if len(rows) < n:
            raise SystemExit(f"only {len(rows)} of {n} synsets available")
        return rows

    heldout = take(args.n_heldout, d2l, set())
    # Train negatives also avoid held-out lemmas and definitions, so held-out pairs are
    # never seen in train at all, not even as negatives. Texts, not synsets, are banned:
    # WordNet has near-duplicate synsets (e.g. a gloss that is another synset's lemma).
    banned = {r["positive"].lower() for r in heldout} | {r["query"].lower() for r in heldout}
    train = take(args.n_train_def2lemma, d2l, banned) + take(args.n_train_lemma2def, l2d, banned)
    rng.shuffle(train)  # mix tasks so a plain sequential reader sees both
    for why, n in sorted(rejected.items()):
        print(f"passed over {n} eligible synsets: {why}")

    check(train, heldout)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        path = os.path.join(args.out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        per_task = Counter(r["task"] for r in rows)
        print(f"wrote {path}: {len(rows)} lines {dict(per_task)} {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
