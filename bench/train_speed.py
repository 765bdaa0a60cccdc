#!/usr/bin/env python3
"""Training speed on one GPU: packed + flash attention vs a padded baseline, for three workloads.

  stage1       Stage I reconstruction (EBQ2D + EBD2Q), full fine-tuning, ZeRO-2
  stage2       Stage II InfoNCE, 1 hard negative, LoRA r 16
  compression  compression tokens (LLM2Vec-Gen), frozen backbone
Each runs the published Llama-3.2-1B recipe (bench/speed/recipes/) on a Llama-3.2-1B-shaped random model
and a real-text length mix, twice: packed (embedtrain's trainer step: varlen streams, flash attention,
logits only at target positions) and padded (the reference implementations' way: bench/speed/padded.py).
Same model, data, optimizer and steps; each mode in its own process. Reports real tokens/s, model
TFLOP/s, MFU against this device's measured matmul rate, peak memory and both loss curves.
See bench/README.md; results go to bench/results/.
"""
from __future__ import annotations

import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the speed package, packing_throughput
REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # config fields; vocab 128256 whatever the bench tokenizer's size
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
                         tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5),
    # CPU smoke runs of the real vocabulary and the bf16 path at small width.
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=32, vocab_size=128256, tie_word_embeddings=True,
                  max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096),
}
TARGETS = {"mfu_stage1": 0.45, "ratio": 2.0, "first_loss_rel": 2e-2, "curve_rel": 2e-2}


def matmul_rate(device: torch.device, dtype: torch.dtype) -> dict:
    """Measured dense matmul TFLOP/s of this device: the MFU denominator (bf16 8192^3 on a GPU)."""
    from embedtrain.flops import measure_matmul_tflops

    n = 8192 if device.type == "cuda" else 1024
    return {"tflops": measure_matmul_tflops(device, dtype, n), "n": n, "dtype": str(dtype).replace("torch.", "")}


def environment(device: torch.device) -> dict:
    """report_io's host / version / commit record plus the GPU and the training libraries."""
    from report_io import environment as host_environment

    env = dict(host_environment("deepspeed", "peft", "flash-attn", "tokenizers"), cuda=torch.version.cuda)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["device"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    else:
        env["device"] = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return env


def prepare(a: dict, device: torch.device) -> dict:
    from embedtrain.tiny import make_random_model
    from speed.data import build_data

    work = Path(a["work"])
    data = build_data(work / "data", a["examples"], a["long_frac"], a["seed"], a["vocab"], "llama3", a["teacher_dim"])
    dtype = torch.bfloat16 if a["dtype"] == "bfloat16" else torch.float32
    shape = dict(SHAPES[a["shape"]])
    shape.setdefault("vocab_size", len(data["tokenizer"]))
    make_random_model("llama3", work / "model", data["tokenizer"], shape, a["seed"], dtype, device.type)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"pairs": data["pairs"], "generated": data["generated"], "model": str(work / "model"),
            "source": data["source"], "content_tokens": data["content_tokens"]}


def summarize(rec: dict, warmup: int, peak_tflops: float) -> dict:
    steps = rec["steps"][warmup:]
    t = sum(x["time_s"] for x in steps)
    real, computed, flops = (sum(x[k] for x in steps) for k in ("real_tokens", "computed_tokens", "flops"))
    return {"real_tok_s": real / t, "computed_tok_s": computed / t, "efficiency": real / computed,
            "tflops": flops / t / 1e12, "mfu": flops / t / 1e12 / peak_tflops, "step_s": t / len(steps),
            "peak_memory_gib": rec["peak_memory_gib"], "attention": rec["attention"],
            "params": rec["params"], "trainable": rec["trainable"]}


def compare(p: dict, q: dict, warmup: int) -> dict:
    """Loss agreement: first step (same weights, same batch) and the whole curve (relative)."""
    lp, lq = [x["loss"] for x in p["steps"]], [x["loss"] for x in q["steps"]]
    rel = [abs(x - y) / max(abs(y), 1e-6) for x, y in zip(lp, lq)]
    return {"first_loss": [lp[0], lq[0]], "first_loss_rel": rel[0], "max_curve_rel": max(rel),
            "mean_curve_rel": sum(rel) / len(rel), "losses_packed": lp, "losses_padded": lq}


