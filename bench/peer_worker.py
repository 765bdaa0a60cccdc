"""One run of bench/peer_sentence_transformers.py: train with embedtrain or with sentence-transformers from a
job file the driver wrote, or score a saved sentence-transformers folder on the offline suite.

  python bench/peer_worker.py train JOB.json          (world size 1; torchrun --nproc_per_node 2 for 2)
  python bench/peer_worker.py eval FOLDER OUT.json --suite DIR --tasks A,B --max-length N --family F
  python bench/peer_worker.py lora-init RECIPE.yaml OUT.safetensors   (embedtrain's initial LoRA, for ST)

Every rank writes JOB_DIR/rank<r>.json: the wall clock at the end of each optimizer step, each step's loss
and real / computed tokens (this rank's), and the peak RSS when training ended (before any export).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _write(job: dict, record: dict) -> None:
    path = Path(job["dir"]) / f"rank{_rank()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


_LORA_NAME = re.compile(r"layers\.\d+\..*lora_[AB]\..*")


def _lora_params(named_parameters) -> dict[str, torch.nn.Parameter]:
    """The LoRA matrices under names both sides share ("layers.3.self_attn.q_proj.lora_A.default.weight"):
    embedtrain wraps the causal LM, sentence-transformers the bare decoder, so their prefixes differ."""
    return {m.group(0): p for name, p in named_parameters if (m := _LORA_NAME.search(name))}


def lora_state(named_parameters) -> dict[str, torch.Tensor]:
    return {k: p.detach().float().cpu() for k, p in _lora_params(named_parameters).items()}


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    return f"{len(state)} matrices, sha256 {h.hexdigest()[:16]}"


def train_embedtrain(job: dict) -> None:
    import embedtrain.engine.trainer as trainer
    from embedtrain.config.loader import load_recipe
    from embedtrain.export import export

    record = {"step_end": [], "loss": [], "real_tokens": [], "computed_tokens": []}
    step_fn = trainer.train_step

    def timed_step(s, step):  # the trainer's own step; the clock is read when it returns
        if "init_lora" not in record:  # the weights the first step starts from
            record["init_lora"] = fingerprint(lora_state(s.engine.module.named_parameters()))
        metrics = step_fn(s, step)
        record["step_end"].append(time.perf_counter())
        record["loss"].append(metrics["loss"])  # mean over ranks
        # totals over ranks: split evenly so that summing the ranks' files gives them back
        record["real_tokens"].append(metrics["real_tokens"] / int(os.environ.get("WORLD_SIZE", "1")))
        record["computed_tokens"].append(metrics["computed_tokens"] / int(os.environ.get("WORLD_SIZE", "1")))
        return metrics

    trainer.train_step = timed_step
    cfg, origin = load_recipe(job["recipe"], [])
    record["start"] = time.perf_counter()
    trainer.train(cfg, origin)
    record["peak_rss_gib"] = _peak_rss_gib()
    if _rank() == 0 and job.get("export"):
        export(cfg.run.output_dir, job["export"], max_length=job["eval_max_length"])
    _write(job, record)


def _st_model(job: dict):
    from peft import LoraConfig, get_peft_model

    from embedtrain.export import sentence_transformer, text_transformer, training_prompts, wrap_like_training
    from embedtrain.families import FAMILIES
    from embedtrain.st_modules import st_models

    family = FAMILIES[job["family"]]
    transformer = text_transformer(st_models.Transformer, job["model"], job["max_length"],
                                   model_args={"torch_dtype": torch.float32, "attn_implementation": "sdpa"})
    tokenizer = transformer.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = family.eos_token
    wrap_like_training(tokenizer, family)
    model = sentence_transformer(transformer, job["pooling"],
                                 training_prompts(family, job["instruction_format"], job["instructions"]))
    lora = job["lora"]
    # peft on the Transformer module's model (SentenceTransformer.add_adapter needs peft >= 0.22 through
    # transformers; setup.py allows older)
    setattr(transformer, _model_attr(transformer), get_peft_model(transformer.auto_model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(family.lora_targets), bias="none")))
    return model, family


def _model_attr(transformer) -> str:
    """sentence-transformers 6 keeps the model in `.model` (`.auto_model` is a read-only alias); 5 in `.auto_model`."""
    return "model" if isinstance(getattr(type(transformer), "auto_model", None), property) else "auto_model"


def save_lora_init(recipe: str, out: str) -> str:
    """The LoRA matrices an embedtrain run of this recipe starts from: the session's own seeding and model
    build (engine/session.py), without DeepSpeed or data."""
    from safetensors.torch import save_file

    from embedtrain.config.loader import load_recipe
    from embedtrain.model.embedder import build_model, load_tokenizer

    cfg, _ = load_recipe(recipe, [])
    torch.manual_seed(cfg.run.seed)
    embedder = build_model(cfg.model, load_tokenizer(cfg.model.path), torch.device("cpu"))
    state = lora_state(embedder.named_parameters())
    tmp = Path(out).with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out)
    return fingerprint(state)


def _load_lora_init(model, path: str) -> str:
    """embedtrain's initial LoRA matrices (the driver saved them) into the ST model: peft draws lora_A at
    random when it wraps the model, so without this the sides would start from different adapters (step 1
    agrees anyway because lora_B starts at zero; every later step would not)."""
    from safetensors.torch import load_file

    init = load_file(path)
    ours = _lora_params(model.named_parameters())
    if set(ours) != set(init):
        raise SystemExit(f"{path}: LoRA matrices differ from the ST model's ({len(init)} vs {len(ours)}; e.g. "
                         f"{sorted(set(init) ^ set(ours))[:3]})")
    with torch.no_grad():
        for key, param in ours.items():
            param.copy_(init[key])
    return fingerprint(lora_state(model.named_parameters()))


class _OrderedBatches:
    """The driver's batch order, as ConcatDataset indices: for each step, rank 0's slice, rank 1's, ...
    (accelerate hands batch i to rank i % world)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __call__(self, dataset, **kwargs):
        return self

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass


