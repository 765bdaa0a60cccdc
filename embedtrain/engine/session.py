"""Everything one training step needs, built once: model, objective, data order, DeepSpeed engine.

The trainer loop (trainer.py) and the speed bench (bench/train_speed.py) both build a Session and
call train_step, so what the bench times is exactly what `embedtrain train` runs.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from functools import partial

import deepspeed
import torch
from deepspeed.runtime.utils import clip_grad_norm_

from embedtrain import distributed as D
from embedtrain.config.schema import RecipeConfig
from embedtrain.config.validate import check_eval_suite
from embedtrain.data.batches import BatchOrder, MicroBatchBuilder, make_batch_order, rank_slice
from embedtrain.data.jsonl import JsonlIndex
from embedtrain.data.shared_index import build_index_once
from embedtrain.data.packing import TextTokenizer
from embedtrain.data.prefetch import Prefetcher
from embedtrain.engine.ds_config import batch_plan, build_ds_config
from embedtrain.engine.guards import install_step_skip, is_bad
from embedtrain.engine.metrics import peak_memory_gb
from embedtrain.engine.schedule import build_optimizer, build_scheduler
from embedtrain.flops import measure_matmul_tflops
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.base import FlopSpec, Objective, StepContext
from embedtrain.objectives.registry import get_objective

log = logging.getLogger("embedtrain")


@dataclass
class Session:
    cfg: RecipeConfig
    device: torch.device
    rank: int
    world: int
    options: object  # the objective's typed options (cfg.options())
    index: JsonlIndex
    order: BatchOrder  # or data/mixing.py's MixedBatchOrder (same interface)
    micro_global: int  # examples per global micro-batch
    gas: int  # micro-batches per optimizer step
    tokenizer: object
    objective: Objective
    text_tok: TextTokenizer
    builder: MicroBatchBuilder
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: object  # deepspeed.DeepSpeedEngine around the EmbeddingModel
    peak_tflops: float | None = None  # MFU denominator per device; None: MFU is not logged
    flops: FlopSpec | None = None  # what the objectives' model-FLOP counts need
    prefetch: Prefetcher | None = None  # the next step's batches, read and tokenized in the background


def build_session(cfg: RecipeConfig, origin: dict, device: torch.device | None = None,
                  hf_attention: str | None = None, wrap=None) -> Session:
    """Validate, index the data, load the model, set the objective up and wrap it all in DeepSpeed.

    hf_attention and wrap (EmbeddingModel -> the module DeepSpeed trains) serve the padded baselines of
    bench/train_speed.py: the same session around a stock-attention model run on padded batches."""
    device = device if device is not None else D.init_distributed(cfg.deepspeed.backend)
    rank, world = D.rank(), D.world_size()
    # Everything that can be wrong with the recipe or the data fails here, before the model loads.
    options = cfg.options()
    ds_config = build_ds_config(cfg, world)
    index = build_index_once(cfg.data.sources(), cfg.data.skip_bad_lines, device)  # rank 0 parses, all get it
    check_eval_suite(cfg, origin)  # with the data files: before any model loads
    # One optimizer step = one same-task block of micro_global * gas examples, split into gas micro-batches;
    # the examples of a step do not depend on the world size.
    micro_global, gas = batch_plan(cfg, world)
    order = make_batch_order(index, micro_global * gas, cfg.run.seed, cfg.data)

    torch.manual_seed(cfg.run.seed)  # identical initial weights (LoRA) on every rank
    tokenizer = load_tokenizer(cfg.model.path)
    embedder = build_model(cfg.model, tokenizer, device, hf_attention)
    objective_cls, _ = get_objective(cfg.train.objective)
    if not objective_cls.uses_lm_head and embedder.freeze_unused_lm_head():
        log.info("LM head frozen: objective %s does not use it", cfg.train.objective)
    model = wrap(embedder) if wrap is not None else embedder
    objective = objective_cls(options, device)
    objective.setup(model, cfg, index, tokenizer)
    text_tok = TextTokenizer(tokenizer, embedder.family, cfg.data.max_length, cfg.data.instruction_format)
    # the builder's own tokenizer copy: the prefetch thread uses it while evaluation uses text_tok
    data_tok = TextTokenizer(copy.deepcopy(tokenizer), embedder.family, cfg.data.max_length, cfg.data.instruction_format)
    builder = MicroBatchBuilder(index, data_tok, cfg.data.max_tokens_per_batch, cfg.data.pad_to_multiple_of,
                                cfg.data.instructions, cfg.data.default_instruction,
                                cfg.data.max_negatives if objective_cls.uses_negatives else 0, device,
                                objective.make_batch)
    # FLOP accounting: do the decoder's own weights train (full fine-tuning), or only adapters / new rows?
    decoder = embedder.decoder()
    weights_train = any(p.requires_grad for n, p in decoder.named_parameters() if "lora_" not in n)
    flops = FlopSpec(decoder.config, weights_train, embedder.causal)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %d of %d", trainable, sum(p.numel() for p in model.parameters()))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    _record_grad_norm(engine)
    install_step_skip(engine)
    s = Session(cfg, device, rank, world, options, index, order, micro_global, gas, tokenizer, objective,
                text_tok, builder, scheduler, engine, _peak_tflops(cfg, device), flops)
    s.prefetch = Prefetcher(partial(_prepare_step, s), cfg.train.steps, cfg.data.prefetch)
    return s


def _prepare_step(s: Session, step: int) -> list:
    """This rank's micro-batches of optimizer step `step`, read and tokenized (not packed)."""
    ids = s.order.global_batch_ids(step)
    return [s.builder.prepare(rank_slice(ids[m * s.micro_global:(m + 1) * s.micro_global], s.rank, s.world))
            for m in range(s.gas)]


