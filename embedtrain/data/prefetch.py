"""Reading and tokenizing the next step's micro-batches on a background thread while this step trains.

Only MicroBatchBuilder.prepare runs there (file or Arrow reads and the Rust tokenizer, which releases the GIL);
packing stays on the training thread because ranks agree on stream counts with a collective. The builder's
tokenizer is its own copy, so evaluation on the training thread never shares a tokenizer object with the
background one. The batches are the same as without prefetching (data.prefetch: false), only earlier.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class Prefetcher:
    """take(step) returns step's prepared micro-batches and starts preparing step + 1."""

    def __init__(self, prepare_step: Callable[[int], list], last_step: int, enabled: bool = True):
        self.prepare_step, self.last_step, self.enabled = prepare_step, last_step, enabled
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="embedtrain-prefetch") if enabled else None
        self.pending: tuple[int, Future] | None = None

    def take(self, step: int) -> tuple[list, float]:
        """(prepared micro-batches of `step`, seconds the caller waited for them)."""
        t0 = time.perf_counter()
        if self.pending is not None and self.pending[0] == step:
            prepared = self.pending[1].result()
        else:  # the first step, a resume, or prefetching off
            prepared = self.prepare_step(step)
        waited = time.perf_counter() - t0
        self.pending = None
        if self.enabled and step + 1 < self.last_step:
            self.pending = (step + 1, self.pool.submit(self.prepare_step, step + 1))
        return prepared, waited

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
