"""What bench/peer_sentence_transformers.py reports: one row per setting and side (means over repeats), the
checks (same start, same first loss, same tokens; the speed and quality goals), how far runs drift apart, and
the markdown + JSON under bench/results/.

Drift: both sides compute the same loss on the same batches from the same weights, so a gap between them only
means something when it is larger than what reruns of one side already show."""
from __future__ import annotations

from pathlib import Path

from report_io import write_report

SIDES = ("embedtrain", "sentence-transformers")


def world_sizes(args) -> list[int]:
    return [int(w) for w in args.world_sizes.split(",") if w]


def settings(args) -> list[tuple[int, bool]]:
    out = []
    for world in world_sizes(args):
        gathers = [True] if world == 1 else [g == "on" for g in args.gather.split(",")]
        out += [(world, g) for g in gathers]
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def max_loss_gap(a: dict, b: dict) -> tuple[float, int]:
    """Largest |loss difference| over the steps of two runs, and the (1-based) step where it is."""
    gaps = [abs(x - y) for x, y in zip(a["losses"], b["losses"])]
    k = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[k], k + 1


def repeat_gap(runs: list[dict]) -> float | None:
    """Largest per-step loss difference between a side's first run and its other repeats (None: one run)."""
    return max(max_loss_gap(runs[0], r)[0] for r in runs[1:]) if len(runs) > 1 else None


def suite_over_repeats(runs: list[dict], suites: dict) -> tuple[dict | None, list[float]]:
    """Per-task scores averaged over the repeats that were evaluated, and each evaluated repeat's mean."""
    scored = [suites[r["name"]] for r in runs if r["name"] in suites]
    if not scored:
        return None, []
    mean = {t: sum(s[t] for s in scored) / len(scored) for t in scored[0]}
    return mean, [s["mean"] for s in scored]


def _fmt(x: float | None) -> str:
    return "one run" if x is None else f"{x:.2e}"


def drift_checks(where: str, et_runs: list[dict], st_runs: list[dict], et_means: list[float],
                 st_means: list[float]) -> list[dict]:
    """Measured, not goals: the loss curves' gap between the sides vs within each side; and, where both sides
    have two or more evaluated repeats, whether the suite gap is inside the larger run-to-run range."""
    gap, step = max_loss_gap(et_runs[0], st_runs[0])
    out = [{"check": f"loss curves, largest per-step gap ({where})", "pass": None,
            "value": f"embedtrain vs ST {gap:.2e} (step {step}); ST repeats {_fmt(repeat_gap(st_runs))}; "
                     f"embedtrain repeats {_fmt(repeat_gap(et_runs))}"}]
    if len(et_means) > 1 and len(st_means) > 1:
        d = _mean(et_means) - _mean(st_means)
        spread = max(max(et_means) - min(et_means), max(st_means) - min(st_means))
        out.append({"check": f"suite gap within the sides' run-to-run range ({where})", "pass": abs(d) <= spread,
                    "value": f"|{d:+.4f}| vs range {spread:.4f} (embedtrain "
                             f"{', '.join(f'{m:.4f}' for m in et_means)}; ST {', '.join(f'{m:.4f}' for m in st_means)})"})
    return out


def aggregate(args, runs: list[dict], suites: dict, lora_init: str | None = None) -> tuple[list[dict], list[dict]]:
    """One row per (setting, side): means over repeats; and the checks (same start, loss parity, same tokens,
    goals, drift). lora_init: the fingerprint of the initial LoRA weights every run must have started from."""
    rows, checks = [], []
    for world, gather in settings(args):
        by_side = {}
        for side in SIDES:
            rs = [r for r in runs if r["side"] == side and r["world"] == world and r["gather"] == gather]
            by_side[side] = rs
            suite, suite_each = suite_over_repeats(rs, suites)
            row = {"world": world, "gather": gather, "side": side, "repeats": len(rs),
                   **{k: _mean([r[k] for r in rs]) for k in ("real_tok_s", "examples_s", "step_s", "efficiency",
                                                              "peak_rss_gib", "peak_rss_gib_sum")},
                   "real_tok_s_each": [round(r["real_tok_s"], 1) for r in rs],
                   "first_loss": rs[0]["first_loss"], "last_loss": rs[0]["losses"][-1],
                   "suite": suite, "suite_mean_each": suite_each}
            rows.append(row)
        et, st = by_side["embedtrain"][0], by_side["sentence-transformers"][0]
        where = f"world {world}" + ("" if world == 1 else f", gather {'on' if gather else 'off'}")
        if args.lora_dropout == 0:
            diff = abs(et["first_loss"] - st["first_loss"])
            ok = diff <= args.tolerance * max(1.0, abs(st["first_loss"]))
            checks.append({"check": f"first-step loss agrees ({where})", "pass": ok,
                           "value": f"{et['first_loss']:.6f} vs {st['first_loss']:.6f} (|diff| {diff:.2e})"})
        else:
            checks.append({"check": f"first-step loss agrees ({where})", "pass": None,
                           "value": "not compared: LoRA dropout > 0 makes step 1 random on both sides"})
        if lora_init:
            inits = {x for r in by_side["embedtrain"] + by_side["sentence-transformers"] for x in r["init_lora"]}
            checks.append({"check": f"same initial LoRA weights, every run and rank ({where})",
                           "pass": inits == {lora_init}, "value": "; ".join(sorted(inits))})
        same = et["real_tokens"] == st["real_tokens"]
        checks.append({"check": f"same real tokens every step ({where})", "pass": same,
                       "value": f"{sum(et['real_tokens'])} vs {sum(st['real_tokens'])}"})
        e_row, s_row = rows[-2], rows[-1]
        ratio = e_row["real_tok_s"] / s_row["real_tok_s"]
        checks.append({"check": f"embedtrain / ST real tokens/s >= 1.5 ({where})", "pass": ratio >= 1.5,
                       "value": f"{ratio:.2f}x"})
        if e_row["suite"] and s_row["suite"]:
            d = e_row["suite"]["mean"] - s_row["suite"]["mean"]
            checks.append({"check": f"embedtrain suite mean >= ST's ({where})", "pass": d >= 0,
                           "value": f"{e_row['suite']['mean']:.4f} vs {s_row['suite']['mean']:.4f} ({d:+.4f})"})
        checks += drift_checks(where, by_side["embedtrain"], by_side["sentence-transformers"],
                               e_row["suite_mean_each"], s_row["suite_mean_each"])
    return rows, checks


