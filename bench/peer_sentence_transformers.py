"""embedtrain side by side with sentence-transformers' SentenceTransformerTrainer: same model, data, batches,
steps, schedule, LoRA, max length, temperature (ST scale = 1/temperature) and hard negatives.

Both sides train from the same weights (base model and initial LoRA matrices: embedtrain's, built once and
loaded into the ST model; checked by fingerprint) on the same batches in the same order: the driver computes
embedtrain's batch order (same-task batches, seeded) once and hands it to sentence-transformers as its
multi-dataset batch sampler (one dataset per task, whose prompt is the template prefix + that task's
instruction, so both tokenize every text to the same ids). Jobs run one at a time in fresh processes
(torchrun for world size 2), sides and settings interleaved, and each final model is exported to a
sentence-transformers folder and scored on the offline suite by the same code. See bench/README.md.

  python bench/peer_sentence_transformers.py                    # the committed run (about an hour, 2 cores)
  python bench/peer_sentence_transformers.py --steps 3 --repeats 1 --world-sizes 1 --skip-eval --out-dir /tmp/x
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peer_report import SIDES, aggregate, report, settings, world_sizes  # noqa: E402
from report_io import environment  # noqa: E402

__all__ = ["SIDES", "aggregate", "main", "parse_args", "prepare", "settings"]
HARD_NEG_SUFFIX = "+hn"  # a task's examples that carry a hard negative form their own batches (see _bench_rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/trainset/train.jsonl", help="JSONL pairs (embedtrain's format)")
    p.add_argument("--instructions", help="JSON {task: instruction} for lines without their own instruction")
    p.add_argument("--model", default="models/smollm2-135m-instruct")
    p.add_argument("--family", default="chatml")
    p.add_argument("--pooling", default="mean", choices=["mean", "last"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32, help="examples per step, all ranks together")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, template and EOS included")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--max-negatives", type=int, default=1, choices=[0, 1])
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.0,
                   help="0 keeps step 1 deterministic, so the two first-step losses can be compared")
    p.add_argument("--max-tokens-per-batch", type=int, default=8192, help="embedtrain's packed stream size")
    p.add_argument("--grad-cache", action="store_true",
                   help="embedtrain: objective.infonce.grad_cache (its counterpart of CachedMNRL) with streams of "
                        "--max-tokens-per-batch tokens")
    p.add_argument("--st-loss", default="mnrl", choices=["mnrl", "cached"])
    p.add_argument("--cached-mini-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per setting, interleaved")
    p.add_argument("--skip-steps", type=int, default=1, help="first steps of each run left out of the timing")
    p.add_argument("--world-sizes", default="1,2")
    p.add_argument("--gather", default="on,off", help="world size > 1: cross-rank negatives on, off or both")
    p.add_argument("--suite", default="data/suite")
    p.add_argument("--tasks", default="", help="suite tasks (default: all of suite.json)")
    p.add_argument("--eval-max-length", type=int, default=512)
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--eval-repeats", default="first", choices=["first", "all"],
                   help="export and score the first repeat of each side and setting, or every repeat (measures how "
                        "far reruns of one side drift apart on the suite)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="first-step loss agreement, relative")
    p.add_argument("--work-dir", default="/tmp/peer_st")
    p.add_argument("--out-dir", default=None, help="default bench/results/peer_sentence_transformers_<date>")
    return p.parse_args(argv)


def _bench_rows(args) -> list[dict]:
    """The training file's rows with at most max_negatives negatives. sentence-transformers needs the same
    columns in every row of a batch, so rows with a negative get their own task (task + "+hn")."""
    instructions = json.loads(Path(args.instructions).read_text()) if args.instructions else {}
    rows = []
    with open(args.data) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                query, positive, task = r["query"], r["positive"], r.get("task", "default")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SystemExit(f"{args.data}:{n}: not a pair line ({exc}); need query, positive[, negative, task]")
            negs = r.get("negative", r.get("negatives", [])) or []
            negs = ([negs] if isinstance(negs, str) else list(negs))[:args.max_negatives]
            instruction = r.get("instruction") or instructions.get(task)
            if not instruction:
                raise SystemExit(f"{args.data}:{n}: task {task!r} has no instruction: add one to the line or "
                                 "to --instructions")
            row = {"query": query, "positive": positive, "task": task + (HARD_NEG_SUFFIX if negs else ""),
                   "instruction": instruction}
            if negs:
                row["negative"] = negs
            rows.append(row)
    return rows


def prepare(args, work: Path) -> dict:
    """work/train.jsonl (embedtrain), work/st_data_w<world>.json (sentence-transformers: one dataset per task,
    prompts, and the batches in embedtrain's order). Returns what the report says about the data."""
    from embedtrain.config.schema import DataConfig, DataSource
    from embedtrain.data.batches import make_batch_order, rank_slice
    from embedtrain.data.jsonl import build_index
    from embedtrain.families import FAMILIES

    rows = _bench_rows(args)
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = build_index([DataSource(path=str(train_file))])
    order = make_batch_order(index, args.batch_size, args.seed, DataConfig(train=[str(train_file)]))
    steps = [order.global_batch_ids(k) for k in range(args.steps)]
    family, fmt = FAMILIES[args.family], DataConfig().instruction_format
    datasets, where, prompts = {}, {}, {}
    for ids in steps:
        for i in ids:
            r = rows[int(i)]
            cols = datasets.setdefault(r["task"], {"anchor": [], "positive": []} | (
                {"negative": []} if "negative" in r else {}))
            where[int(i)] = (r["task"], len(cols["anchor"]))
            cols["anchor"].append(r["query"])
            cols["positive"].append(r["positive"])
            if "negative" in r:
                cols["negative"].append(r["negative"][0])
            prompt = family.prefix + fmt.format(instruction=r["instruction"])
            if prompts.setdefault(r["task"], {"anchor": prompt})["anchor"] != prompt:
                raise SystemExit(f"{args.data}: task {r['task']} has more than one instruction; sentence-"
                                 "transformers takes one prompt per dataset")
    for task, p in prompts.items():
        p.update({"positive": family.prefix, "negative": family.prefix})
    offsets, total = {}, 0
    for task, cols in datasets.items():  # ConcatDataset order = the DatasetDict's order
        offsets[task], total = total, total + len(cols["anchor"])
    for world in world_sizes(args):
        batches = [[offsets[where[int(i)][0]] + where[int(i)][1] for i in rank_slice(ids, r, world)]
                   for ids in steps for r in range(world)]
        (work / f"st_data_w{world}.json").write_text(json.dumps(
            {"datasets": datasets, "prompts": prompts, "batches": batches}))
    tasks = [index.tasks[int(index.task_id[int(ids[0])])] for ids in steps]
    init_dir = work / "lora_init"
    init_dir.mkdir(exist_ok=True)
    lora_init = init_dir / "lora_init.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "peer_worker.py"), "lora-init",
                           str(_recipe(args, init_dir, str(train_file), 1, True)), str(lora_init)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"building embedtrain's initial LoRA weights failed:\n{proc.stderr[-3000:]}")
    return {"train_file": str(train_file), "rows": len(rows), "step_tasks": tasks,
            "with_negative": sum("negative" in r for r in rows), "instruction_format": fmt,
            "lora_init": str(lora_init), "lora_init_fingerprint": proc.stdout.strip().splitlines()[-1]}


