#!/usr/bin/env python3
"""Queries for the CPU compression quickstart (LLM2Vec-Gen), from the bundled WordNet training pairs.

Instructions are generation requests (as in the paper): half the queries ask for a definition of a word,
half for a definition like a given one, so at evaluation both a definition (query) and a word
(document) are embedded as "the definition the model would write". Deterministic; stdlib only.
  python recipes/quickstart/build_queries.py    -> recipes/quickstart/data/queries.jsonl
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
WORD = "Generate a dictionary definition of this word: "
DEFINITION = "Generate a dictionary definition similar to this one: "


def main(n: int = 600) -> None:
    with open(os.path.join(HERE, "data", "train.jsonl")) as f:
        pairs = [json.loads(line) for line in f if '"wordnet_def2lemma"' in line]
    random.Random(0).shuffle(pairs)
    rows = [{"query": WORD + p["positive"]} for p in pairs[:n // 2]]
    rows += [{"query": DEFINITION + p["query"]} for p in pairs[n // 2:n]]
    random.Random(1).shuffle(rows)
    with open(os.path.join(HERE, "data", "queries.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
