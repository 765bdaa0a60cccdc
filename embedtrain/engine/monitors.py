"""Where step metrics go besides metrics.jsonl (the source of truth): TensorBoard, Weights & Biases, CSV.

`run.report_to` picks them and rank 0 writes them, each logged step with the same keys and values as its
metrics.jsonl line (e.g. `loss`, `lr`, `eval/suite/mean`). TensorBoard and W&B are optional dependencies
(`pip install 'embedtrain[monitor]'`); W&B runs offline by default (`run.wandb_mode`), writing under the
run directory, and keeps one W&B run across --resume.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import uuid
from pathlib import Path

from embedtrain.config.schema import RecipeConfig

INSTALL_HINT = "pip install 'embedtrain[monitor]'"


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardMonitor:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
        except ImportError:
            raise RuntimeError(f"run.report_to: tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbMonitor:
    def __init__(self, run_dir: Path, cfg: RecipeConfig):
        try:
            import wandb  # optional dependency
        except ImportError:
            raise RuntimeError(f"run.report_to: wandb needs the wandb package: {INSTALL_HINT}") from None
        id_file = run_dir / "wandb_id.txt"  # one W&B run per run directory, continued by --resume
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:16])
        self.wandb = wandb
        self.run = wandb.init(project=cfg.run.wandb_project, entity=cfg.run.wandb_entity, name=run_dir.name,
                              id=id_file.read_text().strip(), resume="allow", dir=str(run_dir),
                              mode=cfg.run.wandb_mode, config=dataclasses.asdict(cfg))

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class CsvMonitor:
    """run_dir/metrics.csv in long form (step, name, value): evaluation steps add keys other steps lack."""

    def __init__(self, run_dir: Path):
        path = run_dir / "metrics.csv"
        new = not path.is_file()
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["step", "name", "value"])

    def log(self, step: int, metrics: dict) -> None:
        self.writer.writerows([step, k, repr(v)] for k, v in _scalars(metrics).items())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def open_monitors(cfg: RecipeConfig, run_dir: Path) -> list:
    """The monitors of run.report_to (call on rank 0 only), before any model loads: a missing package fails
    the run at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    make = {"tensorboard": lambda: TensorBoardMonitor(run_dir), "wandb": lambda: WandbMonitor(run_dir, cfg),
            "csv": lambda: CsvMonitor(run_dir)}
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banner would interleave with the step lines
    return [make[name]() for name in dict.fromkeys(cfg.run.report_to)]
