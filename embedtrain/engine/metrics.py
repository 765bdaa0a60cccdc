"""Step metrics: a JSON line every step, console lines every N steps, a progress bar on rank 0."""
from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger("embedtrain")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class MetricsLogger:
    """monitors: TensorBoard / W&B / CSV writers (engine/monitors.py) that get every metrics.jsonl line too."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, log_every: int, enabled: bool,
                 progress_bar: bool, monitors: list = ()):
        self.enabled, self.log_every, self.monitors = enabled, log_every, list(monitors)
        self.file = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.bar = None
        if enabled and progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        self.t_last = time.perf_counter()

    def step(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            extra = {"mfu": f"{metrics['mfu']:.1%}"} if "mfu" in metrics else {}
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                 pack=f"{metrics['packing_efficiency']:.3f}", **extra)
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        for monitor in self.monitors:
            monitor.log(step, metrics)
        if step % self.log_every == 0 or step == 1:
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            (self.bar.write if self.bar is not None else log.info)(f"step {step}: {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        for monitor in self.monitors:
            monitor.close()
        self.monitors = []
