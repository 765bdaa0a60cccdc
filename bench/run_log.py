"""A training run directory's log as the quality and ablation reports read it: embedtrain.run_summary's reader
(`embedtrain info` and model cards read runs the same way)."""
from __future__ import annotations

from embedtrain.run_summary import read_run_log

__all__ = ["read_run_log"]
