#!/usr/bin/env python3
"""LM-head cross-entropy, chunked (embedtrain) vs full logits (reference implementations): peak memory and time.

The logits path is all that differs between the two, so only it runs: hidden states h_NH (N target
positions, requiring grad) -> nn.Linear(H, V) head -> summed token cross-entropy -> backward.
  full    - logits_NV = head(h_NH) for all N positions, then F.cross_entropy(logits_NV.float(), y_N, "sum");
  chunked - embedtrain.objectives.reconstruction.chunked_ce_sum: (chunk, V) logits one chunk at a time
            under non-reentrant checkpointing, recomputed chunk by chunk in backward.
Each (repeat, path) runs in a fresh subprocess, so one run's peak memory cannot hide in another's.
See bench/README.md; results go to bench/results/.
"""
from __future__ import annotations

import argparse, ctypes, json, math, re, statistics, subprocess, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from embedtrain.objectives.reconstruction import chunked_ce_sum

REPO = Path(__file__).resolve().parents[1]
TARGET_PEAK_RATIO, TARGET_TIME_RATIO = 1 / 8, 1.05  # 5% over 1.0: timing noise of a shared host


def full_ce_sum(h_NH, y_N, head):
    logits_NV = head(h_NH)  # what the reference implementations do: all positions' logits at once
    return F.cross_entropy(logits_NV.float(), y_N, reduction="sum")


def loss_fn(path: str):
    if path == "full":
        return full_ce_sum
    c = int(path)
    return lambda h_NH, y_N, head: chunked_ce_sum(h_NH, y_N, head, c, math.ceil(len(y_N) / c))


def make_inputs(n: int, hidden: int, vocab: int, dtype, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    # meta + randn straight into the parameter: a default init replaced afterwards would be a transient
    # (V, H) copy in memory, and the default init would cost time in every run.
    head = torch.nn.Linear(hidden, vocab, bias=False, device="meta")
    head.weight = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g).mul_(hidden ** -0.5).to(device, dtype))
    h_NH = torch.randn(n, hidden, generator=g).to(device, dtype).requires_grad_()  # logits ~ N(0, 1)
    return h_NH, torch.randint(vocab, (n,), generator=g).to(device), head


