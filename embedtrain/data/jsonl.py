"""JSON Lines reader for (query, positive, negatives) examples, METHODS.md section 4.

The whole file is validated up front (a bad line fails the run before the model loads, naming
file:line), but only byte offsets and task ids are kept in memory; each rank re-reads just the lines
of its own shard when it needs them. A folder in the file list is an `embedtrain generate` output
(data/generated.py): its rows are (query, response) examples with a teacher target each.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtrain.config.schema import DataSource
from embedtrain.data.generated import MANIFEST, TargetReader, load_manifest, shard_stem
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
    file_id, offset, line_no, task_id, rows = [], [], [], [], []
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
        if arrow is not None:
            target_files.append(None)
            n_bad = _index_arrow(arrow, fi, skip_bad_lines, tasks, (file_id, offset, line_no, rows, task_id), reasons)
            skipped += n_bad
            continue
        p = Path(path)
        if not p.is_file():
            raise DataError(f"data file not found: {path} (data.train lists local JSONL files or "
                            "`embedtrain generate` output folders)")
        target_files.append(target_file)
        pos, row = 0, -1
        with open(p, "rb") as f:
            for n, raw in enumerate(f, start=1):
                start, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue  # blank lines (e.g. a trailing newline) carry no example
                row += 1
                where = f"{path}:{n}"
                try:
                    if target_file is None:
                        ex = parse_example(raw.decode("utf-8"), where, default_task)
                    else:
                        ex = parse_row(raw.decode("utf-8"), where)
                        ex = Example(ex["query"], ex["response"], [], ex.get("task", default_task), None)
                except UnicodeDecodeError:
                    err = DataError(f"{where}: not valid UTF-8")
                except DataError as exc:
                    err = exc
                else:
                    err = None
                if err is not None:
                    if not skip_bad_lines:
                        raise DataError(f"{err} (fix the line, or set data.skip_bad_lines: true to skip "
                                        "and count bad lines)")
                    skipped += 1
                    if len(reasons) < 5:
                        reasons.append(str(err))
                    continue
                file_id.append(fi)
                offset.append(start)
                line_no.append(n)
                rows.append(row)
                task_id.append(tasks.setdefault(ex.task, len(tasks)))
    if skipped:
        log.warning("skipped %d bad data line(s) (data.skip_bad_lines); the first %d:\n  %s", skipped,
                    min(5, skipped), "\n  ".join(reasons))
    if not offset:
        raise DataError(f"no examples in {', '.join(s.path for s in sources)}")
    if len(dims) > 1:
        raise DataError(f"generated folders in data.train have teacher targets of different sizes {sorted(dims)}; "
                        "train on folders made with one teacher")
    teacher_dim = dims.pop() if dims and all(t is not None for t in target_files) else None
    file_id = np.array(file_id, np.int32)
    return JsonlIndex([f[0] for f in files], file_id, np.array(offset, np.int64),
                      np.array(line_no, np.int64), np.array(task_id, np.int32), list(tasks), skipped,
                      target_files, np.array(rows, np.int64), teacher_dim,
                      source_id=np.array(file_source, np.int32)[file_id], sources=sources,
                      readers=[f[3] for f in files])


def is_arrow_source(path: str) -> bool:
    """A Parquet file, a folder of Parquet shards, or a `datasets` save_to_disk folder (data/arrow.py)."""
    p = Path(path)
    if p.is_dir():
        return not (p / MANIFEST).is_file() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()
                                                 or any(p.glob("*.parquet")))
    return p.suffix == ".parquet"


def _index_arrow(arrow, fi: int, skip_bad_lines: bool, tasks: dict[str, int], columns: tuple,
                 reasons: list[str]) -> int:
    """Validate an Arrow entry's rows at once and append the good ones to the index columns; the bad count."""
    bad, row_tasks, problems = arrow.validate()
    if problems and not skip_bad_lines:
        row, what = min(problems)
        raise DataError(f"{arrow.where(row)}: {what} (fix the row, or set data.skip_bad_lines: true to skip and "
                        "count bad rows)")
    reasons.extend(f"{arrow.where(r)}: {w}" for r, w in sorted(problems)[:max(0, 5 - len(reasons))])
    good = np.flatnonzero(~bad)
    file_id, offset, line_no, rows, task_id = columns
    file_id.extend([fi] * len(good))
    offset.extend(good.tolist())
    line_no.extend((good + 1).tolist())
    rows.extend(good.tolist())
    task_id.extend(tasks.setdefault(row_tasks[r], len(tasks)) for r in good)
    return int(bad.sum())
