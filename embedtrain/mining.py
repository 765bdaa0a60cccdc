"""`embedtrain mine`: hard negatives for pair data, from a model's embeddings or TF-IDF / BM25.

For each line, the candidates are the distinct positives of the same task (plus an optional corpus);
the line's positive, and any positive of a line with the same query, are never negatives. Candidates
ranked A..B by score form the window; those scoring above the positive's score less a margin are
likely unlabelled positives and are skipped; `num` of the rest are picked (top, or at random with a
seed per line, so the output does not depend on batch or chunk sizes). Every input line is written
back, in order, with its `negative` field replaced (or extended, keep_given), and its `task` written
out when it came from the input file's name.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from embedtrain import api
from embedtrain.api import find_final
from embedtrain.files import atomic_write_text
from embedtrain.mining_lexical import LexicalScorer
from embedtrain.mining_pools import TaskPool, build_pools, normalize, read_corpus, read_pairs

LEXICAL = ("tfidf", "bm25")


class MiningError(ValueError):
    pass


@dataclass
class MineSettings:
    range_lo: int = 10
    range_hi: int = 50
    num: int = 4
    relative_margin: float | None = None  # default 0.05 when neither margin is given
    margin: float | None = None
    sampling: str = "random"
    seed: int = 42
    instruction: str | None = None
    batch_size: int = 64
    keep_given: bool = False
    corpus: str | None = None
    pooling: str | None = None  # base model folders only (default mean)
    device: str | None = None
    max_length: int | None = None

    def check(self) -> None:
        if self.range_lo < 1 or self.range_lo > self.range_hi:
            raise MiningError(f"--range {self.range_lo}-{self.range_hi}: need 1 <= A <= B (ranks are 1-based, "
                              "inclusive), e.g. --range 10-50")
        if self.num < 1:
            raise MiningError(f"--num {self.num}: need at least 1 negative per query")
        if self.relative_margin is not None and self.margin is not None:
            raise MiningError("--relative-margin and --margin are mutually exclusive: give one")
        if self.margin is None and self.relative_margin is None:
            self.relative_margin = 0.05
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise MiningError(f"--relative-margin {self.relative_margin}: need 0 <= value < 1")
        if self.margin is not None and self.margin < 0:
            raise MiningError(f"--margin {self.margin}: need a value >= 0")
        if self.sampling not in ("random", "top"):
            raise MiningError(f"--sampling {self.sampling!r}: choose random or top")
        if self.batch_size < 1:
            raise MiningError(f"--batch-size {self.batch_size}: need at least 1")

    def threshold(self, pos_score: float) -> float:
        """Candidates scoring above this are taken for unlabelled positives (false negatives)."""
        if self.margin is not None:
            return pos_score - self.margin
        return pos_score * (1 - self.relative_margin)


def parse_range(text: str) -> tuple[int, int]:
    parts = text.split("-")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise MiningError(f"--range {text!r}: expected A-B with integers, e.g. 10-50") from None
    return lo, hi


def ranked_window(scores_CP: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool indices and scores of the candidates ranked lo..hi (1-based) in each row, best first.
    Equal scores rank by lower pool index, whatever order topk returns them in (TF-IDF / BM25 give
    many exact ties), so the result is a pure function of the scores."""
    k = min(hi, scores_CP.shape[1])
    kth_C1 = scores_CP.topk(k, dim=1).values[:, -1:]
    above_CP = scores_CP > kth_C1
    tied_CP = scores_CP == kth_C1
    need_C1 = k - above_CP.sum(dim=1, keepdim=True)
    take_CP = above_CP | (tied_CP & (tied_CP.cumsum(dim=1) <= need_C1))
    idx_CK = take_CP.nonzero()[:, 1].view(-1, k)  # ascending pool index within each row
    s_CK = scores_CP.gather(1, idx_CK)
    order_CK = torch.sort(s_CK, dim=1, descending=True, stable=True).indices
    return idx_CK.gather(1, order_CK)[:, lo - 1:], s_CK.gather(1, order_CK)[:, lo - 1:]


