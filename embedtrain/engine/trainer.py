"""The training loop: owns DeepSpeed, data order, objectives, checkpoints and metrics."""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from embedtrain import distributed as D
from embedtrain.config.schema import RecipeConfig
from embedtrain.engine.checkpoint import latest_tag, load_checkpoint, save_checkpoint, step_tag
from embedtrain.engine.evaluator import Evaluator
from embedtrain.engine.final import save_final, save_weights
from embedtrain.engine.guards import TooManyBadSteps
from embedtrain.engine.metrics import MetricsLogger
from embedtrain.engine.monitors import open_monitors
from embedtrain.engine.preemption import StopSignals, write_status
from embedtrain.engine.session import build_session, train_step
from embedtrain.engine.watchdog import RankWatchdog
from embedtrain.files import atomic_write_text

log = logging.getLogger("embedtrain")


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s", force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def train(cfg: RecipeConfig, origin: dict, resume: bool = False) -> dict:
    device = D.init_distributed(cfg.deepspeed.backend)
    rank, world = D.rank(), D.world_size()
    _setup_logging(rank)
    run_dir = Path(cfg.run.output_dir)
    if device.type == "cpu" and rank == 0:
        log.info("CPU: %d torch threads per rank", torch.get_num_threads())
    monitors = open_monitors(cfg, run_dir) if rank == 0 and cfg.run.report_to else []  # a missing package fails here
    try:
        s = build_session(cfg, origin, device)
    except BaseException:
        for monitor in monitors:
            monitor.close()
        raise
    engine, objective, builder, text_tok = s.engine, s.objective, s.builder, s.text_tok
    tokenizer = s.tokenizer
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        log.info("run dir %s; %d examples in %d task(s), %d steps/epoch; world size %d, %d examples per "
                 "micro-step (%d per rank) x %d accumulation", run_dir, len(s.index), len(s.index.tasks),
                 s.order.batches_per_epoch, world, s.micro_global, s.micro_global // world, s.gas)
    zero_stage = engine.zero_optimization_stage()
    ckpt_root = run_dir / "checkpoints"
    # final/'s files into a folder (every rank calls it): for each checkpoint (run.checkpoint_weights, so a step
    # is evaluable and init_from-able mid-run) and for best/ (run.keep_best)
    weights_to = partial(save_weights, objective, engine.module, cfg, tokenizer, zero_stage=zero_stage)
    write_weights = weights_to if cfg.run.checkpoint_weights else None
    start, bad_steps = 0, 0
    if resume:
        state = load_checkpoint(engine, ckpt_root, device)
        start, bad_steps = state["step"], state.get("bad_steps", 0)
    else:
        torch.manual_seed(cfg.run.seed + rank)  # dropout differs between ranks
    eval_tok = objective.text_format(text_tok)
    save_best = weights_to if cfg.run.keep_best else None
    evaluator = Evaluator(cfg, engine.module, eval_tok, builder, device, run_dir, save_best,
                          objective.eval_instruction_policy(cfg))
    before = evaluator.retrieval("before training") if start == 0 else None

    metrics_log = MetricsLogger(run_dir, cfg.train.steps, start, cfg.run.log_every, rank == 0,
                                cfg.run.progress_bar, monitors)
    engine.train()
    losses = []
    signals = StopSignals()
    watchdog = RankWatchdog().start() if world > 1 else None  # a dead rank ends the others in bounded time
    try:
        for step in range(start, cfg.train.steps):
            metrics = train_step(s, step)
            losses.append(metrics["loss"])
            done = step + 1 == cfg.train.steps
            preempted = signals.should_stop(device)
            bad_steps += metrics["bad_step"]
            metrics["bad_steps"] = bad_steps
            if evaluator.due(step + 1) and not preempted:  # outside train_step: not in its time or tokens/s
                metrics.update(evaluator.step(step + 1))
            metrics_log.step(step + 1, metrics)
            trainer_state = {"seed": cfg.run.seed, "bad_steps": bad_steps}
            if metrics["bad_step"]:
                too_many = bad_steps > cfg.train.max_bad_steps
                _report_bad_step(step + 1, metrics, bad_steps, cfg.train.max_bad_steps)
                if too_many:  # the state before this step (unchanged when the update was skipped)
                    kept = step + 1 - metrics["update_skipped"]
                    before_state = dict(trainer_state, bad_steps=bad_steps - metrics["update_skipped"])
                    if latest_tag(ckpt_root) != step_tag(kept):
                        save_checkpoint(engine, ckpt_root, kept, before_state, cfg.run.keep_checkpoints, device,
                                        write_weights)
                    metrics_log.close()
                    _finish(watchdog)
                    raise TooManyBadSteps(
                        f"step {step + 1}: {bad_steps} steps with a non-finite loss or gradient norm, more than "
                        f"train.max_bad_steps={cfg.train.max_bad_steps}; stopped. {ckpt_root / step_tag(kept)} "
                        "holds the state before it: lower train.lr or check the data, then continue with --resume")
            stop = step + 1 == cfg.run.stop_at_step or preempted
            if done or stop or (cfg.run.checkpoint_every and (step + 1) % cfg.run.checkpoint_every == 0):
                # a preempted job's grace period goes to the resumable state only, not to a weights copy
                save_checkpoint(engine, ckpt_root, step + 1, trainer_state,
                                cfg.run.keep_checkpoints, device, None if preempted else write_weights)
            if stop and not done:
                metrics_log.close()
                if preempted:
                    write_status("requeue", step + 1, signals.name())
                _finish(watchdog)
                why = f"received {signals.name()}" if preempted else "run.stop_at_step"
                log.warning("stopped after step %d (%s); checkpoint written, continue with --resume", step + 1, why)
                return {"losses": losses, "final_dir": None, "eval_before": before, "eval_after": None,
                        "start_step": start, "preempted": preempted, "engine": engine}
        metrics_log.close()
        if rank == 0 and hasattr(s.order, "realised"):  # a weighted mix: what the steps really drew
            log.info("data mix realised over %d steps: %s", cfg.train.steps, ", ".join(
                f"{name} {share:.1%}" for name, share in s.order.realised(cfg.train.steps).items()))
        final_dir = save_final(objective, engine.module, cfg, tokenizer, run_dir, zero_stage, cfg.run.save_merged)
        # the last step's evaluation scored these same weights: reused, not encoded again
        last = evaluator.last_retrieval
        after = last[1] if last and last[0] == cfg.train.steps else evaluator.retrieval("after training")
        if rank == 0 and (before or after):
            atomic_write_text(run_dir / "eval.json", json.dumps({"before": before, "after": after}, indent=1))
        if rank == 0 and before and after:
            print(f"held-out retrieval ({cfg.eval.retrieval}): R@1 {before['recall@1']:.3f} -> {after['recall@1']:.3f}"
                  f"   MRR {before['mrr']:.3f} -> {after['mrr']:.3f}", flush=True)
        if rank == 0 and cfg.run.keep_best and evaluator.best:
            b = evaluator.best
            print(f"best {b['metric']} {b['value']:.4f} at step {b['step']}: weights in {run_dir / 'best'}", flush=True)
        write_status("done", cfg.train.steps)
        _finish(watchdog)
        return {"losses": losses, "final_dir": str(final_dir), "eval_before": before, "eval_after": after,
                "best": evaluator.best, "start_step": start, "preempted": False, "engine": engine}
    except RuntimeError as exc:
        silent = watchdog.silent_ranks() if watchdog is not None else []
        if silent:
            msg = f"rank(s) {', '.join(map(str, silent))} stopped sending heartbeats: they died or their node is gone"
            print(f"embedtrain rank {rank}: {msg}; the step failed with: {str(exc).splitlines()[0][:300]}",
                  file=sys.stderr, flush=True)
            raise RuntimeError(msg) from exc
        raise
    finally:
        if s.prefetch is not None:
            s.prefetch.close()
        if watchdog is not None:
            watchdog.stop()
        signals.restore()


def _report_bad_step(step: int, metrics: dict, bad_steps: int, limit: int) -> None:
    what = ("skipped on every rank: weights, optimizer and schedule unchanged" if metrics["update_skipped"]
            else "applied: its gradient was finite")
    log.warning("step %d: loss %s, gradient norm %s: the update was %s (%d non-finite step(s); train.max_bad_steps=%d)",
                step, metrics["loss"], metrics["grad_norm"], what, bad_steps, limit)


def _finish(watchdog) -> None:
    """Every rank reaches this point before any may exit (an exiting rank 0 takes the store with it)."""
    if watchdog is not None:
        dist.barrier()
        watchdog.stop()
