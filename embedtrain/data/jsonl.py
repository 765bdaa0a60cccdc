"""JSON Lines reader for (query, positive, negatives) examples, METHODS.md section 4.

The whole file is validated up front (a bad line fails the run before the model loads, naming
file:line), but only byte offsets and task ids are kept in memory; each rank re-reads just the lines
of its own shard when it needs them. A folder in the file list is an `embedtrain generate` output
(data/generated.py): its rows are (query, response) examples with a teacher target each. Parquet files and
folders and `datasets` folders are read through data/arrow.py (an offset is then the row in the entry).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtrain.config.schema import DataSource
from embedtrain.data.generated import MANIFEST, TargetReader, load_manifest, shard_stem
from embedtrain.data.jsonl_scan import Scan, scan_file
from embedtrain.data.rows import PAIR_FIELDS, DataError, Example, parse_example, parse_row

__all__ = ["PAIR_FIELDS", "DataError", "Example", "JsonlIndex", "build_index", "parse_example"]

log = logging.getLogger(__name__)


@dataclass
class JsonlIndex:
    """Validated examples of one or more files: where each line is, and its task."""

    files: list[str]
    file_id: np.ndarray  # (E,) int32
    offset: np.ndarray  # (E,) int64 byte offset of the line
    line_no: np.ndarray  # (E,) int64, 1-based, for messages
    task_id: np.ndarray  # (E,) int32 index into tasks
    tasks: list[str]
    skipped: int = 0
    # Generated data: per file its teacher-target safetensors (None for pair files), the row of each
    # example in it, and the target dimension (None unless every file has targets).
    target_files: list[str | None] | None = None
    row: np.ndarray | None = None  # (E,) int64
    teacher_dim: int | None = None
    _targets: object = None
    source_id: np.ndarray | None = None  # (E,) int32: which data.train entry the example comes from
    sources: list | None = None  # the data.train entries (DataSource), in order
    readers: list | None = None  # per file: its ArrowSource (Parquet / datasets entry), None for JSONL

    def __len__(self) -> int:
        return len(self.offset)

    def read(self, i: int) -> Example:
        fid = int(self.file_id[i])
        reader = self.readers[fid] if self.readers else None
        if reader is not None:  # offset: the row in the Arrow entry
            return reader.example(int(self.offset[i]), self.tasks[self.task_id[i]])
        path = self.files[fid]
        with open(path, "rb") as f:
            f.seek(int(self.offset[i]))
            line = f.readline().decode("utf-8")
        target_file = self.target_files[fid] if self.target_files else None
        if target_file is None:
            return parse_example(line, f"{path}:{self.line_no[i]}", Path(path).stem)
        obj = parse_row(line, f"{path}:{self.line_no[i]}")
        if self._targets is None:
            self._targets = TargetReader()
        return Example(obj["query"], obj["response"], [], self.tasks[self.task_id[i]], obj.get("instruction"),
                       self._targets.read(target_file, int(self.row[i])))


def build_index(paths: list[str | DataSource], skip_bad_lines: bool = False) -> JsonlIndex:
    """Scan and validate every line of every data.train entry (a path, or a DataSource). Bad lines raise,
    or with skip_bad_lines are counted and logged."""
    sources = [DataSource(path=str(p)) if isinstance(p, (str, Path)) else p for p in paths]
    parts = []  # per file: (file id, byte offset or Arrow row, line number, row, task id) arrays
    tasks: dict[str, int] = {}
    skipped, reasons = 0, []
    files, target_files, dims, file_source = [], [], set(), []
    for si, src in enumerate(sources):
        path = src.path
        first = len(files)
        if is_arrow_source(path):
            from embedtrain.data.arrow import ArrowSource  # pyarrow + datasets: optional, for these entries only

            files.append((path, None, None, ArrowSource(src, f"data.train[{si}]")))
        elif Path(path).is_dir():
            meta = load_manifest(path)
            dims.add(meta["teacher_dim"])
            for shard in meta["shards"]:
                stem = str(Path(path) / shard_stem(shard["index"]))
                files.append((f"{stem}.jsonl", f"{stem}.safetensors", Path(path).name, None))
        elif src.columns:
            raise DataError(f"data.train[{si}] ({path}): columns apply to Parquet and datasets entries; a JSONL "
                            "line names its fields itself")
        else:
            files.append((path, None, Path(path).stem, None))
        file_source += [si] * (len(files) - first)
    for fi, (path, target_file, default_task, arrow) in enumerate(files):
        target_files.append(target_file)
        if arrow is not None:
            scan = _scan_arrow(arrow, skip_bad_lines)
        elif not Path(path).is_file():
            raise DataError(f"data file not found: {path} (data.train lists local JSONL files, Parquet files or "
                            "folders, datasets folders, or `embedtrain generate` output folders)")
        else:
            scan = scan_file(path, default_task, target_file is not None, skip_bad_lines)
        if scan.error:
            raise DataError(f"{scan.error} (fix the line, or set data.skip_bad_lines: true to skip and count bad "
                            "lines)")
        lookup = np.array([tasks.setdefault(t, len(tasks)) for t in scan.tasks] or [0], np.int32)
        parts.append((np.full(len(scan.offset), fi, np.int32), scan.offset, scan.line_no, scan.row,
                      lookup[scan.task_of]))
        skipped += scan.skipped
        reasons.extend(scan.reasons[:max(0, 5 - len(reasons))])
    if skipped:
        log.warning("skipped %d bad data line(s) (data.skip_bad_lines); the first %d:\n  %s", skipped,
                    min(5, skipped), "\n  ".join(reasons))
    if not parts or not sum(len(part[0]) for part in parts):
        raise DataError(f"no examples in {', '.join(s.path for s in sources)}")
    if len(dims) > 1:
        raise DataError(f"generated folders in data.train have teacher targets of different sizes {sorted(dims)}; "
                        "train on folders made with one teacher")
    teacher_dim = dims.pop() if dims and all(t is not None for t in target_files) else None
    file_id, offset, line_no, rows, task_id = (np.concatenate(c) for c in zip(*parts))
    return JsonlIndex([f[0] for f in files], file_id, offset, line_no, task_id, list(tasks), skipped, target_files,
                      rows, teacher_dim, source_id=np.array(file_source, np.int32)[file_id], sources=sources,
                      readers=[f[3] for f in files])


def is_arrow_source(path: str) -> bool:
    """A Parquet file, a folder of Parquet shards, or a `datasets` save_to_disk folder (data/arrow.py)."""
    p = Path(path)
    if p.is_dir():
        return not (p / MANIFEST).is_file() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()
                                                 or any(p.glob("*.parquet")))
    return p.suffix == ".parquet"


def _scan_arrow(arrow, skip_bad_lines: bool) -> Scan:
    """An Arrow entry's rows, validated at once, as a Scan (offset and row: the row in the entry)."""
    bad, codes, names, problems = arrow.validate()
    messages = [f"{arrow.where(r)}: {w}" for r, w in sorted(problems)]
    if messages and not skip_bad_lines:
        return Scan(*[np.zeros(0, np.int64)] * 3, np.zeros(0, np.int32), [], 0, [], messages[0])
    good = np.flatnonzero(~bad)
    # tasks numbered by first appearance among the good rows, as a JSONL scan numbers them
    used, first = np.unique(codes[good], return_index=True)
    ordered = used[np.argsort(first)]
    renumber = np.zeros(len(names), np.int32)
    renumber[ordered] = np.arange(len(ordered), dtype=np.int32)
    return Scan(good.astype(np.int64), good + 1, good.astype(np.int64), renumber[codes[good]],
                [names[c] for c in ordered], int(bad.sum()), messages[:5])