def vm_MiB() -> dict:
    """Resident (VmRSS) and peak resident (VmHWM) memory of this process's address space. Not
    getrusage's ru_maxrss: that survives exec, so a child starts with its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M)[1]) / 1024 for k in ("VmRSS", "VmHWM")}


def worker(args) -> None:
    """One forward + backward of one path in this (fresh) process; prints one JSON line."""
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda, run = dev.type == "cuda", loss_fn(args.worker)
    h_NH, y_N, head = make_inputs(64, args.hidden, 1024, dtype, dev, args.seed)
    run(h_NH, y_N, head).backward()  # thread pool / BLAS / cuBLAS start-up, kept out of time and baseline
    del h_NH, y_N, head
    h_NH, y_N, head = make_inputs(args.tokens, args.hidden, args.vocab, dtype, dev, args.seed)
    getattr(ctypes.CDLL(None), "malloc_trim", lambda _: 0)(0)  # glibc: hand the warmup's heap back
    try:  # reset VmHWM to the current RSS, so the peak below is this run's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # kernel < 4.0: VmHWM keeps the warmup's and input building's peak; base_hwm_MiB shows it
    base = vm_MiB()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_torch = torch.cuda.memory_allocated()
    t0, c0 = time.perf_counter(), time.process_time()
    (loss := run(h_NH, y_N, head)).backward()
    if cuda:
        torch.cuda.synchronize()
    print(json.dumps({"time_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "peak_rss_MiB": vm_MiB()["VmHWM"] - base["VmRSS"], "base_rss_MiB": base["VmRSS"],
                      "base_hwm_MiB": base["VmHWM"], "loss": loss.item(), "peak_torch_MiB":
                      (torch.cuda.max_memory_allocated() - base_torch) / 2**20 if cuda else None}))


def check(args, dtype, dev) -> dict:
    """Same loss and gradients from every path, before anything is timed (a fast wrong path is worthless)."""
    h_NH, y_N, head = make_inputs(args.check_tokens, args.hidden, args.vocab, dtype, dev, args.seed)

    def grads(path):
        h_NH.grad = head.weight.grad = None
        (loss := loss_fn(path)(h_NH, y_N, head)).backward()
        return loss.item(), h_NH.grad.float(), head.weight.grad.float()

    ref, res = grads("full"), {}
    for c in args.chunks:
        got = grads(str(c))
        r = {"loss_rel_diff": abs(got[0] - ref[0]) / abs(ref[0])}
        for name, a, b in (("h", got[1], ref[1]), ("W", got[2], ref[2])):
            r[f"grad_{name}_max_abs_diff"] = (a - b).abs().max().item()
            r[f"grad_{name}_rel_diff"] = r[f"grad_{name}_max_abs_diff"] / b.abs().max().item()
        res[str(c)] = r
        if r["loss_rel_diff"] > args.loss_rtol or max(r["grad_h_rel_diff"], r["grad_W_rel_diff"]) > args.grad_rtol:
            sys.exit(f"FAIL: chunk {c} disagrees with full logits on {args.check_tokens} tokens: {r} "
                     f"(tolerances: loss {args.loss_rtol}, grads {args.grad_rtol} relative to max |grad|)")
    return res


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--tokens", type=int, default=4096, help="N target positions (batch x length; the paper has 32 x 512 per rank)")
    add("--hidden", type=int, default=128, help="H, scaled down from the paper's model")
    add("--vocab", type=int, default=128256, help="V (Llama-3's vocabulary)")
    add("--chunks", type=int, nargs="+", default=[256, 512, 1024], help="chunk sizes of the chunked path")
    add("--repeats", type=int, default=3, help="fresh-process runs per path, interleaved")
    add("--check-tokens", type=int, default=1280, help="N of the correctness check (ragged for most chunks)")
    add("--loss-rtol", type=float, default=1e-5)
    add("--grad-rtol", type=float, default=1e-4, help="on max |diff| / max |grad|, for h and W")
    add("--device", default="cpu", help="cpu or cuda (then peak memory is torch's allocator peak)")
    add("--dtype", default="float32", choices=["float32", "bfloat16"], help="head and hidden dtype; loss in fp32")
    add("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    add("--seed", type=int, default=0)
    add("--out-dir", type=Path, default=REPO / "bench/results")
    add("--worker", help=argparse.SUPPRESS)  # internal: run one path in this process
    return p.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(Path(__file__).parent))
    from packing_throughput import environment, write_atomic  # same host/version/commit record as that bench

    env, dev, dtype = environment(), torch.device(args.device), getattr(torch, args.dtype)
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    host = (f"{env.get('gpu', env['cpu'])}, {env['cores']} CPU cores, torch threads {env['torch_threads']}, 1-min load "
            f"at start {env['load_avg_1min_at_start']:.2f}; torch {env['torch']}, transformers "
            f"{env['transformers']}, embedtrain {env['embedtrain']}; commit {env['commit']}; {env['date']}")
    setup = (f"N = {args.tokens} target positions, H = {args.hidden}, V = {args.vocab}, {args.dtype} on {args.device}; "
             f"forward + backward (grads of h and W); {args.repeats} fresh-process runs per path, interleaved")
    print(f"{setup}\nhost: {host}")
    checks = check(args, dtype, dev)
    print("check (loss rel diff, max |grad diff| h / W): " + "; ".join(
        f"{c}: {r['loss_rel_diff']:.1e}, {r['grad_h_max_abs_diff']:.1e} / {r['grad_W_max_abs_diff']:.1e}"
        for c, r in checks.items()))

    paths = ["full"] + [str(c) for c in args.chunks]
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("tokens", "hidden", "vocab", "device", "dtype", "threads", "seed")]
    runs = {p: [] for p in paths}
    order = [(r, p) for r in range(args.repeats) for p in (paths if r % 2 == 0 else paths[::-1])]
    for _, path in tqdm(order, desc="runs (one process each)", unit="run"):
        proc = subprocess.run([sys.executable, __file__, f"--worker={path}", *passthrough], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"FAIL: worker {path} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        runs[path].append(json.loads(proc.stdout.splitlines()[-1]))

    peak_key = "peak_torch_MiB" if dev.type == "cuda" else "peak_rss_MiB"  # host RSS says nothing of GPU memory
    res = {}
    for p, rs in runs.items():
        times = [r["time_s"] for r in rs]
        res[p] = {"time_best_s": min(times), "time_median_s": statistics.median(times),
                  "peak_MiB": statistics.median(r[peak_key] for r in rs), "runs": rs}
    f = res["full"]
    for p, r in res.items():
        r.update(peak_ratio=r["peak_MiB"] / f["peak_MiB"], time_ratio_best=r["time_best_s"] / f["time_best_s"],
                 time_ratio_median=r["time_median_s"] / f["time_median_s"])
        r.update(peak_ok=r["peak_ratio"] <= TARGET_PEAK_RATIO, time_ok=r["time_ratio_best"] <= TARGET_TIME_RATIO)
    mem_name = "peak torch alloc (MiB)" if dev.type == "cuda" else "peak RSS increase (MiB)"
    rows = [f"| path | chunk / N | {mem_name} | time best (s) | time median (s) | peak ratio | time ratio best (median) "
            "| target |", "|---|---|---|---|---|---|---|---|"]
    for p, r in res.items():
        target = "-" if p == "full" else " ".join(
            f"{what} {'PASS' if r[k] else 'FAIL'}" for what, k in (("mem", "peak_ok"), ("time", "time_ok")))
        rows.append(f"| {'full logits' if p == 'full' else 'chunked ' + p} | "
                    f"{'1' if p == 'full' else f'1/{args.tokens / int(p):g}'} | {r['peak_MiB']:.0f} | "
                    f"{r['time_best_s']:.2f} | {r['time_median_s']:.2f} | {r['peak_ratio']:.3f} | "
                    f"{r['time_ratio_best']:.2f} ({r['time_ratio_median']:.2f}) | {target} |")
    fits = [p for p in paths[1:] if res[p]["peak_ok"]]
    best = min(fits, key=lambda p: res[p]["time_best_s"]) if fits else min(paths[1:], key=lambda p: res[p]["peak_MiB"])
    verdict = [f"targets: peak ratio (chunked / full) <= 1/8 = {TARGET_PEAK_RATIO:.3f}; time ratio (best of "
               f"{args.repeats}) <= {TARGET_TIME_RATIO} (no slower, 5% for noise)",
               f"best trade-off: chunk {best} ({'fastest that meets' if fits else 'none meets; smallest peak for'} "
               f"the memory target): peak x{res[best]['peak_ratio']:.3f}, time x{res[best]['time_ratio_best']:.2f}"
               f" -> {'PASS' if res[best]['peak_ok'] and res[best]['time_ok'] else 'FAIL'}",
               f"correctness (N = {args.check_tokens}): max loss rel diff "
               f"{max(r['loss_rel_diff'] for r in checks.values()):.1e} <= {args.loss_rtol}; max grad rel diff "
               f"{max(max(r['grad_h_rel_diff'], r['grad_W_rel_diff']) for r in checks.values()):.1e} <= {args.grad_rtol}"]
    if env["load_avg_1min_at_start"] > 0.5:
        verdict.append(f"WARNING: host not idle (1-min load {env['load_avg_1min_at_start']:.2f}): timings are noisy")
    md = "\n".join(["# Reconstruction loss: chunked vs full logits", "", setup, "", f"Host: {host}", "", *rows, "",
                    *[f"- {v}" for v in verdict], ""])
    print("\n" + "\n".join(rows + [""] + verdict))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"reconstruction_logits_{env['date'][:10].replace('-', '')}"
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
              "env": env, "check": checks, "results": res,
              "targets": {"peak_ratio": TARGET_PEAK_RATIO, "time_ratio": TARGET_TIME_RATIO}}
    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), md)
    print(f"saved {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
