"""Scanning a JSONL file for the index: every line validated, each good line's byte offset, line number and task
kept in arrays (8 + 8 + 4 bytes a line, not Python objects). A big file is cut at line boundaries into byte
ranges that worker processes scan in parallel: a first pass counts each range's lines, so that messages name
the true file:line. One process indexes; data/shared_index.py gives the result to the other ranks.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field

import numpy as np

from embedtrain.data.rows import DataError, parse_example, parse_row

PARALLEL_BYTES = 32 << 20  # files above this are scanned by several processes
READ = 16 << 20


@dataclass
class Scan:
    offset: np.ndarray  # (N,) int64 byte offset of each good line
    line_no: np.ndarray  # (N,) int64, 1-based
    row: np.ndarray  # (N,) int64: index among the file's non-blank lines (generated shards: the target row)
    task_of: np.ndarray  # (N,) int32 into tasks
    tasks: list[str]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    error: str | None = None  # the first bad line's message when bad lines are not skipped


def _bounds(path: str, parts: int) -> list[int]:
    """parts + 1 byte positions, each (but the ends) just after a newline."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(cuts[-1], size * k // parts))
            f.readline()
            if f.tell() < size:
                cuts.append(f.tell())
    return sorted(set(cuts)) + [size]


def _count_lines(args) -> tuple[int, int]:
    """(newlines, non-blank lines) in [start, end)."""
    path, start, end = args
    lines = rows = 0
    with open(path, "rb") as f:
        f.seek(start)
        while f.tell() < end:
            raw = f.readline()
            if not raw:
                break
            lines += 1
            rows += bool(raw.strip())
    return lines, rows


def _scan(args) -> Scan:
    path, start, end, first_line, first_row, default_task, generated, skip_bad = args
    offsets, line_nos, rows, task_of, tasks = [], [], [], [], {}
    skipped, reasons = 0, []
    with open(path, "rb") as f:
        f.seek(start)
        pos, n, row = start, first_line, first_row - 1
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            line_start, pos, n = pos, pos + len(raw), n + 1
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) carry no example
            row += 1
            try:
                text = raw.decode("utf-8")
                if generated:
                    task = parse_row(text, f"{path}:{n}").get("task", default_task)
                else:
                    task = parse_example(text, f"{path}:{n}", default_task).task
            except (UnicodeDecodeError, DataError) as exc:
                message = f"{path}:{n}: not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
                if not skip_bad:
                    return Scan(*_arrays(offsets, line_nos, rows, task_of), list(tasks), skipped, reasons, message)
                skipped += 1
                if len(reasons) < 5:
                    reasons.append(message)
                continue
            offsets.append(line_start)
            line_nos.append(n)
            rows.append(row)
            task_of.append(tasks.setdefault(task, len(tasks)))
    return Scan(*_arrays(offsets, line_nos, rows, task_of), list(tasks), skipped, reasons)


def _arrays(offsets, line_nos, rows, task_of):
    return (np.array(offsets, np.int64), np.array(line_nos, np.int64), np.array(rows, np.int64),
            np.array(task_of, np.int32))


def workers() -> int:
    """EMBEDTRAIN_INDEX_WORKERS, else every core (the other ranks wait for this one: data/shared_index.py)."""
    return max(1, int(os.environ.get("EMBEDTRAIN_INDEX_WORKERS") or os.cpu_count() or 1))


def scan_file(path: str, default_task: str, generated: bool, skip_bad: bool) -> Scan:
    """Validate and index one JSONL file, in parallel byte ranges when it is big."""
    n_proc = workers() if os.path.getsize(path) > PARALLEL_BYTES else 1
    cuts = _bounds(path, n_proc * 4 if n_proc > 1 else 1)
    ranges = list(zip(cuts[:-1], cuts[1:]))
    if n_proc == 1:
        parts = [_scan((path, ranges[0][0], ranges[0][1], 0, 0, default_task, generated, skip_bad))]
    else:
        with multiprocessing.get_context("fork").Pool(n_proc) as pool:
            counts = pool.map(_count_lines, [(path, a, b) for a, b in ranges])
            first_lines = np.cumsum([0] + [c[0] for c in counts])
            first_rows = np.cumsum([0] + [c[1] for c in counts])
            parts = pool.map(_scan, [(path, a, b, int(first_lines[i]), int(first_rows[i]), default_task, generated,
                                      skip_bad) for i, (a, b) in enumerate(ranges)])
    failed = next((p.error for p in parts if p.error), None)
    if failed:
        return Scan(*_arrays([], [], [], []), [], 0, [], failed)
    tasks: dict[str, int] = {}
    remapped = []
    for p in parts:  # chunk-local task ids -> the file's
        lookup = np.array([tasks.setdefault(t, len(tasks)) for t in p.tasks] or [0], np.int32)
        remapped.append(lookup[p.task_of])
    cat = np.concatenate
    return Scan(cat([p.offset for p in parts]), cat([p.line_no for p in parts]), cat([p.row for p in parts]),
                cat(remapped).astype(np.int32), list(tasks), sum(p.skipped for p in parts),
                [r for p in parts for r in p.reasons][:5])
