"""Runs under `torchrun --nproc_per_node 2` from test_distributed.py; one launch, many scenarios.

usage: dist_worker.py OUT_DIR RECIPE SCENARIO[,SCENARIO...]
Writes OUT_DIR/results.json (rank 0) and, for gradient scenarios, OUT_DIR/grads_<name>.safetensors.
"""
import json
import sys
from pathlib import Path

import torch

from embedtrain import distributed as D
from embedtrain.config.loader import load_recipe
from embedtrain.config.validate import objective_options
from embedtrain.data.batches import MicroBatchBuilder
from embedtrain.data.jsonl import build_index
from embedtrain.data.packing import TextTokenizer
from embedtrain.engine.ds_config import build_ds_config
from embedtrain.engine.schedule import build_optimizer, build_scheduler
from embedtrain.engine.trainer import train
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.registry import get_objective

GRADS = {  # name -> recipe overrides; one optimizer step on 8 examples split over the ranks
    "grad_plain": [],
    "grad_cache": ["objective.infonce.grad_cache=true", "data.max_tokens_per_batch=160"],
    "grad_symmetric": ["objective.infonce.symmetric=true"],
    # no cross-rank negatives: each rank's queries against its own candidates only
    "grad_local": ["objective.infonce.gather_across_ranks=false"],
    # Matryoshka prefixes with the gradient cache and the cross-rank gather
    "grad_matryoshka": ["objective.infonce.symmetric=true", "objective.infonce.matryoshka_dims=[64,16]",
                        "objective.infonce.matryoshka_weights=[1,0.5]", "objective.infonce.grad_cache=true",
                        "data.max_tokens_per_batch=160"],
}
HELD = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "data" / "heldout.jsonl"
TRAJ = {  # name -> overrides; 10 optimizer steps through the real trainer
    "z0": ["deepspeed.zero_stage=0"],
    "z1": ["deepspeed.zero_stage=1"],
    "z2": ["deepspeed.zero_stage=2"],
    "z3": ["deepspeed.zero_stage=3"],
    "z3_offload": ["deepspeed.zero_stage=3", "deepspeed.offload=true"],
    # evaluation during training from ZeRO-3 shards (every rank's forwards), and best/ gathered from them
    "z3_eval": ["deepspeed.zero_stage=3", f"eval.retrieval={HELD}", "eval.max_examples=24", "eval.every_steps=5",
                "run.keep_best=true"],
    "z2_gradcache": ["deepspeed.zero_stage=2", "objective.infonce.grad_cache=true", "data.max_tokens_per_batch=160"],
    "z3_gradcache": ["deepspeed.zero_stage=3", "objective.infonce.grad_cache=true", "data.max_tokens_per_batch=160"],
    "z0_accum": ["deepspeed.zero_stage=0", "train.grad_accum=2", "train.batch_size=4"],
    "z2_accum": ["deepspeed.zero_stage=2", "train.grad_accum=2", "train.batch_size=4"],
    "recon_z0": ["train.objective=reconstruction", "objective.reconstruction.logits_chunk=16"],
    "recon_micro": ["train.objective=reconstruction", "objective.reconstruction.logits_chunk=16",
                    "train.micro_batch_per_rank=2", "deepspeed.zero_stage=2"],
    "recon_z3": ["train.objective=reconstruction", "objective.reconstruction.logits_chunk=16",
                 "deepspeed.zero_stage=3"],
    # 8 examples in one micro-step of 4 per rank (recon_micro: two of 2): the loss is one token mean either way
    "recon_whole": ["train.objective=reconstruction", "objective.reconstruction.logits_chunk=16",
                    "train.micro_batch_per_rank=4"],
    "comp_z0": ["deepspeed.zero_stage=0"],  # with the compression recipe of test_compression.py
    "comp_micro": ["deepspeed.zero_stage=0", "train.micro_batch_per_rank=1"],  # 4 accumulated micro-steps
    "comp_z3": ["deepspeed.zero_stage=3"],
}
RESUMES = {  # name -> (overrides, output prefix, stop after step): uninterrupted vs stopped + --resume
    "resume": (["deepspeed.zero_stage=3", "model.lora.enabled=true", "model.lora.dropout=0.1", "train.lr=1e-2"], "", 5),
    "comp_resume": (["deepspeed.zero_stage=2"], "comp_", 3),  # with the compression recipe
}


