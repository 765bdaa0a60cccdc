"""Each objective's recipe options (`objective.<name>:`), typed, with the checks they put on the recipe.

These dataclasses are the config side of an objective: the loader turns every `objective.<name>` block
into one at load time (RecipeConfig.objective then maps name -> options instance), and `validate(cfg)`
is a pure function of the loaded recipe. The objective class itself registers under the same name in
objectives/registry.py. A new objective: its options class here (@options_for), its class in
objectives/<name>.py (@register), one import line in objectives/__init__.py.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

OPTIONS: dict[str, type] = {}  # objective name -> its options dataclass


class ObjectiveOptions:
    """Base of the options dataclasses. Besides attributes, options read like the recipe block they came
    from (options["alpha"], options.get("temperature", 0.02)): code written against the YAML mapping works."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in {f.name for f in fields(self)} else default

    def validate(self, cfg) -> tuple[str, str] | None:
        return None


def options_for(name: str) -> Callable[[type], type]:
    """Register an options dataclass as the schema of `objective.<name>`. Its optional validate(cfg)
    returns None or (dotted key, message) for a recipe the objective cannot train."""
    def wrap(cls: type) -> type:
        if name in OPTIONS:
            raise ValueError(f"options of objective {name!r} registered twice")
        OPTIONS[name] = cls
        return cls

    return wrap


@options_for("infonce")
@dataclass
class InfoNCEOptions(ObjectiveOptions):
    temperature: float = 0.02
    symmetric: bool = False  # also score each positive against all queries (doc -> query)
    grad_cache: bool = False  # embed without graphs, then re-run each stream with cached gradients
    # Matryoshka representation learning: the loss summed over these leading-prefix sizes of the embedding
    # (each prefix re-normalised), e.g. [576, 288, 144, 72]; None: the full embedding only.
    matryoshka_dims: Optional[list[int]] = None
    matryoshka_weights: Optional[list[float]] = None  # one per dimension; default 1 each
    # Score each rank's queries against every rank's candidates (the global batch's in-batch negatives); false:
    # against this rank's own candidates only (sentence-transformers' gather_across_devices: false)
    gather_across_ranks: bool = True

    def validate(self, cfg):
        key = "objective.infonce."
        if not self.temperature > 0:
            return key + "temperature", f"must be > 0, got {self.temperature}"
        dims, weights = self.matryoshka_dims, self.matryoshka_weights
        if dims is not None:
            if not dims or any(d < 1 for d in dims) or len(set(dims)) != len(dims):
                return key + "matryoshka_dims", f"needs distinct dimensions >= 1, got {dims}"
            if weights is not None and (len(weights) != len(dims) or any(not w > 0 for w in weights)):
                return key + "matryoshka_weights", f"needs one weight > 0 per dimension of {dims}, got {weights}"
        elif weights is not None:
            return key + "matryoshka_weights", "given without objective.infonce.matryoshka_dims"
        if cfg.train.micro_batch_per_rank is not None:
            # in-batch negatives: the loss of a split batch is not the loss of the whole batch
            return "train.micro_batch_per_rank", (
                "splitting a batch changes the infonce loss (in-batch negatives); keep the global contrastive "
                "batch with objective.infonce.grad_cache: true and data.max_tokens_per_batch instead")
        return None


@options_for("reconstruction")
@dataclass
class ReconstructionOptions(ObjectiveOptions):
    alpha: float = 0.2  # weight of Q2D (documents decoded from query anchors); D2Q gets 1 - alpha
    q2d: bool = True
    d2q: bool = True
    logits_chunk: int = 1024  # target positions per LM-head chunk

    def weights(self) -> tuple[float, float]:
        if not self.q2d:
            return 0.0, 1.0
        if not self.d2q:
            return 1.0, 0.0
        return self.alpha, 1.0 - self.alpha

    def validate(self, cfg):
        if not 0.0 <= self.alpha <= 1.0:
            return "objective.reconstruction.alpha", f"must be in [0, 1], got {self.alpha}"
        if not (self.q2d or self.d2q):
            return "objective.reconstruction.q2d", "q2d and d2q are both off: nothing to train"
        if self.logits_chunk < 1:
            return "objective.reconstruction.logits_chunk", f"must be >= 1, got {self.logits_chunk}"
        if cfg.model.pooling != "last":
            return "model.pooling", "reconstruction decodes from the anchor (the EOS state): set model.pooling: last"
        if cfg.model.attention != "causal":
            return "model.attention", "the anchor recipe embeds with causal attention; set model.attention: causal"
        return None


@options_for("compression")
@dataclass
class CompressionOptions(ObjectiveOptions):
    thought_tokens: int = 10  # m (paper v1: 10; v2: 0)
    compression_tokens: int = 10  # n
    w_recon: float = 1.0
    w_align: float = 1.0
    response_max_length: int = 512  # decoded tokens per response, EOS included
    online_teacher: bool = False  # embed responses with the `teacher:` model every step instead of the cache
    logits_chunk: int = 1024  # target positions per LM-head chunk

    def validate(self, cfg):
        key = "objective.compression."
        if self.compression_tokens < 1 or self.thought_tokens < 0:
            return key + "compression_tokens", "needs compression_tokens >= 1 and thought_tokens >= 0"
        if self.w_recon < 0 or self.w_align < 0 or self.w_recon + self.w_align == 0:
            return key + "w_recon", f"weights must be >= 0 and not both 0, got {self.w_recon}, {self.w_align}"
        if self.response_max_length < 2 or self.logits_chunk < 1:
            return key + "response_max_length", "response_max_length must be >= 2 and logits_chunk >= 1"
        if cfg.model.lora.enabled:
            return "model.lora.enabled", "the compression objective freezes the whole backbone; disable LoRA"
        if cfg.model.attention != "causal":
            return "model.attention", "the frozen LLM reads the query causally: set model.attention: causal"
        budget = cfg.data.max_tokens_per_batch
        need = max(cfg.data.max_length + self.thought_tokens + self.compression_tokens,
                   self.compression_tokens + self.response_max_length - 1)
        if budget < need:
            return "data.max_tokens_per_batch", (f"({budget}) must hold one query plus its special tokens and one "
                                                 f"decoded response ({need} tokens)")
        if self.online_teacher and not cfg.teacher.path:
            return "teacher.path", "objective.compression.online_teacher needs a teacher"
        return None
