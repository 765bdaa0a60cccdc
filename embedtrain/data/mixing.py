"""Weighted mixing of data.train entries (data.mixing: weights | temperature) and data.train[i].max_examples.

Every step draws one group (a data.train entry's examples of one task: batches stay same-task) with the
mix's probability, then takes that group's next batch. Group g's j-th batch is batch j % n of its epoch
j // n (a seeded permutation per group and epoch): within an epoch of a group every example is used once.
Draws come in blocks of BLOCK steps, each block from its own seeded generator, so the batch of step k is a
pure function of (seed, k): exact resume needs only k, as with BatchOrder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from embedtrain.data.jsonl import DataError, JsonlIndex

log = logging.getLogger(__name__)
BLOCK = 4096
_DRAW, _GROUP, _SUBSET = 0x6D6978, 0x677270, 0x737562  # stream tags of the seeded generators


def entry_names(index: JsonlIndex) -> list[str]:
    """A short, distinct label per data.train entry (file name, with its folder when names repeat)."""
    names = [Path(s.path).name for s in index.sources]
    return [s.path if names.count(n) > 1 else n for s, n in zip(index.sources, names)]


def subset_ids(index: JsonlIndex, seed: int) -> np.ndarray:
    """Example ids after each entry's max_examples (a seeded random subset of that entry; all otherwise)."""
    keep = []
    for e, src in enumerate(index.sources):
        ids = np.flatnonzero(index.source_id == e)
        if src.max_examples is not None and len(ids) > src.max_examples:
            pick = np.random.default_rng([seed, _SUBSET, e]).permutation(len(ids))[:src.max_examples]
            ids = np.sort(ids[pick])
        keep.append(ids)
    return np.concatenate(keep)


def entry_probabilities(sizes: list[int], mixing: str, weights: list[float | None], temperature: float) -> np.ndarray:
    if mixing == "weights":
        w = np.array([1.0 if x is None else x for x in weights])
    elif mixing == "temperature":
        w = np.array(sizes, dtype=np.float64) ** (1.0 / temperature)
    else:  # size
        w = np.array(sizes, dtype=np.float64)
    return w / w.sum()


class MixedBatchOrder:
    """BatchOrder's interface (global_batch_ids(k), batches_per_epoch) for weighted or capped mixes."""

    def __init__(self, index: JsonlIndex, global_batch: int, seed: int, same_task: bool, mixing: str,
                 temperature: float):
        self.index, self.global_batch, self.seed = index, global_batch, seed
        ids = subset_ids(index, seed)
        self.names = entry_names(index)
        sizes = [int((index.source_id[ids] == e).sum()) for e in range(len(index.sources))]
        p_entry = entry_probabilities(sizes, mixing, [s.weight for s in index.sources], temperature)
        self.groups, self.group_entry, probs, dropped = [], [], [], []
        for e in range(len(index.sources)):
            mine = ids[index.source_id[ids] == e]
            parts = [mine[index.task_id[mine] == t] for t in np.unique(index.task_id[mine])] if same_task else [mine]
            usable = [g for g in parts if len(g) >= global_batch]
            dropped += [(e, len(g)) for g in parts if len(g) < global_batch]
            if not usable:
                raise DataError(f"data.train entry {index.sources[e].path}: no task has train.batch_size="
                                 f"{global_batch} examples ({sizes[e]} in all); add examples or lower the batch size")
            total = sum(len(g) for g in usable)
            for g in usable:  # within an entry, its tasks share its probability by size
                self.groups.append(g)
                self.group_entry.append(e)
                probs.append(p_entry[e] * len(g) / total)
        if dropped:
            log.info("mixing: %d task group(s) with fewer than %d examples are not used: %s", len(dropped),
                     global_batch, ", ".join(f"{self.names[e]} ({n})" for e, n in dropped))
        self.probs = np.array(probs) / sum(probs)
        self.entry_probs = np.bincount(self.group_entry, weights=self.probs, minlength=len(index.sources))
        self.per_epoch = [len(g) // global_batch for g in self.groups]
        self.batches_per_epoch = sum(self.per_epoch)
        self._blocks: dict[int, np.ndarray] = {}
        self._cum = [np.zeros(len(self.groups), np.int64)]  # draws per group before block b
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    def _block(self, b: int) -> np.ndarray:
        if b not in self._blocks:
            self._blocks[b] = np.random.default_rng([self.seed, _DRAW, b]).choice(len(self.groups), BLOCK, p=self.probs)
        return self._blocks[b]

    def _draws_before(self, k: int) -> np.ndarray:
        """Draws of every group in steps [0, k)."""
        b, i = divmod(k, BLOCK)
        while len(self._cum) <= b:
            self._cum.append(self._cum[-1] + np.bincount(self._block(len(self._cum) - 1), minlength=len(self.groups)))
        return self._cum[b] + np.bincount(self._block(b)[:i], minlength=len(self.groups))

    def global_batch_ids(self, k: int) -> np.ndarray:
        g = int(self._block(k // BLOCK)[k % BLOCK])
        j = int(self._draws_before(k)[g])
        epoch, r = divmod(j, self.per_epoch[g])
        cached = self._perm.get(g)
        if cached is None or cached[0] != epoch:
            cached = self._perm[g] = (epoch, np.random.default_rng([self.seed, _GROUP, g, epoch]).permutation(len(self.groups[g])))
        return self.groups[g][cached[1][r * self.global_batch:(r + 1) * self.global_batch]]

    def realised(self, steps: int) -> dict[str, float]:
        """Share of the first `steps` steps that each data.train entry got."""
        per_entry = np.bincount(self.group_entry, weights=self._draws_before(steps), minlength=len(self.names))
        return {n: float(c) / max(1, steps) for n, c in zip(self.names, per_entry)}

    def describe(self) -> str:
        return ", ".join(f"{n} {p:.1%}" for n, p in zip(self.names, self.entry_probs))
