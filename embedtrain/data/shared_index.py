"""One rank indexes the data, every rank gets the index: ranks do not each parse the whole of data.train.

Rank 0 validates and indexes (data/jsonl.py, in parallel worker processes); the arrays go to the other
ranks by broadcast (no shared filesystem needed), and a validation error reaches every rank as the same
DataError, before any model loads. Arrow entries are opened on every rank (memory-mapped: the cache rank 0
made is reused) but validated once.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from embedtrain import distributed as D
from embedtrain.config.schema import DataSource
from embedtrain.data.jsonl import DataError, JsonlIndex, build_index, is_arrow_source

log = logging.getLogger(__name__)
ARRAYS = ("file_id", "offset", "line_no", "task_id", "row", "source_id")


def build_index_once(sources: list[DataSource], skip_bad_lines: bool, device) -> JsonlIndex:
    t0 = time.perf_counter()
    if D.world_size() == 1:
        index = build_index(sources, skip_bad_lines)
        log.info("indexed %d examples in %.1f s", len(index), time.perf_counter() - t0)
        return index
    index, error = None, None
    if D.rank() == 0:
        try:
            index = build_index(sources, skip_bad_lines)
        except DataError as exc:
            error = str(exc)
    meta = None if index is None else {
        "files": index.files, "tasks": index.tasks, "skipped": index.skipped, "target_files": index.target_files,
        "teacher_dim": index.teacher_dim, "shapes": {k: (len(getattr(index, k)), getattr(index, k).dtype.str)
                                                     for k in ARRAYS}}
    error, meta = D.broadcast_object((error, meta), device)
    if error:
        raise DataError(error)
    arrays = {k: D.broadcast_array(getattr(index, k) if index is not None else np.empty(n, np.dtype(dt)), device)
              for k, (n, dt) in meta["shapes"].items()}
    if index is None:
        index = JsonlIndex(meta["files"], arrays["file_id"], arrays["offset"], arrays["line_no"], arrays["task_id"],
                           meta["tasks"], meta["skipped"], meta["target_files"], arrays["row"], meta["teacher_dim"],
                           source_id=arrays["source_id"], sources=sources, readers=_readers(sources, meta["files"]))
    log.info("indexed %d examples in %.1f s (on rank 0, shared with %d other rank(s))", len(index),
             time.perf_counter() - t0, D.world_size() - 1)
    return index


def _readers(sources: list[DataSource], files: list[str]) -> list:
    """Per index file: an ArrowSource for Arrow entries (opened here, not validated again), else None."""
    arrow = {}
    for i, src in enumerate(sources):
        if is_arrow_source(src.path):
            from embedtrain.data.arrow import ArrowSource  # optional dependency, these entries only

            arrow[src.path] = ArrowSource(src, f"data.train[{i}]")
    return [arrow.get(f) for f in files]