def train_sentence_transformers(job: dict) -> None:
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from embedtrain.engine.schedule import lr_factor

    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses

    model, family = _st_model(job)
    record = {"step_end": [], "loss": [], "real_tokens": [], "computed_tokens": []}
    record["init_lora"] = _load_lora_init(model, job["lora_init"])
    data = json.loads(Path(job["st_data"]).read_text())
    train = DatasetDict({name: Dataset.from_dict(cols) for name, cols in data["datasets"].items()})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    scale = 1.0 / job["temperature"]
    loss_cls = losses.CachedMultipleNegativesRankingLoss if job["st_loss"] == "cached" else \
        losses.MultipleNegativesRankingLoss
    extra = {"mini_batch_size": job["cached_mini_batch"]} if job["st_loss"] == "cached" else {}
    base_loss = loss_cls(model, scale=scale, gather_across_devices=job["gather"], **extra)
    pending = {"loss": 0.0, "real": 0, "computed": 0}

    class Recorded(type(base_loss)):  # the library's loss, unchanged; we only read its inputs and value
        def forward(self, sentence_features, labels=None):
            for f in sentence_features:
                pending["real"] += int(f["attention_mask"].sum())
                pending["computed"] += f["attention_mask"].numel()
            out = super().forward(sentence_features, labels)
            pending["loss"] = float(out.detach())
            return out

    base_loss.__class__ = Recorded

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record["step_end"].append(time.perf_counter())
            record["loss"].append(pending["loss"])
            record["real_tokens"].append(pending["real"])
            record["computed_tokens"].append(pending["computed"])
            pending.update(loss=0.0, real=0, computed=0)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=job["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    # embedtrain's schedule (warmup from lr/warmup at the first step, then linear decay), so both runs see the
    # same learning rate at every step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, job["warmup"], job["steps"], "linear", 0.0))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(job["dir"]) / "st_out"), max_steps=job["steps"],
        per_device_train_batch_size=job["batch_size"] // world, learning_rate=job["lr"], max_grad_norm=1.0,
        seed=job["seed"], use_cpu=True, ddp_backend="gloo" if world > 1 else None,
        ddp_find_unused_parameters=False, save_strategy="no", report_to=[], logging_steps=1,
        dataloader_num_workers=0, dataloader_pin_memory=False, prompts=data["prompts"],
        multi_dataset_batch_sampler=_OrderedBatches(data["batches"]), disable_tqdm=_rank() != 0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=base_loss,
                                         optimizers=(optimizer, scheduler), callbacks=[StepClock()])
    record["start"] = time.perf_counter()
    trainer.train()
    record["peak_rss_gib"] = _peak_rss_gib()
    if _rank() == 0 and job.get("export"):
        transformer = model[0]
        setattr(transformer, _model_attr(transformer), transformer.auto_model.merge_and_unload())
        model.max_seq_length = job["eval_max_length"]
        model.save(job["export"], create_model_card=False)
    _write(job, record)
    if world > 1:
        torch.distributed.barrier()


def evaluate(folder: str, out: str, suite: str, tasks: list[str], max_length: int, family_name: str,
             instruction_format: str, batch_size: int = 32) -> dict:
    """Both sides' folders through the same code: sentence-transformers encodes, with the template prefix as
    the document prompt and prefix + the suite's instruction as the query prompt."""
    from sentence_transformers import SentenceTransformer

    from embedtrain.evaluation.mteb_encoder import evaluate_encoder, load_instructions, make_encoder, resolve_tasks
    from embedtrain.families import FAMILIES

    family = FAMILIES[family_name]
    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = max_length

    def encode_fn(texts, instruction):
        prompt = family.prefix + (instruction_format.format(instruction=instruction) if instruction else "")
        return model.encode(texts, prompt=prompt, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    encoder = make_encoder(encode_fn, Path(folder).name, model.get_sentence_embedding_dimension(),
                           load_instructions(None, suite))
    scores = evaluate_encoder(encoder, resolve_tasks(tasks, suite), Path(out).parent / "mteb", folder)
    Path(out).write_text(json.dumps(scores, indent=1))
    return scores


def main(argv: list[str]) -> int:
    if argv[0] == "train":
        job = json.loads(Path(argv[1]).read_text())
        (train_embedtrain if job["side"] == "embedtrain" else train_sentence_transformers)(job)
        return 0
    if argv[0] == "lora-init":
        print(save_lora_init(argv[1], argv[2]))
        return 0
    if argv[0] == "eval":
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("folder")
        p.add_argument("out")
        p.add_argument("--suite", required=True)
        p.add_argument("--tasks", required=True)
        p.add_argument("--max-length", type=int, required=True)
        p.add_argument("--family", required=True)
        p.add_argument("--instruction-format", required=True)
        a = p.parse_args(argv[1:])
        evaluate(a.folder, a.out, a.suite, a.tasks.split(","), a.max_length, a.family, a.instruction_format)
        return 0
    raise SystemExit(f"unknown command {argv[0]!r}: use train JOB.json, eval FOLDER OUT.json ... or lora-init "
                     "RECIPE OUT")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