def grad_scenario(recipe, overrides, out: Path, name: str):
    """One step of the engine; the optimizer's pre-step hook sees the reduced (averaged) gradients."""
    import deepspeed
    from safetensors.torch import save_file

    cfg, origin = load_recipe(recipe, overrides + ["train.grad_clip=0", "deepspeed.zero_stage=0"])
    device = torch.device("cpu")
    tok = load_tokenizer(cfg.model.path)
    torch.manual_seed(0)
    model = build_model(cfg.model, tok, device)
    model.freeze_unused_lm_head()
    text_tok = TextTokenizer(tok, model.family, cfg.data.max_length, cfg.data.instruction_format)
    index = build_index(cfg.data.train)
    builder = MicroBatchBuilder(index, text_tok, cfg.data.max_tokens_per_batch, 1, cfg.data.instructions, None)
    optimizer = build_optimizer(model, cfg.train)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=build_scheduler(optimizer, cfg.train),
                                      config=build_ds_config(cfg, D.world_size()))
    captured = {}

    def capture(opt, args, kwargs):
        for n, p in engine.module.named_parameters():
            if p.grad is not None:
                captured[n] = p.grad.detach().clone()

    optimizer.register_step_pre_hook(capture)
    per_rank = 8 // D.world_size()
    examples = [index.read(i) for i in range(8)][D.rank() * per_rank:(D.rank() + 1) * per_rank]
    batch = builder.from_examples(examples)
    objective = get_objective(cfg.train.objective)[0](objective_options(cfg, origin), device)
    metrics = objective.forward_backward(engine, batch, lambda loss, final: engine.backward(loss))
    engine.step()
    metrics = D.all_reduce_mean(metrics, device)
    if D.rank() == 0:
        save_file(captured, str(out / f"grads_{name}.safetensors"))
    return {"loss": metrics["loss"], "streams": len(batch.streams)}


def main():
    out, recipe, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
    D.init_distributed()
    results = {}
    for name in names:
        if name in GRADS:
            results[name] = grad_scenario(recipe, GRADS[name], out, name)
        elif name in TRAJ:
            cfg, origin = load_recipe(recipe, TRAJ[name] + [f"run.output_dir={out / name}"])
            results[name] = train(cfg, origin)["losses"]
        elif name == "comp_frozen":  # every weight after training, gathered from ZeRO-3 shards
            from safetensors.torch import save_file

            from embedtrain.engine.checkpoint import full_state_dict

            cfg, origin = load_recipe(recipe, ["deepspeed.zero_stage=3", f"run.output_dir={out / name}"])
            result = train(cfg, origin)
            state = full_state_dict(result["engine"].module, 3)
            if D.rank() == 0:
                save_file(state, str(out / f"{name}.safetensors"))
            results[name] = result["losses"]
        elif name in RESUMES:
            base, prefix, stop = RESUMES[name]
            sets = base + [f"run.output_dir={out / (prefix + 'straight')}"]
            straight = train(*load_recipe(recipe, sets))["losses"]
            sets = base + [f"run.output_dir={out / (prefix + 'split')}"]
            first = train(*load_recipe(recipe, sets + [f"run.stop_at_step={stop}"]))["losses"]
            torch.manual_seed(1234)  # a resumed run must not depend on the RNG it happens to start with
            second = train(*load_recipe(recipe, sets), resume=True)["losses"]
            results[name] = {"straight": straight, "first": first, "second": second}
        else:
            raise SystemExit(f"unknown scenario {name}")
    if D.rank() == 0:
        (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
