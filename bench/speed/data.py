"""The speed bench's data: real English text with a realistic length mix, on any machine, no download.

- short pairs: WordNet, recipes/quickstart/data/train.jsonl (definition <-> lemma, a few to ~40 tokens);
- long pairs: the docstrings of the running Python's stdlib (read with ast, never imported):
  query = "module.name: its summary line", positive = the rest of that docstring at its natural
  length (data.max_length cuts the longest), negative = another docstring's body.
A byte-level BPE tokenizer (tokenizers' trainer, `vocab` entries) is trained on these texts so lengths are
those of a real subword tokenizer (about 4 characters a token), then given the model family's template
tokens. The model's vocabulary may be larger (128256 for Llama-3.2): unused ids cost the same.
The compression objective reads the same pairs as (query, response) plus seeded random teacher targets.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from embedtrain.data.generated import MANIFEST, write_shard
from embedtrain.tiny import family_tokenizer
from packing_throughput import SHORT_DATA, stdlib_docs

TASKS = {"wordnet": "Given a dictionary definition, retrieve the word it defines",
         "docs": "Given a one-line summary of a Python API, retrieve its documentation"}


def _pairs(n: int, long_frac: float, seed: int) -> tuple[list[dict], str]:
    rng = random.Random(seed)
    short = [json.loads(line) for line in SHORT_DATA.read_text().splitlines()]
    short = [e for e in short if e["task"] == "wordnet_def2lemma"]
    root, files = stdlib_docs()
    docs = [(name, d.split("\n", 1)) for f in files for name, d in f if "\n" in d]
    docs = [(name, head.strip(), body.strip()) for name, (head, body) in docs if len(body.strip()) >= 64 and head.strip()]
    rng.shuffle(short)
    rng.shuffle(docs)
    rows = []
    for i in range(n):
        if rng.random() < long_frac:
            name, head, body = docs[i % len(docs)]
            rows.append({"query": f"{name}: {head}", "positive": body,
                         "negative": rng.choice(docs)[2], "task": "docs"})
        else:
            e = short[i % len(short)]
            rows.append({"query": e["query"], "positive": e["positive"], "negative": e["negative"][0],
                         "task": "wordnet"})
    source = (f"{SHORT_DATA.name} (WordNet def2lemma, {len(short)}) and {len(docs)} docstrings of {root}/*.py, "
              f"{long_frac:.0%} docstring pairs")
    return rows, source


def train_tokenizer(rows: list[dict], vocab: int, family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((r[k] for r in rows for k in ("query", "positive", "negative")), trainer)
    return family_tokenizer(tok, family)


def percentiles(values: list[int]) -> dict:
    v = sorted(values)
    return {f"p{p}": v[min(len(v) - 1, len(v) * p // 100)] for p in (10, 50, 90, 99)} | {"mean": sum(v) / len(v)}


def build_data(out: Path, n: int, long_frac: float, seed: int, vocab: int, family: str, teacher_dim: int) -> dict:
    """pairs.jsonl, a generated folder for compression, and the trained tokenizer; returns their description."""
    out.mkdir(parents=True, exist_ok=True)
    rows, source = _pairs(n, long_frac, seed)
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    gen = out / "generated"
    gen.mkdir(exist_ok=True)
    targets_ND = torch.randn(n, teacher_dim, generator=torch.Generator().manual_seed(seed))
    write_shard(gen, 0, [{"query": r["query"], "response": r["positive"], "task": r["task"]} for r in rows], targets_ND)
    (gen / MANIFEST).write_text(json.dumps({"rows": n, "teacher_dim": teacher_dim, "empty_responses": 0,
                                            "shards": [{"index": 0, "rows": n}], "settings": {"bench": True}}))
    tok = train_tokenizer(rows, vocab, family)
    lengths = {k: [len(tok(r[k], add_special_tokens=False)["input_ids"]) for r in rows] for k in ("query", "positive")}
    return {"pairs": str(out / "pairs.jsonl"), "generated": str(gen), "tokenizer": tok, "source": source,
            "content_tokens": {k: percentiles(v) for k, v in lengths.items()}}