def report(args, out: Path, rows, checks, runs, data, env, elapsed_s: float) -> None:
    lines = [f"# embedtrain vs sentence-transformers ({env['date'][:10]}, commit {env['commit']})", "",
             f"{args.model}, {args.pooling} pooling, LoRA r={args.lora_r} alpha={args.lora_alpha} dropout="
             f"{args.lora_dropout}, {args.steps} steps of {args.batch_size} examples, lr {args.lr} (warmup "
             f"{args.warmup}, linear), max length {args.max_length}, temperature {args.temperature} (ST scale "
             f"{1 / args.temperature:g}), {args.max_negatives} hard negative where the row has one; ST loss: "
             f"{'CachedMultipleNegativesRankingLoss' if args.st_loss == 'cached' else 'MultipleNegativesRankingLoss'}"
             f"{f' (mini-batch {args.cached_mini_batch})' if args.st_loss == 'cached' else ''}; embedtrain "
             f"{'grad_cache' if args.grad_cache else 'one graph'}, streams of {args.max_tokens_per_batch} tokens"
             f". Data: {args.data} ({data['rows']} rows, {data['with_negative']} with a negative); the same "
             f"batches in the same order on both sides. Timing leaves out the first {args.skip_steps} step(s); "
             f"{args.repeats} repeat(s), interleaved; suite scores averaged over "
             f"{'every repeat' if args.eval_repeats == 'all' else 'the first repeat'}.", "",
             "| world | gather | side | real tok/s | examples/s | s/step | real/computed tokens | peak RSS GiB "
             "(max rank / sum) | loss step 1 | loss last | suite mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        suite = f"{r['suite']['mean']:.4f}" if r["suite"] else "-"
        if len(r["suite_mean_each"]) > 1:
            suite += f" ({', '.join(f'{m:.4f}' for m in r['suite_mean_each'])})"
        lines.append(f"| {r['world']} | {'on' if r['gather'] else 'off'} | {r['side']} | {r['real_tok_s']:.1f} "
                     f"({', '.join(map(str, r['real_tok_s_each']))}) | {r['examples_s']:.2f} | {r['step_s']:.2f} | "
                     f"{r['efficiency']:.3f} | {r['peak_rss_gib']:.2f} / {r['peak_rss_gib_sum']:.2f} | "
                     f"{r['first_loss']:.5f} | {r['last_loss']:.4f} | {suite} |")
    lines += ["", "| check | result | value |", "|---|---|---|"]
    for c in checks:
        mark = "n/a" if c["pass"] is None else ("PASS" if c["pass"] else "FAIL")
        lines.append(f"| {c['check']} | {mark} | {c['value']} |")
    suite_rows = [r for r in rows if r["suite"]]
    if suite_rows:
        tasks = [t for t in suite_rows[0]["suite"] if t != "mean"]
        lines += ["", "| world | gather | side | " + " | ".join(tasks) + " |", "|---" * (3 + len(tasks)) + "|"]
        for r in suite_rows:
            lines.append(f"| {r['world']} | {'on' if r['gather'] else 'off'} | {r['side']} | "
                         + " | ".join(f"{r['suite'][t]:.4f}" for t in tasks) + " |")
    lines += ["", f"Whole run: {elapsed_s / 60:.1f} min."]
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, "peer_sentence_transformers", lines, env,
                 {"args": vars(args), "rows": rows, "checks": checks, "runs": runs,
                  "step_tasks": data["step_tasks"]})
