"""A training run directory's log as the quality and ablation reports read it."""
from __future__ import annotations

import json
from pathlib import Path


def read_run_log(run: Path) -> tuple[list[dict], list[dict], dict | None]:
    """(rows with a training loss, rows with an in-training evaluation, eval.json's "before": eval.retrieval
    on the untrained model, the curves' step 0, or None) of RUN/metrics.jsonl and RUN/eval.json."""
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    before = json.loads((run / "eval.json").read_text()).get("before") if (run / "eval.json").is_file() else None
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_time_s" in r], before
