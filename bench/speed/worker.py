"""One timed run: one workload (stage1 | stage2 | compression) in one mode (packed | padded), in its own
process so its peak memory is its own. Writes a JSON record; bench/train_speed.py starts these."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from embedtrain import distributed as D
from embedtrain.config.loader import load_recipe
from embedtrain.engine.metrics import peak_memory_gb
from embedtrain.flops import train_flops
from embedtrain.objectives.reconstruction import decoding_inputs

RECIPES = Path(__file__).resolve().parent / "recipes"
WORKLOADS = {"stage1": "reconstruction", "stage2": "infonce", "compression": "compression"}


def recipe(workload: str, mode: str, a: dict) -> tuple:
    """The workload's recipe with the run's model, data, batch, steps and dtype."""
    ckpt = a["grad_ckpt"] == "on" or (a["grad_ckpt"] == "padded" and mode == "padded")
    data = a["generated"] if workload == "compression" else a["pairs"]
    micro = "null" if workload == "stage2" else a["batch_size"]  # InfoNCE batches are not split
    overrides = [f"model.path={a['model']}", "model.family=llama3", f"model.dtype={a['dtype']}",
                 f"model.gradient_checkpointing={str(ckpt).lower()}", f"data.train=[{data}]",
                 f"data.max_tokens_per_batch={a['max_tokens']}", f"data.pad_to_multiple_of={a['pad_multiple']}",
                 f"data.max_length={a['max_length']}", f"train.batch_size={a['batch_size']}",
                 f"train.micro_batch_per_rank={micro}", f"train.steps={a['warmup'] + a['steps']}",
                 f"train.warmup_steps={a['warmup']}", f"run.output_dir={a['work']}/runs/{workload}",
                 f"run.seed={a['seed']}", f"model.attn_backend={a['attn_backend']}"]
    if workload == "compression":
        overrides.append(f"objective.compression.response_max_length={a['max_length']}")
    return load_recipe(RECIPES / f"{workload}.yaml", overrides)


def step_work(s, step: int, lm_config) -> dict:
    """Mode-independent useful work of one optimizer step: real tokens and model FLOPs, counted from the
    step's examples formatted as the objective formats them (no padding, no pairs across texts)."""
    cfg, name = s.cfg, s.cfg.train.objective
    examples = s.builder.read(s.order.global_batch_ids(step))
    inst = [s.builder.instruction_for(e) for e in examples]
    if name == "compression":
        text = s.objective.text
        queries = [len(t.ids) for t in text.queries([e.query for e in examples], inst)]
        inputs, labels = text.responses([e.positive for e in examples])
        lens, logits, train_w = queries + [len(t.ids) for t in inputs], sum(map(len, labels)), False
    else:
        t = s.text_tok
        q = t.encode([e.query for e in examples], inst)
        docs = t.encode([e.positive for e in examples] + [n for e in examples for n in e.negatives])
        lens, logits, train_w = [len(x.ids) for x in q + docs], 0, not cfg.model.lora.enabled
        if name == "reconstruction":
            w_q2d, w_d2q = s.options.weights()
            targets = (docs if w_q2d else []) + (q if w_d2q else [])
            _, labels = decoding_inputs(targets)
            lens, logits = lens + [len(y) for y in labels], sum(map(len, labels))
    return {"real_tokens": sum(lens), "flops": train_flops(lm_config, lens, True, logits, train_w)}


def run(workload: str, mode: str, a: dict, out: Path) -> None:
    cfg, origin = recipe(workload, mode, a)
    device = D.init_distributed(cfg.deepspeed.backend)
    if mode == "packed":
        from embedtrain.engine.session import build_session, train_step

        s = build_session(cfg, origin, device)
        step_fn, backend = (lambda k: train_step(s, k)), s.engine.module.backend
    else:
        from speed.padded import build_padded_session, padded_train_step

        s = build_padded_session(cfg, origin, device)
        step_fn, backend = (lambda k: padded_train_step(s, k)), "hf sdpa, 2D mask"
    module = s.engine.module
    s.engine.train()  # from_pretrained leaves eval mode, in which HF skips gradient checkpointing
    if cfg.model.gradient_checkpointing and not any(getattr(m, "gradient_checkpointing", False) is True
                                                    for m in module.modules()):
        raise RuntimeError("model.gradient_checkpointing is set but no module checkpoints")
    total = cfg.train.steps
    work = [step_work(s, k, module.lm.config) for k in range(total)]
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rec = {"workload": workload, "mode": mode, "objective": cfg.train.objective, "attention": backend,
           "params": params, "trainable": trainable, "zero_stage": cfg.deepspeed.zero_stage,
           "lora": cfg.model.lora.enabled, "grad_ckpt": cfg.model.gradient_checkpointing, "steps": [], "device": str(device)}
    for k in range(total):
        sync()
        t0 = time.perf_counter()
        m = step_fn(k)
        sync()
        dt = time.perf_counter() - t0
        computed = m.get("computed_tokens", work[k]["real_tokens"])
        if mode == "packed" and (m["real_tokens"], m["model_flops"]) != (work[k]["real_tokens"], work[k]["flops"]):
            raise RuntimeError(f"step {k}: the trainer ran {m['real_tokens']} real tokens and counted "
                               f"{m['model_flops']:.6g} FLOPs, the bench's count from the examples says "
                               f"{work[k]['real_tokens']} and {work[k]['flops']:.6g}: one of them is wrong")
        rec["steps"].append({"loss": m["loss"], "time_s": dt, "computed_tokens": int(computed), **work[k]})
        print(f"[{workload}/{mode}] step {k + 1}/{total} loss {m['loss']:.4f} {dt:.3f}s", flush=True)
    rec["peak_memory_gib"] = peak_memory_gb(device)  # GiB: max_memory_allocated, or peak RSS on CPU
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, out)
