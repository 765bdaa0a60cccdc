"""data.train entries stored as Arrow: Parquet files or folders of shards, and `datasets` save_to_disk folders.

They are read through the datasets library: Parquet is converted once into its memory-mapped Arrow cache, a
save_to_disk folder is mapped as it is, and rows are read on demand (never all held as Python objects). A
column map takes sentence-transformers-style tables as they are:
  {path: nli.parquet, columns: {query: anchor, positive: positive, negative: [negative_1, negative_2]}}
Rows are validated like JSONL lines, column by column (Arrow compute), and an error names file:row.
pyarrow and datasets are optional dependencies: data/jsonl.py imports this module only for such entries.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedtrain.config.schema import DataSource
from embedtrain.data.rows import PAIR_FIELDS, DataError, Example

INSTALL_HINT = "pip install 'embedtrain[arrow]' (the datasets library)"


def _strings(col: pa.Array) -> bool:
    return pa.types.is_string(col.type) or pa.types.is_large_string(col.type)


def _blank(col: pa.Array) -> np.ndarray:
    """Rows whose string is null or only whitespace."""
    empty = pc.equal(pc.utf8_trim_whitespace(col), "")
    return np.asarray(pc.or_kleene(pc.is_null(col), pc.fill_null(empty, True)).to_numpy(zero_copy_only=False))


def _arrow_cache(shards: list[Path], columns: list[str]) -> Path:
    """The Parquet shards' used columns as one Arrow stream file in the datasets cache (made once, keyed by the
    shards' paths, sizes and times and the columns), written a small batch at a time with the system allocator:
    memory stays near one batch, where datasets' own Parquet builder peaks at ~1.7x the Parquet size."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in shards]
    key = hashlib.sha1(json.dumps([stats, columns]).encode()).hexdigest()[:20]
    root = Path(os.environ.get("HF_DATASETS_CACHE") or Path.home() / ".cache" / "huggingface" / "datasets")
    target = root / "embedtrain_parquet" / f"{key}.arrow"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())  # gives freed batches back to the OS (mimalloc keeps them)
    try:
        first = pq.ParquetFile(shards[0]).schema_arrow
        schema = pa.schema([first.field(c) for c in columns])
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for f in shards:
                reader = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
                for batch in reader.iter_batches(batch_size=65536, columns=columns, use_threads=False):
                    if not batch.schema.equals(schema):
                        raise DataError(f"{f}: columns {batch.schema} differ from those of {shards[0]} ({schema})")
                    writer.write_batch(batch)
    finally:
        pa.set_memory_pool(previous)
    os.replace(tmp, target)
    return target


