"""Ablation report (issue 13) from the runs of bench/ablation.sh: one table of suite means and deltas
against the reference run (the InfoNCE quickstart as shipped), the per-task scores beside the baselines
of bench/results/quality_*, the two paper-claim checks, and held-out learning curves (PNG).

  python bench/ablation_report.py --work /tmp/abl --baselines bench/results/quality_20261203 \
      --out bench/results/ablation_20261203 [--reuse pool_last=bench/results/quality_20261203/scores.json:quickstart_eos_as_was]
      [--earlier bench/results/ablation_20261203/ablation.json]

WORK/NAME.eval/scores.json is `embedtrain eval --suite` of the exported run, WORK/NAME/metrics.jsonl and
eval.json its training log. --reuse takes a run's suite scores from an earlier report instead (its curve
is then missing); --earlier takes whole runs (scores and curves) from an earlier ablation.json, for runs
WORK does not hold; the report names the source of each.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report_io import environment  # noqa: E402
from run_log import read_run_log  # noqa: E402

# name -> (factor, setting, the run it is compared with)
RUNS = {
    "reference": ("reference", "quickstart as shipped: mean pooling, causal, LoRA r16 lr 5e-4, tau 0.02, "
                  "1 given co-hyponym negative", None),
    "pool_last": ("pooling", "last (EOS state)", "reference"),
    "bidirectional": ("attention", "bidirectional (no MNTP adaptation)", "reference"),
    "full_ft": ("LoRA vs full", "full fine-tuning, lr 5e-5", "reference"),
    "tau_0.05": ("temperature", "tau 0.05", "reference"),
    "no_hard_neg": ("hard negatives", "off (in-batch only)", "reference"),
    "mined_neg": ("mined vs given", "1 negative mined with the untrained base (ranks 10-50)", "reference"),
    "anchor_eos": ("anchor stage I + II", "stage I (30 steps reconstruction) + stage II, EOS pooling", "pool_last"),
    "anchor_mean": ("anchor stage I + II", "stage I (EOS anchor) + stage II with mean pooling", "reference"),
    "compression": ("compression tokens", "LLM2Vec-Gen quickstart: 2 + 8 tokens, frozen LLM, MiniLM teacher",
                    "teacher_minilm"),
    "compression_walign": ("compression loss weights", "the compression quickstart with w_align 384 (L_align "
                           "summed over the 384 teacher dims)", "compression"),
    "compression_mix": ("compression data", "900 requests from the ten-task set (question / summary / paraphrase), "
                        "112 steps", "compression"),
    "compression_mix_walign": ("compression loss weights", "as compression_mix, w_align 384 (L_align summed over "
                               "the 384 teacher dims)", "compression_mix"),
    "compression_mix_self": ("compression teacher", "as compression_mix, teacher: the untrained SmolLM2 itself, "
                             "mean pooling (the paper's kind: an unsupervised embedder of the same backbone)",
                             "base_mean"),
}


def _mean(scores: dict) -> float:
    return sum(scores.values()) / max(1, len(scores))


def curve(run: Path) -> dict | None:
    """Held-out retrieval by step: step 0 from eval.json's before, then every eval row of metrics.jsonl."""
    if not (run / "metrics.jsonl").is_file():
        return None
    steps, evals, before = read_run_log(run)
    points = ([{"step": 0, "mrr": before["mrr"], "recall@1": before.get("recall@1")}] if before else []) + [
        {"step": r["step"], "mrr": r["eval/retrieval/mrr"], "recall@1": r.get("eval/retrieval/recall@1")}
        for r in evals if "eval/retrieval/mrr" in r]
    return {"points": points, "final_loss": steps[-1]["loss"] if steps else None,
            "train_s": sum(r.get("step_time_s", 0.0) for r in steps) or None}


