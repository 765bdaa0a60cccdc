"""Deterministic, resumable order of same-task global micro-batches, and each rank's shard of them.

Global batch k (the examples of optimizer step k, counting across epochs; the trainer splits it into
micro-batches and each rank takes its slice) is a pure function of (seed, k): resuming only needs k. Within an epoch every task's examples are shuffled and cut into
global batches of `global_batch` examples; the batches of all tasks are then shuffled together.
A task's tail that does not fill a batch is left for the next epoch's reshuffle (counted and logged).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from embedtrain.config.schema import DataConfig
from embedtrain.data.jsonl import Example, JsonlIndex
from embedtrain.data.mixing import MixedBatchOrder
from embedtrain.data.packing import PackedStream, TextTokenizer, TokenizedText, pack_on_every_rank

log = logging.getLogger(__name__)


class BatchOrder:
    def __init__(self, index: JsonlIndex, global_batch: int, seed: int, same_task: bool = True):
        self.index, self.global_batch, self.seed, self.same_task = index, global_batch, seed, same_task
        groups = [np.flatnonzero(index.task_id == t) for t in range(len(index.tasks))] if same_task \
            else [np.arange(len(index))]
        self.groups = groups
        self.batches_per_epoch = sum(len(g) // global_batch for g in groups)
        if self.batches_per_epoch == 0:
            raise ValueError(f"no task has train.batch_size={global_batch} examples; sizes: "
                             + ", ".join(f"{index.tasks[t]}={len(g)}" for t, g in enumerate(groups))
                             if same_task else f"only {len(index)} examples for a batch of {global_batch}")
        self.left_per_epoch = sum(len(g) % global_batch for g in groups)
        if self.left_per_epoch:
            log.info("%d example(s) per epoch do not fill a same-task batch of %d; they wait for another "
                     "epoch's shuffle", self.left_per_epoch, global_batch)
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for g in self.groups:
            perm = g[rng.permutation(len(g))]
            usable = len(perm) - len(perm) % self.global_batch
            batches.extend(perm[:usable].reshape(-1, self.global_batch))
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._epoch_cache = (epoch, batches)
        return batches

    def global_batch_ids(self, k: int) -> np.ndarray:
        """Example ids of global batch k (optimizer step k): (global_batch,)."""
        return self._epoch(k // self.batches_per_epoch)[k % self.batches_per_epoch]


def make_batch_order(index: JsonlIndex, global_batch: int, seed: int, data: DataConfig):
    """BatchOrder (every example once per epoch: entries share steps by size), or, with data.mixing weights /
    temperature or a data.train entry's max_examples, a MixedBatchOrder (data/mixing.py)."""
    if data.mixing == "size" and all(s.max_examples is None for s in index.sources):
        return BatchOrder(index, global_batch, seed, data.same_task_batches)
    order = MixedBatchOrder(index, global_batch, seed, data.same_task_batches, data.mixing, data.mixing_temperature)
    log.info("data mix (data.mixing: %s), share of steps: %s", data.mixing, order.describe())
    return order


@dataclass
class MicroBatch:
    """One rank's share of a global micro-batch, packed.

    `texts` are numbered queries [0, Q), positives [Q, 2Q), then every query's hard negatives, in order.
    """

    streams: list[PackedStream]
    texts: list[TokenizedText]
    num_queries: int
    task: str
    truncated: int
    # Packing parameters, for objectives that pack further streams (decoding passes).
    max_tokens: int = 0
    pad_id: int = 0
    pad_multiple: int = 1

    @property
    def real_tokens(self) -> int:
        return sum(s.num_real_tokens for s in self.streams)

    @property
    def computed_tokens(self) -> int:
        return sum(s.num_tokens for s in self.streams)


def instruction_for(ex: Example, instructions: dict[str, str], default: str | None) -> str | None:
    """A line's own instruction wins over the recipe's per-task one, then the recipe's default."""
    return ex.instruction or instructions.get(ex.task, default)


class MicroBatchBuilder:
    """Reads, formats and packs one rank's examples of a global micro-batch (a collective when the world
    size is above 1: ranks agree on the number of packed streams)."""

    def __init__(self, index: JsonlIndex, text_tok: TextTokenizer, max_tokens: int, pad_to_multiple_of: int,
                 instructions: dict[str, str], default_instruction: str | None, max_negatives: int | None = None,
                 device=None, make_batch=None):
        self.index, self.text_tok, self.max_negatives = index, text_tok, max_negatives
        self.device = device if device is not None else torch.device("cpu")
        self.max_tokens, self.multiple = max_tokens, pad_to_multiple_of
        self.instructions, self.default_instruction = instructions, default_instruction
        self.make_batch = make_batch  # an objective's own formatting and packing (examples -> MicroBatch)

    def instruction_for(self, ex: Example) -> str | None:
        return instruction_for(ex, self.instructions, self.default_instruction)

    def read(self, example_ids) -> list[Example]:
        """The examples, each with at most max_negatives hard negatives (the first ones)."""
        examples = [self.index.read(int(i)) for i in example_ids]
        if self.max_negatives is not None:
            for e in examples:
                del e.negatives[self.max_negatives:]
        return examples

    def build(self, example_ids: np.ndarray) -> MicroBatch:
        return self.finish(self.prepare(example_ids))

    def prepare(self, example_ids: np.ndarray):
        """The part without collectives, safe on a background thread (data/prefetch.py): read the examples
        and, for the standard packing, tokenize them."""
        examples = self.read(example_ids)
        return examples if self.make_batch is not None else (examples, self.tokenize(examples))

    def finish(self, prepared) -> MicroBatch:
        """Pack what prepare() made (ranks agree on the stream count: a collective, on the training thread)."""
        if self.make_batch is not None:
            return self.make_batch(prepared)
        return self.from_examples(*prepared)

    def tokenize(self, examples: list[Example]) -> list[TokenizedText]:
        """Queries (with instruction), then positives, then every query's negatives."""
        queries = self.text_tok.encode([e.query for e in examples], [self.instruction_for(e) for e in examples])
        return queries + self.text_tok.encode([e.positive for e in examples] + [n for e in examples for n in e.negatives])

    def from_examples(self, examples: list[Example], texts: list[TokenizedText] | None = None) -> MicroBatch:
        texts = self.tokenize(examples) if texts is None else texts
        streams = pack_on_every_rank(texts, self.max_tokens, self.text_tok.pad_id, self.multiple, self.device)
        return MicroBatch(streams, texts, len(examples), examples[0].task if examples else "",
                          sum(t.truncated for t in texts),
                          self.max_tokens, self.text_tok.pad_id, self.multiple)


def rank_slice(global_ids: np.ndarray, rank: int, world: int) -> np.ndarray:
    per_rank = len(global_ids) // world
    return global_ids[rank * per_rank:(rank + 1) * per_rank]