class ArrowSource:
    """One Arrow-backed data.train entry: its rows, validated, and Example reads by row."""

    def __init__(self, src: DataSource, label: str):
        try:
            import datasets  # optional dependency: only Arrow entries need it
        except ImportError:
            raise DataError(f"{label} ({src.path}) is a Parquet / datasets entry: {INSTALL_HINT}") from None
        path = Path(src.path)
        self.default_task = path.stem if path.is_file() else path.name
        if path.is_dir() and not any(path.glob("*.parquet")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                raise DataError(f"{src.path} is a DatasetDict with splits {sorted(ds)}: name one split's folder "
                                f"(e.g. {path / sorted(ds)[0]})")
            self.files = [(str(path), len(ds))]
            self.columns = self._column_map(src, ds.column_names, label)
            ds = ds.select_columns(self.used())
        else:
            shards = [path] if path.is_file() else sorted(path.glob("*.parquet"))
            self.files = [(str(f), pq.ParquetFile(f).metadata.num_rows) for f in shards]
            self.columns = self._column_map(src, pq.ParquetFile(shards[0]).schema_arrow.names, label)
            ds = datasets.Dataset.from_file(str(_arrow_cache(shards, self.used())))  # memory-mapped
        self.starts = np.cumsum([0] + [n for _, n in self.files])
        self.ds = ds

    def used(self) -> list[str]:
        return list(dict.fromkeys(c for cols in self.columns.values() for c in ([cols] if isinstance(cols, str) else cols)))

    def _column_map(self, src: DataSource, names: list[str], label: str) -> dict:
        given = dict(src.columns or {})
        mapping = {f: given.get(f, f) for f in PAIR_FIELDS if f in given or f in names}
        for field in ("query", "positive"):
            if field not in mapping:
                raise DataError(f"{src.path}: no {field!r} column (columns: {', '.join(names)}); map one with "
                                f"{label}.columns: {{{field}: COLUMN}}")
        for field, cols in mapping.items():
            for col in [cols] if isinstance(cols, str) else cols:
                if col not in names:
                    raise DataError(f"{src.path}: {label}.columns.{field}: no column {col!r} (columns: "
                                    f"{', '.join(names)})")
        return mapping

    def __len__(self) -> int:
        return int(self.starts[-1])

    def where(self, row: int) -> str:
        f = int(np.searchsorted(self.starts, row, side="right")) - 1
        return f"{self.files[f][0]}:row {row - self.starts[f] + 1}"

    def validate(self, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, str]]]:
        """(bad rows mask, task code per row, task names, [(row, what is wrong)] for some bad rows), a chunk of
        rows at a time (Arrow compute on memory-mapped batches: no full copy of a column)."""
        n = len(self)
        bad, codes, names, problems = np.zeros(n, bool), np.zeros(n, np.int32), {self.default_task: 0}, []
        start = 0
        for part in self._batches(chunk):
            if start == 0:
                for field in ("query", "positive", "task", "instruction"):
                    if field in self.columns:
                        self._need_strings(part.column(self.columns[field]), field)
            self._validate_part(part, start, bad, problems)
            if "task" in self.columns:
                encoded = pc.dictionary_encode(part.column(self.columns["task"]))
                lookup = np.array([names.setdefault(t, len(names)) for t in encoded.dictionary.to_pylist()] or [0],
                                  np.int32)
                idx = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                codes[start:start + len(idx)] = np.where(idx >= 0, lookup[np.maximum(idx, 0)], 0)
            start += part.num_rows
        return bad, codes, list(names), problems

    def _batches(self, chunk: int):
        """The used columns a batch of rows at a time, read from the Arrow files into memory freed batch by batch
        (not through the memory map: reading a whole mapped file would keep all of it resident)."""
        for f in self.ds.cache_files:
            with pa.OSFile(f["filename"]) as source:
                for batch in pa.ipc.open_stream(source, memory_pool=pa.system_memory_pool()):
                    yield batch.select(self.used())

    def _validate_part(self, part: pa.RecordBatch, start: int, bad: np.ndarray, problems: list) -> None:
        n = part.num_rows
        mine = bad[start:start + n]  # a view: flags land in `bad`

        def flag(mask: np.ndarray, what: str) -> None:
            new = mask & ~mine
            if len(problems) < 20:
                problems.extend((start + int(r), what) for r in np.flatnonzero(new)[:5])
            mine[:] |= mask

        for field in ("query", "positive"):
            flag(_blank(part.column(self.columns[field])), f"field {field!r} (column {self.columns[field]!r}) is "
                                                           "missing or empty")
        negs = self.columns.get("negative")
        for col_name in [] if negs is None else [negs] if isinstance(negs, str) else negs:
            col = part.column(col_name)
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                values = pc.list_flatten(col)
                if len(values) and not _strings(values):
                    raise DataError(f"{self.files[0][0]}: column {col_name!r} (negative) holds {col.type}, expected strings")
                lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
                blank_rows = np.zeros(n, bool)
                blank_rows[np.repeat(np.arange(n), lengths)[_blank(values)]] = True
                flag(blank_rows, f"a negative (column {col_name!r}) is missing or empty")
            else:
                self._need_strings(col, "negative")
                flag(_blank(col), f"field 'negative' (column {col_name!r}) is missing or empty")
        for field in ("task", "instruction"):
            if field in self.columns:
                col = part.column(self.columns[field])
                present = ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False))
                flag(present & _blank(col), f"field {field!r} (column {self.columns[field]!r}) must be a "
                                            "non-empty string when present")

    def _need_strings(self, col: pa.Array, field: str) -> None:
        if not _strings(col):
            raise DataError(f"{self.files[0][0]}: column {self.columns[field]!r} ({field}) holds {col.type}, "
                            "expected strings")

    def example(self, row: int, task: str) -> Example:
        r = self.ds[int(row)]
        negs = self.columns.get("negative")
        if negs is None:
            negatives = []
        elif isinstance(negs, str):
            value = r[negs]
            negatives = [] if value is None else [value] if isinstance(value, str) else list(value)
        else:
            negatives = [r[c] for c in negs]
        instruction = r.get(self.columns["instruction"]) if "instruction" in self.columns else None
        return Example(r[self.columns["query"]], r[self.columns["positive"]], negatives, task, instruction)
