"""Stopping on request: SIGTERM (scheduler kill / scancel) and SIGUSR1 (Slurm's `--signal` warning
before the time limit) make every rank finish its current step, checkpoint, and exit with
REQUEUE_EXIT_CODE. Batch scripts behind launchers that hide exit codes read write_status()'s file
instead; `--resume` / `--auto-resume` then continues exactly."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from embedtrain import distributed as D

REQUEUE_EXIT_CODE = 85


class StopSignals:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handler) for s in signals}

    def _handler(self, signum, frame) -> None:
        self.received = signum  # acted on at the end of the step, never mid-collective

    def should_stop(self, device) -> bool:
        """Collective: true on every rank once any rank got a signal (launchers may signal some only)."""
        return bool(D.all_reduce_max_ints([int(self.received is not None)], device)[0])

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal on another rank"

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def write_status(status: str, step: int, why: str = "") -> None:
    """Tell a batch script how this run ended, through the file EMBEDTRAIN_STATUS_FILE names (the sbatch
    template sets it): "requeue" (stopped early by a signal, checkpoint written) or "done" (final weights
    written). Launchers in between hide exit codes: torchrun exits 1 after forwarding a signal even when
    the run then finished. Rank 0 writes it, atomically."""
    target = os.environ.get("EMBEDTRAIN_STATUS_FILE")
    if target and D.rank() == 0:
        path = Path(target)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(f"{status} after step {step}{': ' + why if why else ''}\n")
        os.replace(tmp, path)
