"""Share of step time spent waiting on data, with and without the background prefetch (issue 15).

  python bench/data_wait.py --out bench/results/data_wait_YYYYMMDD [--model models/smollm2-135m-instruct]

Trains the same recipe twice (data.prefetch false, then true; then both again, interleaved) on the quickstart
pairs and reads metrics.jsonl: data_s (reading, tokenizing unless prefetched, packing) over step_time_s, per
step after the first (the first step cannot be prefetched). Default model: a tiny random chatml model, whose
short steps make the data share visible; --model runs a real one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report_io import environment, write_report  # noqa: E402

from embedtrain.tiny import make_tiny_model  # noqa: E402

DATA = ROOT / "recipes" / "quickstart" / "data" / "train.jsonl"


def run(recipe: Path, out: Path, prefetch: bool, steps: int) -> list[dict]:
    cmd = [sys.executable, "-m", "embedtrain", "train", str(recipe), "--set", f"run.output_dir={out}",
           "--set", f"data.prefetch={str(prefetch).lower()}", "--set", f"train.steps={steps}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return [json.loads(line) for line in open(out / "metrics.jsonl")][1:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)
    env = environment() | {"model": args.model or "tiny random chatml (hidden 64, 2 layers)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="data-wait-"))
    model = args.model or str(make_tiny_model("chatml", work / "model"))
    recipe = work / "r.yaml"
    recipe.write_text(f"""
run: {{progress_bar: false, log_every: 1000}}
model: {{path: {model}, family: chatml, pooling: mean, lora: {{enabled: true, r: 16, alpha: 32}}}}
data: {{train: [{DATA}], max_length: 128, max_negatives: 1, max_tokens_per_batch: 4096,
        instructions: {{wordnet_def2lemma: Retrieve the word}}}}
train: {{batch_size: 16, lr: 5.0e-4}}
""")
    rows = {False: [], True: []}
    for rep in range(2):  # interleaved: off, on, off, on
        for prefetch in (False, True):
            rows[prefetch] += run(recipe, work / f"{rep}-{prefetch}", prefetch, args.steps)
    summary = {}
    for prefetch, rs in rows.items():
        share = [r["data_s"] / r["step_time_s"] for r in rs]
        summary["prefetch" if prefetch else "no prefetch"] = {
            "steps": len(rs), "data_s_mean": statistics.mean(r["data_s"] for r in rs),
            "step_time_s_mean": statistics.mean(r["step_time_s"] for r in rs), "data_share_mean": statistics.mean(share),
            "data_share_median": statistics.median(share)}
    lines = ["| mode | steps | data s / step | step s | share of step time waiting on data (mean / median) |",
             "|---|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['steps']} | {s['data_s_mean'] * 1e3:.1f} ms | {s['step_time_s_mean'] * 1e3:.0f} ms | "
                     f"{s['data_share_mean']:.1%} / {s['data_share_median']:.1%} |")
    write_report(out, "data_wait", lines, env, {"summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