def _peak_tflops(cfg: RecipeConfig, device: torch.device) -> float | None:
    """EMBEDTRAIN_PEAK_TFLOPS (e.g. a datasheet number), else on a GPU its measured dense matmul rate in
    the run's dtype (an 8192^3 product; about a second); on CPU none (MFU is for accelerators)."""
    if text := os.environ.get("EMBEDTRAIN_PEAK_TFLOPS"):
        try:
            peak = float(text)
        except ValueError:
            peak = 0.0
        if not peak > 0:
            raise ValueError(f"EMBEDTRAIN_PEAK_TFLOPS={text!r}: expected a positive number of TFLOP/s per device "
                             "(e.g. 989 for an H100 SXM's dense bf16), or unset it to measure the GPU")
        return peak
    if device.type != "cuda":
        return None
    peak = measure_matmul_tflops(device, torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32)
    log.info("MFU denominator: measured %s matmul rate %.0f TFLOP/s", cfg.model.dtype, peak)
    return peak


def _record_grad_norm(engine) -> None:
    """Without a ZeRO/bf16 wrapper DeepSpeed clips with its own clip_grad_norm_ but drops the norm it
    returns; keep it so get_global_grad_norm() works on every configuration."""
    def clip_and_record():
        engine._global_grad_norm = clip_grad_norm_(parameters=engine.module.parameters(),
                                                   max_norm=engine.gradient_clipping(), mpu=engine.mpu)

    engine.clip_fp32_gradients = clip_and_record


def train_step(s: Session, step: int) -> dict:
    """One optimizer step (all its accumulated micro-batches) and its metrics, reduced over ranks."""
    t0 = time.perf_counter()
    sums = {"real_tokens": 0.0, "computed_tokens": 0.0, "truncated": 0.0, "flops": 0.0}
    acc: dict[str, float] = {}
    engine = s.engine
    prepared, _ = s.prefetch.take(step) if s.prefetch is not None else (_prepare_step(s, step), 0.0)
    batches = [s.builder.finish(p) for p in prepared]
    data_s = time.perf_counter() - t0  # waiting for this step's data: reading, tokenizing (unless prefetched), packing
    # Token-mean objectives divide by the whole step's counts, so accumulation and world size leave the loss as is.
    totals = s.objective.step_totals(batches)
    ctx = StepContext(D.all_reduce_sum(totals, s.device) if totals else None, s.gas, s.flops)
    for batch in batches:
        sums["real_tokens"] += batch.real_tokens
        sums["computed_tokens"] += batch.computed_tokens
        sums["truncated"] += batch.truncated
        out = s.objective.forward_backward(engine, batch, lambda loss, final: engine.backward(loss), ctx)
        # Tokens an objective runs beyond the batch's own streams (e.g. decoding passes).
        sums["real_tokens"] += out.pop("extra_real_tokens", 0.0)
        sums["computed_tokens"] += out.pop("extra_computed_tokens", 0.0)
        sums["flops"] += out.pop("flops", 0.0)
        for k, v in out.items():
            acc[k] = acc.get(k, 0.0) + v / s.gas
    skipped_before = engine.skipped_steps
    engine.step()
    totals = D.all_reduce_sum(sums, s.device)
    metrics = D.all_reduce_mean(acc, s.device)
    dt = time.perf_counter() - t0
    grad_norm = engine.get_global_grad_norm()
    metrics.update(lr=s.scheduler.get_last_lr()[0],
                   grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                   real_tokens=int(totals["real_tokens"]), computed_tokens=int(totals["computed_tokens"]),
                   tokens_per_s=totals["real_tokens"] / dt,
                   packing_efficiency=totals["real_tokens"] / max(1.0, totals["computed_tokens"]),
                   truncated=int(totals["truncated"]), peak_mem_gb=peak_memory_gb(s.device), step_time_s=dt,
                   model_flops=totals["flops"], model_tflops=totals["flops"] / dt / 1e12 / s.world,
                   data_s=data_s)
    if s.peak_tflops:
        metrics["mfu"] = metrics["model_tflops"] / s.peak_tflops
    # update_skipped: the optimizer skipped this step (non-finite gradient: weights, optimizer state and
    # schedule unchanged); bad_step: that, or a non-finite loss or gradient norm (engine/guards.py)
    skipped = engine.skipped_steps > skipped_before
    metrics["update_skipped"] = int(skipped)
    metrics["bad_step"] = int(is_bad(metrics["loss"], None if grad_norm is None else float(grad_norm), skipped))
    return metrics
