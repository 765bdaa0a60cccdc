#!/usr/bin/env python3
"""Requests for the compression (LLM2Vec-Gen) CPU recipe, from the ten-task training set.

Each sampled training pair becomes one request phrased as evaluation phrases its inputs (METHODS.md
section 3, embedtrain.evaluation.mteb_run.GENERATION_REQUESTS): the pair's query as a question to answer,
its positive as a passage to summarise, or either side as text to paraphrase. Tasks are sampled evenly, so
passages (Debian, Python, Perl, FOLDOC) weigh as much as the dictionary tasks. The held-out pairs are
rewritten with the question request as their instruction, for eval.retrieval during training.
  python recipes/cpu/build_compression_queries.py data/trainset data/compression_queries [--num 900]
"""
import argparse
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from embedtrain.evaluation.mteb_run import GENERATION_REQUESTS as REQ

KINDS = (("query", 0.4), ("document", 0.4), ("symmetric", 0.2))


def request(row: dict, rng: random.Random) -> str:
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    if kind == "query":
        return REQ["query"] + row["query"]
    if kind == "document":
        return REQ["document"] + row["positive"]
    return REQ["symmetric"] + rng.choice((row["query"], row["positive"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_set", help="an `embedtrain build-train-set` folder (train.jsonl, heldout.jsonl)")
    ap.add_argument("out", help="folder for queries.jsonl (generate.queries) and heldout.jsonl (eval.retrieval)")
    ap.add_argument("--num", type=int, default=900, help="requests in all, split evenly over the tasks")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    src, out = Path(args.train_set), Path(args.out)
    if not (src / "train.jsonl").is_file():
        sys.exit(f"{src}/train.jsonl not found: build it with `embedtrain build-train-set {src}`")
    by_task = defaultdict(list)
    with open(src / "train.jsonl") as f:
        for line in f:
            row = json.loads(line)
            by_task[row["task"]].append(row)
    rng = random.Random(args.seed)
    tasks = sorted(by_task, key=lambda t: (len(by_task[t]), t))  # small tasks first give back room
    rows, left = [], args.num
    for i, task in enumerate(tasks):
        take = min(len(by_task[task]), left // (len(tasks) - i))
        rows += [{"query": request(r, rng), "task": task} for r in rng.sample(by_task[task], take)]
        left -= take
    rng.shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "queries.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(src / "heldout.jsonl") as f, open(out / "heldout.jsonl", "w") as g:
        for line in f:
            row = json.loads(line)
            g.write(json.dumps({"query": row["query"], "positive": row["positive"], "task": row["task"],
                                "instruction": REQ["query"]}) + "\n")
    counts = dict(Counter(r["task"] for r in rows))
    print(f"wrote {out / 'queries.jsonl'}: {len(rows)} requests {counts}; {out / 'heldout.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
