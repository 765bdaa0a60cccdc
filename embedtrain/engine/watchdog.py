"""Bounded exit when a rank dies.

A rank killed mid-run (OOM killer, kill -9, a lost node) leaves the others blocked inside a collective
until the process-group timeout (30 minutes by default), and a launcher on another node never learns
of it. Every rank therefore runs a thread that bumps a heartbeat counter in the process group's
store every `interval` seconds, independent of training progress (a slow step is not a death), and
checks everyone else's. A counter that has not moved for `timeout` seconds, or a store that stopped
answering (it lives with rank 0), ends this process with a message naming the rank. Counters, not
timestamps: nodes' clocks need not agree.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

import torch.distributed as dist

log = logging.getLogger("embedtrain")
EXIT_CODE = 86
_PREFIX = "embedtrain_heartbeat/"


class RankWatchdog:
    def __init__(self, interval: float | None = None, timeout: float | None = None):
        self.interval = interval or float(os.environ.get("EMBEDTRAIN_HEARTBEAT_INTERVAL", 2))
        self.timeout = timeout or float(os.environ.get("EMBEDTRAIN_HEARTBEAT_TIMEOUT", 30))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedtrain-watchdog", daemon=True)

    def start(self) -> "RankWatchdog":
        self.store.set(f"{_PREFIX}{self.rank}", "0")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def silent_ranks(self) -> list[int]:
        """Ranks whose heartbeat does not move over three intervals: called when a collective failed (gloo
        reports a dead peer by address only) to name who is gone."""
        def snapshot():
            try:
                return {r: self.store.get(f"{_PREFIX}{r}") for r in range(self.world) if r != self.rank}
            except Exception:
                return None

        before = snapshot()
        time.sleep(3 * self.interval)
        after = snapshot()
        if before is None or after is None:
            return [0]  # the store (rank 0's process) is gone
        return [r for r in before if before[r] == after[r]]

    def _die(self, message: str) -> None:
        # os._exit: the main thread may be stuck in a collective that never returns.
        print(f"embedtrain rank {self.rank}: {message}; stopping this rank (exit {EXIT_CODE})", file=sys.stderr,
              flush=True)
        os._exit(EXIT_CODE)

    def _run(self) -> None:
        beat, seen, changed_at = 0, {}, {}
        others = [r for r in range(self.world) if r != self.rank]
        start = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            beat += 1
            try:
                self.store.set(f"{_PREFIX}{self.rank}", str(beat))
                values = {r: self.store.get(f"{_PREFIX}{r}") if self.store.check([f"{_PREFIX}{r}"]) else None
                          for r in others}
            except Exception as exc:  # the store lives in rank 0's process
                if self._stop.is_set():
                    return
                self._die(f"lost contact with the rendezvous store on rank 0's host ({type(exc).__name__}); "
                          "rank 0 has most likely died")
            for r, value in values.items():
                if value != seen.get(r):
                    seen[r], changed_at[r] = value, now
                elif now - changed_at.get(r, start) > self.timeout:
                    self._die(f"rank {r} has sent no heartbeat for {self.timeout:.0f} s: it died or its node "
                              "is unreachable (EMBEDTRAIN_HEARTBEAT_TIMEOUT sets the bound)")