def _recipe(args, job_dir: Path, train_file: str, world: int, gather: bool) -> Path:
    import yaml

    recipe = {
        "run": {"output_dir": str(job_dir / "run"), "seed": args.seed, "log_every": max(1, args.steps),
                "checkpoint_weights": False, "keep_checkpoints": 1, "progress_bar": False},
        "model": {"path": args.model, "family": args.family, "dtype": "float32", "pooling": args.pooling,
                  "lora": {"enabled": True, "r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}},
        "data": {"train": [train_file], "max_length": args.max_length, "max_negatives": args.max_negatives,
                 "max_tokens_per_batch": args.max_tokens_per_batch},
        "train": {"objective": "infonce", "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr,
                  "warmup_steps": args.warmup, "schedule": "linear", "grad_clip": 1.0},
        "objective": {"infonce": {"temperature": args.temperature, "gather_across_ranks": gather,
                                  "grad_cache": args.grad_cache}},
        "deepspeed": {"zero_stage": 0, "backend": "gloo"},
    }
    path = job_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_job(args, work: Path, data: dict, side: str, world: int, gather: bool, repeat: int, export: bool) -> dict:
    name = f"w{world}{'' if world == 1 else ('_gather' if gather else '_local')}_{side}_r{repeat}"
    job_dir = work / name
    job_dir.mkdir(parents=True, exist_ok=True)
    for old in job_dir.glob("rank*.json"):
        old.unlink()
    job = {"side": side, "dir": str(job_dir), "model": args.model, "family": args.family, "pooling": args.pooling,
           "max_length": args.max_length, "instruction_format": data["instruction_format"], "instructions": {},
           "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout},
           "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
           "temperature": args.temperature, "gather": gather, "seed": args.seed, "st_loss": args.st_loss,
           "cached_mini_batch": args.cached_mini_batch, "st_data": str(work / f"st_data_w{world}.json"),
           "eval_max_length": args.eval_max_length, "lora_init": data["lora_init"], "export": str(job_dir / "export") if export else None}
    if side == "embedtrain":
        job["recipe"] = str(_recipe(args, job_dir, data["train_file"], world, gather))
    (job_dir / "job.json").write_text(json.dumps(job, indent=1))
    worker = [str(ROOT / "bench" / "peer_worker.py"), "train", str(job_dir / "job.json")]
    cmd = [sys.executable, *worker] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
        "--master_port", str(29500 + os.getpid() % 1000), *worker]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    with open(job_dir / "log.txt", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = (job_dir / "log.txt").read_text()[-3000:]
        raise SystemExit(f"{name} failed (exit {rc}); {job_dir / 'log.txt'} ends with:\n{tail}")
    ranks = [json.loads((job_dir / f"rank{r}.json").read_text()) for r in range(world)]
    return summarize_job(args, name, side, world, gather, repeat, ranks, job.get("export"))


def summarize_job(args, name, side, world, gather, repeat, ranks: list[dict], export) -> dict:
    n, skip = len(ranks[0]["step_end"]), args.skip_steps
    if n != args.steps or n <= skip:
        raise SystemExit(f"{name}: {n} steps recorded, expected {args.steps} (> --skip-steps {skip})")
    # each rank's own clock (perf_counter is per process): the slowest rank's span
    spans = [r["step_end"][-1] - r["step_end"][skip - 1] if skip else r["step_end"][-1] - r["start"] for r in ranks]
    elapsed = max(spans)
    real = [sum(r["real_tokens"][k] for r in ranks) for k in range(n)]
    computed = [sum(r["computed_tokens"][k] for r in ranks) for k in range(n)]
    # ST ranks record their own loss, embedtrain's the mean over ranks (the same on each): the mean serves both
    losses = [sum(r["loss"][k] for r in ranks) / world for k in range(n)]
    return {"name": name, "side": side, "world": world, "gather": gather, "repeat": repeat,
            "real_tok_s": sum(real[skip:]) / elapsed, "examples_s": args.batch_size * (n - skip) / elapsed,
            "step_s": elapsed / (n - skip), "efficiency": sum(real) / max(1, sum(computed)),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in ranks),
            "peak_rss_gib_sum": sum(r["peak_rss_gib"] for r in ranks),
            "first_loss": losses[0], "losses": losses, "real_tokens": real, "computed_tokens": computed,
            "init_lora": sorted({r["init_lora"] for r in ranks}), "export": export}


def evaluate(args, folder: str, data: dict) -> dict:
    tasks = args.tasks or ",".join(json.loads((Path(args.suite) / "suite.json").read_text())["tasks"])
    out = Path(folder).parent / "suite.json"
    cmd = [sys.executable, str(ROOT / "bench" / "peer_worker.py"), "eval", folder, str(out), "--suite", args.suite,
           "--tasks", tasks, "--max-length", str(args.eval_max_length), "--family", args.family,
           "--instruction-format", data["instruction_format"]]
    print(f"[{time.strftime('%H:%M:%S')}] suite: {folder}", flush=True)
    with open(Path(folder).parent / "eval_log.txt", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"suite evaluation of {folder} failed; see {Path(folder).parent / 'eval_log.txt'}")
    scores = json.loads(out.read_text())
    return dict(scores, mean=sum(scores.values()) / len(scores))


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    env = environment("sentence-transformers", "deepspeed", "peft", "datasets")
    if env["load_avg_1min_at_start"] > 0.5:
        print(f"warning: load average {env['load_avg_1min_at_start']:.2f}: timings are only meaningful on an idle host",
              flush=True)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(args, work)
    runs, suites = [], {}
    for repeat in range(args.repeats):
        for world, gather in settings(args):
            # alternate which side goes first, so drift in the host's speed affects both alike
            for side in (SIDES if (repeat + world) % 2 == 0 else SIDES[::-1]):
                runs.append(run_job(args, work, data, side, world, gather, repeat,
                                    export=repeat == 0 or args.eval_repeats == "all"))
    if not args.skip_eval:
        for r in runs:
            if r["export"]:
                suites[r["name"]] = evaluate(args, r["export"], data)
    rows, checks = aggregate(args, runs, suites, data["lora_init_fingerprint"])
    out = Path(args.out_dir) if args.out_dir else \
        ROOT / "bench" / "results" / f"peer_sentence_transformers_{datetime.date.today():%Y%m%d}"
    report(args, out, rows, checks, runs, data, env, time.time() - t0)
    parity = [c for c in checks if c["check"].startswith(("first-step", "same ")) and c["pass"] is False]
    return 1 if parity else 0  # a goal missed is reported; a side that computes something else is an error


if __name__ == "__main__":
    sys.exit(main())
