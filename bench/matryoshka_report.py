"""Matryoshka report (issue 16) from bench/matryoshka.sh: offline-suite scores of the quickstart trained with
and without objective.infonce.matryoshka_dims, each scored at the full 576 dimensions and truncated to 144
(1/4) and 72 (1/8).

  python bench/matryoshka_report.py --work /tmp/mrl --out bench/results/matryoshka_YYYYMMDD
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report_io import environment, write_report  # noqa: E402

RUNS = {"plain": "quickstart as shipped (InfoNCE on the full embedding)",
        "matryoshka": "the same with matryoshka_dims [576, 288, 144, 72], weights 1"}
DIMS = (576, 144, 72)


def _mean(scores: dict) -> float:
    return sum(scores.values()) / max(1, len(scores))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = {run: {dim: json.loads((work / f"{run}.eval{dim}" / "scores.json").read_text()) for dim in DIMS}
              for run in RUNS}
    train_s = {}
    for run in RUNS:
        rows = [json.loads(line) for line in open(work / run / "metrics.jsonl")]
        train_s[run] = sum(r.get("step_time_s", 0.0) for r in rows)
    lines = ["| run | setting | " + " | ".join(f"suite mean @ {d}" for d in DIMS) + " | kept at 144 | tasks up at 144 |",
             "|---|---|" + "---|" * (len(DIMS) + 2)]
    for run, setting in RUNS.items():
        means = [_mean(scores[run][d]) for d in DIMS]
        up = sum(scores[run][144][t] > scores["plain"][144][t] for t in scores[run][144]) if run != "plain" else ""
        lines.append(f"| {run} | {setting} | " + " | ".join(f"**{m:.3f}**" for m in means)
                     + f" | {means[1] / means[0]:.1%} | {f'{up}/8 vs plain' if up != '' else ''} |")
    tasks = list(scores["plain"][DIMS[0]])
    cols = [(run, d) for run in RUNS for d in DIMS]
    lines += ["", "| task | " + " | ".join(f"{r} @ {d}" for r, d in cols) + " |", "|---|" + "---|" * len(cols)]
    for t in tasks:
        lines.append(f"| {t.replace('Embedtrain', '')} | " + " | ".join(f"{scores[r][d][t]:.3f}" for r, d in cols) + " |")
    env = environment() | {"suite": "data/suite (embedtrain build-eval-suite), 8 tasks"}
    notes = ("\n- train_s in matryoshka.json is wall time of the 60 steps; the two runs did not have the CPU to "
             "themselves, so it is no speed comparison (the extra prefix losses cost little next to the model).\n")
    write_report(out, "matryoshka", lines, env, {"scores": {r: {str(d): s for d, s in v.items()}
                                                            for r, v in scores.items()}, "train_s": train_s}, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