def pick(window: list[tuple[int, float]], pos_score: float, given: set[int], row: int,
         s: MineSettings) -> tuple[list[int], int]:
    """(chosen pool indices in rank order, how many window candidates the margin skipped)."""
    limit = s.threshold(pos_score)
    eligible = [i for i, score in window if score <= limit]
    skipped = len(window) - len(eligible)
    eligible = [i for i in eligible if i not in given]
    if s.sampling == "top" or len(eligible) <= s.num:
        return eligible[:s.num], skipped
    rng = np.random.default_rng([s.seed, row])  # per line: independent of chunking and batch size
    return [eligible[j] for j in sorted(rng.choice(len(eligible), size=s.num, replace=False))], skipped


class EmbeddingScorer:
    """Encodes every query (with its instruction) and every candidate once; scores(rows) -> (C, P)."""

    def __init__(self, embedder, examples, pools: list[TaskPool], s: MineSettings):
        self.device = embedder.device
        self.q_ED = torch.empty(len(examples), embedder.dim)
        groups: dict[str | None, list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex.instruction or s.instruction, []).append(i)
        for instruction, rows in groups.items():
            self.q_ED[rows] = embedder.encode([examples[i].query for i in rows], instruction=instruction,
                                              batch_size=s.batch_size, show_progress=True)
        # a text in several tasks' pools (a shared corpus) is encoded once
        self.doc_id: dict[str, int] = {}
        for pool in pools:
            for t in pool.texts:
                self.doc_id.setdefault(normalize(t), len(self.doc_id))
        texts = [""] * len(self.doc_id)
        for pool in pools:
            for t in pool.texts:
                texts[self.doc_id[normalize(t)]] = t
        self.d_ND = embedder.encode(texts, batch_size=s.batch_size, show_progress=True)
        self.d_PD = None

    def begin(self, pool: TaskPool) -> None:
        ids = torch.tensor([self.doc_id[normalize(t)] for t in pool.texts])
        self.d_PD = self.d_ND[ids].to(self.device)

    def scores(self, rows: list[int]) -> torch.Tensor:
        return self.q_ED[rows].to(self.device) @ self.d_PD.T


def resolve_model(model_or_run: str, s: MineSettings) -> str:
    """"run" (embedtrain.json found) or "base" (a plain model folder); raises before any data is read."""
    path = Path(model_or_run)
    if not path.exists():
        raise MiningError(f"MODEL_OR_RUN {model_or_run!r} not found: pass an embedtrain run directory, its final/ "
                          "or checkpoints/stepNNNNNNNN folder, an exported folder, a base model folder, or the "
                          "word tfidf or bm25")
    try:
        find_final(path)
    except FileNotFoundError:
        if not (path / "config.json").is_file():
            raise MiningError(f"MODEL_OR_RUN {model_or_run!r}: no embedtrain.json (run) and no config.json (base "
                              "model) here; pass a run directory, an exported folder or a model folder") from None
        return "base"
    if s.pooling is not None:
        raise MiningError(f"--pooling applies to base model folders only; {model_or_run} is an embedtrain run "
                          "and uses the pooling it was trained with (drop --pooling)")
    return "run"


def load_embedder(model_or_run: str, s: MineSettings):
    if resolve_model(model_or_run, s) == "base":
        return api.from_base(model_or_run, pooling=s.pooling or "mean", device=s.device, max_length=s.max_length)
    return api.load(model_or_run, device=s.device, max_length=s.max_length)


