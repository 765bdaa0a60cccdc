"""Data start-up at scale (issue 15): time and peak RSS to validate and index N generated rows, JSONL vs Parquet,
world size 1 vs 2 (rank 0 indexes, the other rank receives the arrays), each measurement in a fresh process.

  python bench/data_startup.py --work /tmp/scale --rows 1000000 10000000 --out bench/results/data_startup_YYYYMMDD

Rows: an 8-word query, a 20-word positive, one 20-word negative, 4 tasks (about 340 bytes of JSON a line).
Parquet is written in 1M-row groups; its time includes datasets' one-time conversion into its Arrow cache
(a fresh cache per measurement). Peak RSS: the rank's process (ru_maxrss) and, separately, its worker
processes (the largest one; they exit before training starts). Goals: 10M rows in <= 60 s, <= 1.5 GiB per rank.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report_io import environment, write_report  # noqa: E402

MEASURE = r'''
import json, resource, sys, time, torch
from embedtrain import distributed as D
from embedtrain.config.schema import DataSource
from embedtrain.data.shared_index import build_index_once
device = D.init_distributed("gloo") if "RANK" in __import__("os").environ else torch.device("cpu")
t0 = time.perf_counter()
index = build_index_once([DataSource(sys.argv[1])], False, device)
took = time.perf_counter() - t0
kib = lambda who: resource.getrusage(who).ru_maxrss
print(json.dumps({"rank": D.rank(), "examples": len(index), "seconds": took, "peak_rss_gib": kib(resource.RUSAGE_SELF) / 2**20,
                  "worker_peak_rss_gib": kib(resource.RUSAGE_CHILDREN) / 2**20}), flush=True)
'''


def generate(work: Path, rows: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl, parquet = work / f"rows{rows}.jsonl", work / f"rows{rows}.parquet"
    if jsonl.is_file() and parquet.is_file():
        return jsonl, parquet
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    schema = pa.schema([("query", pa.string()), ("positive", pa.string()), ("negative", pa.list_(pa.string())),
                        ("task", pa.string())])
    with open(jsonl, "w") as f, pq.ParquetWriter(parquet, schema) as writer:
        for start in range(0, rows, 1_000_000):
            cols = {"query": [], "positive": [], "negative": [], "task": []}
            for i in range(start, min(rows, start + 1_000_000)):
                row = {"query": " ".join(rng.choices(words, k=8)), "positive": " ".join(rng.choices(words, k=20)),
                       "negative": [" ".join(rng.choices(words, k=20))], "task": f"t{i % 4}"}
                f.write(json.dumps(row) + "\n")
                for k, v in row.items():
                    cols[k].append(v)
            writer.write_table(pa.table(cols, schema=schema))
    return jsonl, parquet


def measure(path: Path, world: int) -> list[dict]:
    env = dict(os.environ, HF_DATASETS_CACHE=tempfile.mkdtemp(prefix="hfcache-"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", MEASURE, str(path)]
    if world > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               "--no-python", sys.executable, "-c", MEASURE, str(path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for r in out:
        r["process_wall_s"] = time.perf_counter() - t0
    return sorted(out, key=lambda r: r["rank"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    env = environment("numpy", "pyarrow") | {"index_workers": os.environ.get("EMBEDTRAIN_INDEX_WORKERS", "all cores")}
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        jsonl, parquet = generate(work, rows)
        for fmt, path in (("jsonl", jsonl), ("parquet", parquet)):
            for world in (1, 2):
                for r in measure(path, world):
                    results.append(dict(r, rows=rows, format=fmt, world=world,
                                        file_gib=path.stat().st_size / 2**30))
                    print(json.dumps(results[-1]), flush=True)
    lines = ["| rows | format | file GiB | world | rank | index s | peak RSS GiB (rank) | peak RSS GiB (largest worker) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['format']} | {r['file_gib']:.2f} | {r['world']} | {r['rank']} | "
                     f"{r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {r['worker_peak_rss_gib']:.2f} |")
    write_report(out, "data_startup", lines, env, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