def run_mode(workload: str, mode: str, a: dict, log_dir: Path) -> dict:
    out = log_dir / f"{workload}-{mode}.json"
    from embedtrain.distributed import child_env

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", workload, mode, json.dumps(a), str(out)]
    log = log_dir / f"{workload}-{mode}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(PYTHONUNBUFFERED="1")).returncode
    tail = log.read_text().splitlines()[-15:]
    if rc != 0 or not out.is_file():
        oom = any("OutOfMemoryError" in line or "out of memory" in line for line in tail)
        print(f"  {workload}/{mode} FAILED (exit {rc}{', out of memory' if oom else ''}); log {log}:\n    "
              + "\n    ".join(tail), flush=True)
        return {"error": "out of memory" if oom else f"exit {rc}", "log_tail": tail}
    rec = json.loads(out.read_text())
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def report(res: dict, a: dict, env: dict, peak: dict, prep: dict) -> tuple[str, dict]:
    rows = ["| workload | mode | attention | real tok/s | computed tok/s | real/computed | step (s) | model TFLOP/s "
            "| MFU | peak mem (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts, checks = [], {}
    for w, modes in res.items():
        for m, r in modes.items():
            if "error" in r:
                rows.append(f"| {w} | {m} | | {r['error']} | | | | | | |")
                continue
            s = r["summary"]
            rows.append(f"| {w} | {m} | {s['attention']} | {s['real_tok_s']:,.0f} | {s['computed_tok_s']:,.0f} | "
                        f"{s['efficiency']:.3f} | {s['step_s']:.3f} | {s['tflops']:.3g} | {s['mfu']:.1%} | "
                        f"{s['peak_memory_gib']:.1f} |")
        p, q = modes.get("packed", {}), modes.get("padded", {})
        c = {}
        if "summary" in p and "summary" in q:
            c = compare(p, q, a["warmup"])
            c["ratio"] = p["summary"]["real_tok_s"] / q["summary"]["real_tok_s"]
            c["ratio_ok"] = c["ratio"] >= TARGETS["ratio"]
            c["first_loss_ok"] = c["first_loss_rel"] <= TARGETS["first_loss_rel"]
            c["curve_ok"] = c["mean_curve_rel"] <= TARGETS["curve_rel"]
            verdicts.append(f"{w}: packed/padded real tokens/s **{c['ratio']:.2f}x** (target >= {TARGETS['ratio']}x: "
                            f"{'PASS' if c['ratio_ok'] else 'FAIL'}); loss step 1 packed {c['first_loss'][0]:.4f} vs "
                            f"padded {c['first_loss'][1]:.4f} (rel {c['first_loss_rel']:.1e}: "
                            f"{'PASS' if c['first_loss_ok'] else 'FAIL'}); loss curves over {len(c['losses_packed'])} "
                            f"steps: mean rel diff {c['mean_curve_rel']:.1e}, max {c['max_curve_rel']:.1e} "
                            f"({'PASS' if c['curve_ok'] else 'FAIL'} at {TARGETS['curve_rel']:.0e})")
        if w == "stage1" and "summary" in p:
            c["mfu"] = p["summary"]["mfu"]
            c["mfu_ok"] = c["mfu"] >= TARGETS["mfu_stage1"]
            verdicts.append(f"stage1 packed MFU **{c['mfu']:.1%}** (target >= {TARGETS['mfu_stage1']:.0%}: "
                            f"{'PASS' if c['mfu_ok'] else 'FAIL'})")
        checks[w] = c
    ct = prep["content_tokens"]
    setup = (f"{a['shape']} shape ({a['dtype']}), batch {a['batch_size']} examples, {a['warmup']} warm-up + "
             f"{a['steps']} measured steps per run, max_length {a['max_length']}, packed streams of "
             f"{a['max_tokens']} tokens (multiple of {a['pad_multiple']}), gradient checkpointing "
             f"{ {'on': 'on in both modes', 'off': 'off', 'padded': 'in the padded baseline only'}[a['grad_ckpt']]}, "
             f"seed {a['seed']}")
    host = (f"{env['device']}; matmul {peak['tflops']:.3g} TFLOP/s ({peak['dtype']}, {peak['n']}^3, the MFU "
            f"denominator); torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, deepspeed "
            f"{env['deepspeed']}, peft {env['peft']}, flash-attn {env['flash-attn']}; commit {env['commit']}; {env['date']}")
    data = (f"{prep['source']}; content tokens per text: queries p50 {ct['query']['p50']} / p90 {ct['query']['p90']}, "
            f"positives p50 {ct['positive']['p50']} / p90 {ct['positive']['p90']} / p99 {ct['positive']['p99']}")
    md_text = "\n".join(["# Training speed: packed + flash vs padded", "", setup, "", f"Host: {host}", "",
                         f"Data: {data}", "", *rows, "", *[f"- {v}" for v in verdicts], ""])
    return md_text, checks


def save(res: dict, a: dict, env: dict, peak: dict, prep: dict, out_dir: Path) -> str:
    md_text, checks = report(res, a, env, peak, prep)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"train_speed_{env['date'][:10].replace('-', '')}{'_' + a['tag'] if a['tag'] else ''}"
    record = {"args": {k: v for k, v in a.items() if k not in ("work", "pairs", "generated", "model")},
              "env": env, "matmul": peak, "data": {k: prep[k] for k in ("source", "content_tokens")},
              "targets": TARGETS, "checks": checks, "results": res}
    from packing_throughput import write_atomic

    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    write_atomic(stem.with_suffix(".md"), md_text)
    return md_text


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    add("--workloads", nargs="+", choices=["stage1", "stage2", "compression"], default=["stage1", "stage2", "compression"])
    add("--modes", nargs="+", choices=["packed", "padded"], default=["packed", "padded"])
    add("--steps", type=int, default=50, help="measured optimizer steps per run")
    add("--warmup", type=int, default=5, help="unmeasured steps first (also the recipe's lr warm-up)")
    add("--batch-size", type=int, default=32, help="examples per optimizer step (one micro-step)")
    add("--examples", type=int, default=0, help="examples in the data (default: enough for every step)")
    add("--long-frac", type=float, default=0.5, help="share of docstring pairs; the rest are WordNet pairs")
    add("--max-length", type=int, default=512)
    add("--max-tokens", type=int, default=16384, help="packed stream budget (data.max_tokens_per_batch)")
    add("--pad-multiple", type=int, default=64)
    add("--vocab", type=int, default=32000, help="entries of the BPE tokenizer trained on the bench text")
    add("--teacher-dim", type=int, default=2048, help="compression targets' dimension")
    add("--grad-ckpt", choices=["on", "off", "padded"], default="on",
        help="gradient checkpointing: on in both modes (the published recipes), off, or only where the padded "
             "baseline needs it to fit")
    add("--dtype", choices=["auto", "bfloat16", "float32"], default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    add("--attn-backend", default="auto", help="packed mode's model.attn_backend")
    add("--seed", type=int, default=0)
    add("--work-dir", type=Path, default=None, help="model, data and logs (default: a temporary folder)")
    add("--out-dir", type=Path, default=REPO / "bench/results")
    add("--tag", default="", help="suffix of the result files (train_speed_DATE_TAG), e.g. the workload of a split run")
    return p.parse_args()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        from speed.worker import run

        run(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), Path(sys.argv[5]))
        return
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(tmp.name if tmp else args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    a = {k: v for k, v in vars(args).items() if k not in ("work_dir", "out_dir", "workloads", "modes")}
    a.update(dtype=dtype, work=str(work), examples=args.examples or args.batch_size * (args.warmup + args.steps))
    env = environment(device)
    peak = matmul_rate(device, torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    print(f"device: {env['device']}; measured matmul {peak['tflops']:.3g} TFLOP/s ({peak['dtype']})", flush=True)
    t0 = time.perf_counter()
    prep = prepare(a, device)
    a.update({k: prep[k] for k in ("pairs", "generated", "model")})
    print(f"model and data ready in {time.perf_counter() - t0:.0f} s: {prep['source']}", flush=True)
    res = {}
    for w in args.workloads:
        res[w] = {}
        for m in args.modes:
            print(f"{w}/{m} ...", flush=True)
            rec = run_mode(w, m, a, work)
            if "error" not in rec:
                rec["summary"] = summarize(rec, args.warmup, peak["tflops"])
                s = rec["summary"]
                print(f"  {s['real_tok_s']:,.0f} real tok/s, {s['tflops']:.3g} TFLOP/s, MFU {s['mfu']:.1%}, "
                      f"peak {s['peak_memory_gib']:.1f} GiB ({rec['wall_s']:.0f} s)", flush=True)
            res[w][m] = rec
            # Saved after every run: a run cut short (a time limit) still leaves what it measured.
            md_text = save(res, a, env, peak, prep, args.out_dir)
    print("\n" + md_text)
    print(f"saved train_speed_{env['date'][:10].replace('-', '')}{'_' + args.tag if args.tag else ''}.{{json,md}} "
          f"in {args.out_dir}")
    failed = [f"{w}/{m}" for w, modes in res.items() for m, r in modes.items() if "error" in r]
    if failed:
        sys.exit(f"runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
