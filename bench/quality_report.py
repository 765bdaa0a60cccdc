"""Quality report (issue 13): exported runs scored by `embedtrain eval --suite`, beside the untrained base
(mean and EOS pooling, at the model's own context) and TF-IDF / all-MiniLM-L6-v2, in one table; learning
curves (suite scores logged during training, eval.every_steps) as JSON and a PNG.

  python bench/quality_report.py --suite /tmp/q/suite --out bench/results/quality_20261203 \
      --run qs_last=/tmp/q/runs/qs_last.eval --run qs_mean=/tmp/q/runs/qs_mean.eval \
      --curve qs_mean=/tmp/q/runs/qs_mean --note "qs_last: the quickstart as it was" ...

--run NAME=DIR reads DIR/scores.json, the output of `embedtrain eval EXPORTED --suite S --output DIR`.
--curve NAME=RUN_DIR reads RUN_DIR/metrics.jsonl (rows with eval/suite/* keys). Baselines are computed
once and reused from OUT/<baseline>/scores.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_log import read_run_log  # noqa: E402


def _pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} {item!r}: expected NAME=PATH")
        out[name] = Path(path)
    return out


def curves(runs: dict[str, Path]) -> dict[str, dict]:
    """name -> {"steps": [...], "<key>": [...]} from the eval rows of each run's metrics.jsonl."""
    got = {}
    for name, run in runs.items():
        _, rows, before = read_run_log(run)
        keys = sorted({k for r in rows for k in r if k.startswith("eval/")})
        got[name] = {"steps": [r["step"] for r in rows], **{k: [r.get(k) for r in rows] for k in keys},
                     "eval_time_s": [r["eval_time_s"] for r in rows]}
        if before:  # eval.retrieval on the untrained model: the curve's step 0
            got[name]["retrieval_before"] = {"step": 0, **before}
    return got


def plot(curve: dict[str, dict], baselines: dict[str, dict[str, float]], path: Path) -> None:
    """Left: the mean of the suite tasks logged during training, with each baseline's mean over the same
    tasks; right: held-out retrieval MRR (eval.retrieval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    tasks = sorted({k[len("eval/suite/"):] for c in curve.values() for k in c
                    if k.startswith("eval/suite/") and k != "eval/suite/mean"})
    for name, c in curve.items():
        if "eval/suite/mean" in c:
            left.plot(c["steps"], c["eval/suite/mean"], marker="o", label=name)
        if "eval/retrieval/mrr" in c:
            start = [(0, c["retrieval_before"]["mrr"])] if "retrieval_before" in c else []
            points = start + list(zip(c["steps"], c["eval/retrieval/mrr"]))
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    styles = (":", "--", "-.", (0, (1, 3)))
    for (name, scores), style in zip(baselines.items(), styles):
        if tasks and all(t in scores for t in tasks):
            value = sum(scores[t] for t in tasks) / len(tasks)
            left.axhline(value, linestyle=style, color="gray", label=f"{name} {value:.3f}")
    left.set_title("suite tasks scored during training: " + ", ".join(t.replace("Embedtrain", "") for t in tasks),
                   fontsize=8)
    right.set_title("held-out pairs (eval.retrieval)", fontsize=8)
    for ax, label in ((left, "mean main score"), (right, "MRR")):
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    from embedtrain.api import from_base
    from embedtrain.evaluation.mteb_run import embedder_encoder, evaluate_encoder, load_instructions, make_encoder
    from embedtrain.evaluation.suite_tasks import suite_tasks
    from quality_table import teacher_encoder, tfidf_encoder, write_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", required=True)
    ap.add_argument("--base", default="models/smollm2-135m-instruct")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"quality_{time.strftime('%Y%m%d')}"))
    ap.add_argument("--run", action="append", default=[], help="NAME=DIR with scores.json from embedtrain eval")
    ap.add_argument("--curve", action="append", default=[], help="NAME=RUN_DIR with eval rows in metrics.jsonl")
    ap.add_argument("--note", action="append", default=[], help="a line for the report (commands, settings)")
    ap.add_argument("--baselines", nargs="*", default=["base_mean", "base_eos", "tfidf", "teacher_minilm"])
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = suite_tasks(args.suite)
    instructions = load_instructions(None, args.suite)
    build = {
        # max_length None: the model's trained context, as `embedtrain eval` encodes an exported model
        "base_mean": lambda: embedder_encoder(from_base(args.base, pooling="mean"), "base_mean", dict(instructions)),
        "base_eos": lambda: embedder_encoder(from_base(args.base, pooling="last"), "base_eos", dict(instructions)),
        "tfidf": lambda: tfidf_encoder(args.suite, make_encoder),
        "teacher_minilm": lambda: teacher_encoder(make_encoder),
    }
    scores, seconds = {}, {}
    for name in args.baselines:
        done = out / name / "scores.json"
        if done.is_file():
            scores[name] = json.loads(done.read_text())
            continue
        t0 = time.perf_counter()
        scores[name] = evaluate_encoder(build[name](), tasks, out / name, name)
        seconds[name] = time.perf_counter() - t0
    for name, folder in _pairs(args.run, "--run").items():
        scores[name] = json.loads((folder / "scores.json").read_text())
    args.infonce = args.anchor = args.compression = None  # write_table's run record: replaced by runs
    write_table(out, tasks, scores, seconds, args)
    record = json.loads((out / "scores.json").read_text())
    record["env"]["runs"] = {k: str(v) for k, v in _pairs(args.run, "--run").items()}
    record["notes"] = args.note
    table = (out / "table.md").read_text().split("```json")[0]  # write_table's run record names its own columns
    (out / "table.md").write_text(table + "```json\n" + json.dumps(record["env"], indent=1) + "\n```\n")
    if args.curve:
        c = curves(_pairs(args.curve, "--curve"))
        record["curves"] = c
        plot(c, {k: v for k, v in scores.items() if k in args.baselines}, out / "learning_curve.png")
    (out / "scores.json").write_text(json.dumps(record, indent=1))
    if args.note:
        with open(out / "table.md", "a") as f:
            f.write("\n" + "\n".join(f"- {n}" for n in args.note) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