def plots(runs: dict, baselines: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, 4.8))
    names = list(runs)
    means = [runs[n]["mean"] for n in names]
    bars.barh(range(len(names)), means, color=["tab:blue" if n == "reference" else "tab:gray" for n in names])
    bars.set_yticks(range(len(names)), names, fontsize=8)
    bars.invert_yaxis()
    for (name, scores), style in zip(baselines.items(), (":", "--", "-.")):
        bars.axvline(_mean(scores), linestyle=style, color="black", label=f"{name} {_mean(scores):.3f}")
    bars.set_xlabel("offline suite, mean main score (8 tasks)")
    bars.legend(fontsize=7, loc="lower right")
    colors = plt.cm.tab20.colors
    for i, (name, run) in enumerate(runs.items()):
        if run.get("curve") and run["curve"]["points"]:
            p = run["curve"]["points"]
            # compression recipes score their own held-out sets: dashed, not comparable with the rest
            lines.plot([x["step"] for x in p], [x["mrr"] for x in p], marker="o", color=colors[i % len(colors)],
                       linestyle="--" if name.startswith("compression") else "-", label=name)
    lines.set_xlabel("training step")
    lines.set_ylabel("held-out MRR (each recipe's eval.retrieval)")
    lines.set_title("dashed: compression recipes, their own held-out sets", fontsize=8)
    lines.grid(alpha=0.3)
    lines.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--baselines", required=True, help="a bench/results/quality_* folder (base_mean, tfidf, ...)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reuse", action="append", default=[], help="NAME=REPORT_SCORES_JSON:COLUMN")
    ap.add_argument("--earlier", action="append", default=[],
                    help="an earlier ablation.json: its runs (scores and curves) fill in runs WORK does not have")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baselines = {b: json.loads((Path(args.baselines) / b / "scores.json").read_text())
                 for b in ("base_mean", "tfidf", "teacher_minilm")}
    reused = {}
    for item in args.reuse:
        name, _, src = item.partition("=")
        path, _, column = src.rpartition(":")
        reused[name] = (json.loads(Path(path).read_text())["scores"][column], f"{path}:{column}")
    earlier = {}
    for path in args.earlier:
        for name, run in json.loads(Path(path).read_text())["runs"].items():
            earlier.setdefault(name, dict(run, source=f"{path} ({run.get('source', 'this run')})"))
    runs = {}
    for name, (factor, setting, against) in RUNS.items():
        done = work / f"{name}.eval" / "scores.json"
        run_curve = None
        if done.is_file():
            scores, source, run_curve = json.loads(done.read_text()), "this run", curve(work / name)
        elif name in reused:
            scores, source = reused[name]
        elif name in earlier:
            scores, source, run_curve = earlier[name]["scores"], earlier[name]["source"], earlier[name].get("curve")
        else:
            continue
        runs[name] = {"factor": factor, "setting": setting, "compared_with": against, "scores": scores,
                      "mean": _mean(scores), "source": source, "curve": run_curve}
    everything = {**runs, **{b: {"scores": s, "mean": _mean(s)} for b, s in baselines.items()}}
    lines = ["| run | factor | setting | suite mean | vs | delta | tasks up | held-out MRR before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        vs = everything.get(r["compared_with"]) if r["compared_with"] else None
        delta = f"{r['mean'] - vs['mean']:+.3f}" if vs else ""
        up = f"{sum(r['scores'][t] > vs['scores'][t] for t in r['scores'])}/{len(r['scores'])}" if vs else ""
        p = (r["curve"] or {}).get("points") or []
        held = f"{p[0]['mrr']:.3f} -> {p[-1]['mrr']:.3f}" if len(p) > 1 else "(earlier run)"
        tag = "" if r["source"] == "this run" else " \\*"
        lines.append(f"| {name}{tag} | {r['factor']} | {r['setting']} | **{r['mean']:.3f}** | "
                     f"{r['compared_with'] or ''} | {delta} | {up} | {held} |")
    names = list(everything)
    tasks = list(baselines["base_mean"])
    lines += ["", "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in tasks:
        lines.append(f"| {t.replace('Embedtrain', '')} | "
                     + " | ".join(f"{everything[n]['scores'].get(t, float('nan')):.3f}" for n in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{everything[n]['mean']:.3f}**" for n in names) + " |")
    env = environment() | {"baselines": args.baselines,
           "reused": {k: v[1] for k, v in reused.items()},
           "from_earlier_reports": {k: r["source"] for k, r in runs.items() if r["source"] != "this run"
                                    and k not in reused}}
    (out / "ablation.json").write_text(json.dumps({"runs": runs, "baselines": baselines, "env": env,
                                                    "notes": args.note}, indent=1))
    text = "\n".join(lines) + "\n\n```json\n" + json.dumps(env, indent=1) + "\n```\n"
    notes = args.note + (["\\* scored in an earlier report, same suite revision (`from_earlier_reports` above)"]
                         if env["from_earlier_reports"] or reused else [])
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (out / "table.md").write_text(text)
    plots(runs, baselines, out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