def _write_jsonl(out: Path, objs: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for obj in objs:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def stats_path(out: str | Path) -> Path:
    return Path(f"{out}.json")


def mine(data: list[str], model_or_run: str, out: str | Path, s: MineSettings) -> dict:
    """Mine negatives for every line of the `data` JSONL files into `out`; returns (and writes next to
    `out` as OUT.json) the settings, per-task counts and timings."""
    t0 = time.perf_counter()
    s.check()
    out = Path(out)
    if any(Path(d).resolve() == out.resolve() for d in data):
        raise MiningError(f"OUT {out} is one of the DATA files; write the mined data to a new file")
    if model_or_run not in LEXICAL:
        resolve_model(model_or_run, s)
    elif s.pooling is not None:
        raise MiningError(f"--pooling applies to model folders; {model_or_run} scores text without a model")
    objs, examples = read_pairs(data)
    corpus = read_corpus(s.corpus) if s.corpus else []
    pools = build_pools(examples, corpus, s.keep_given)
    for pool in pools:
        if len(pool.texts) - 1 < s.range_lo:
            raise MiningError(f"task {pool.task!r}: {len(pool.texts)} distinct candidate texts ({len(pool.texts) - 1} "
                              f"besides a query's positive), fewer than the range start {s.range_lo}; lower --range "
                              "or add candidates with --corpus")
    t_read = time.perf_counter()
    if model_or_run in LEXICAL:
        scorer = LexicalScorer(model_or_run, examples)
    else:
        scorer = EmbeddingScorer(load_embedder(model_or_run, s), examples, pools, s)
    t_encode = time.perf_counter()
    mined: list[list[str]] = [[] for _ in examples]
    tasks = {}
    n_chunks = sum(math.ceil(len(p.rows) / _chunk_size(len(p.texts))) for p in pools)
    bar = tqdm(total=n_chunks, desc="score", unit="chunk")
    for pool in pools:
        tasks[pool.task] = _mine_pool(scorer, pool, s, mined, bar)
    bar.close()
    t_score = time.perf_counter()
    task_added = 0
    for obj, ex, negs in zip(objs, examples, mined):
        obj["negative"] = _merge(ex.negatives, negs) if s.keep_given else negs
        if "task" not in obj:  # the default task is the input file's name; OUT's name would merge tasks
            obj["task"] = ex.task
            task_added += 1
    _write_jsonl(out, objs)
    stats = {"data": list(data), "model": model_or_run, "out": str(out), "settings": asdict(s),
             "examples": len(examples), "corpus_texts": len(corpus), "task_field_added": task_added,
             "short_queries": sum(t["short"] for t in tasks.values()), "tasks": tasks,
             "seconds": {"read": t_read - t0, "encode": t_encode - t_read, "score": t_score - t_encode,
                         "total": time.perf_counter() - t0}}
    atomic_write_text(stats_path(out), json.dumps(stats, indent=2) + "\n")
    return stats


def _mine_pool(scorer, pool: TaskPool, s: MineSettings, mined: list[list[str]], bar) -> dict:
    """Fill mined[row] for every line of one task, a chunk of queries at a time; returns its counts."""
    scorer.begin(pool)
    counts = {"queries": len(pool.rows), "pool": len(pool.texts), "mined": 0, "short": 0, "margin_skipped": 0}
    pos_sum = neg_sum = 0.0
    chunk = _chunk_size(len(pool.texts))
    for start in range(0, len(pool.rows), chunk):
        part = range(start, min(start + chunk, len(pool.rows)))
        rows = [pool.rows[j] for j in part]
        scores_CP = scorer.scores(rows).float()
        pos_C = scores_CP[torch.arange(len(part)), torch.tensor([pool.pos[j] for j in part])].tolist()
        for c, j in enumerate(part):
            scores_CP[c, pool.excluded[j]] = float("-inf")
        idx_CW, s_CW = ranked_window(scores_CP, s.range_lo, s.range_hi)
        for c, j in enumerate(part):
            window = [(i, sc) for i, sc in zip(idx_CW[c].tolist(), s_CW[c].tolist()) if sc != float("-inf")]
            chosen, skipped = pick(window, pos_C[c], pool.given[j], rows[c], s)
            mined[rows[c]] = [pool.texts[i] for i in chosen]
            counts["mined"] += len(chosen)
            counts["short"] += len(chosen) < s.num
            counts["margin_skipped"] += skipped
            pos_sum += pos_C[c]
            neg_sum += sum(dict(window)[i] for i in chosen)
        bar.update(1)
    counts["mean_positive_score"] = pos_sum / max(counts["queries"], 1)
    counts["mean_negative_score"] = neg_sum / max(counts["mined"], 1)
    return counts


def _chunk_size(pool_size: int) -> int:
    """Queries per scoring step: keeps the (C, P) score matrix near 16M floats (64 MB)."""
    return max(1, min(4096, (1 << 24) // max(pool_size, 1)))


def _merge(given: list[str], mined: list[str]) -> list[str]:
    """Given negatives first, then mined ones, each text once (whitespace-normalised)."""
    seen, merged = set(), []
    for text in given + mined:
        key = normalize(text)
        if key not in seen:
            seen.add(key)
            merged.append(text)
    return merged
