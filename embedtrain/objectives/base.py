"""The Objective interface the engine trains through, the step context it passes, and what objectives share."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from embedtrain import distributed as D
from embedtrain.data.batches import MicroBatch
from embedtrain.data.packing import TextTokenizer
from embedtrain.flops import text_lengths, train_flops
from embedtrain.model.embedder import EmbeddingModel
from embedtrain.model.folder import write_lm_folder

# backward(loss, final) runs one backward pass; final=False tells the engine more backward passes
# of the same micro-batch follow (gradient caching), so gradients are not yet reduced.
Backward = Callable[[torch.Tensor, bool], None]


@dataclass(frozen=True)
class FlopSpec:
    """What a model-FLOP count needs: the decoder's config, whether its own weights train (full
    fine-tuning) or only adapters / new rows, and whether the embedder reads causally."""
    config: object
    weights_train: bool
    causal: bool


@dataclass(frozen=True)
class StepContext:
    """What the engine tells an objective about the optimizer step a micro-batch belongs to.

    totals: the objective's step_totals() summed over the step's micro-batches and every rank; a token mean
      divided by them is one mean over the whole optimizer batch, whatever the accumulation and world size.
      None (no totals, or a loss computed outside a training step): normalise by this micro-batch alone.
    micro_batches: micro-batches the step accumulates (DeepSpeed divides each micro-step's loss by it).
    flops: given, objectives report the model FLOPs of each micro-batch as metrics["flops"].
    """
    totals: dict[str, float] | None = None
    micro_batches: int = 1
    flops: FlopSpec | None = None


NO_STEP = StepContext()


class Objective:
    """A training objective: the engine builds it with its typed options, calls setup() before DeepSpeed
    wraps the model, then forward_backward() per micro-batch; everything objective-specific the engine
    needs (text formatting, which weights are saved and how) comes from the hooks below."""

    name = "base"
    uses_lm_head = False  # objectives that decode (reconstruction) set True; otherwise the head is frozen
    uses_negatives = True  # False: the data's hard negatives are not read into batches

    def __init__(self, options, device: torch.device):
        self.options = options
        self.device = device

    def setup(self, model: EmbeddingModel, cfg, index, tokenizer) -> None:
        """Before DeepSpeed wraps the model: objectives that add trainable modules (in a slot the model
        declares) or freeze weights do it here (the model is the bare EmbeddingModel)."""

    # Objectives that format and pack their own batches set this to a method (examples -> MicroBatch);
    # None: the data builder's standard (query, positive, negatives) packing.
    make_batch = None

    def step_totals(self, batches: list[MicroBatch]) -> dict[str, float]:
        """This rank's counts, over all micro-batches of one step, that the loss averages over ({}: the
        loss needs none, e.g. a mean over equally many queries in every micro-batch)."""
        return {}

    def normalizer(self, micro_counts: dict[str, float], step: StepContext) -> tuple[dict[str, float], float]:
        """(denominators, factor) for this micro-batch's sums: the step's totals and its number of
        micro-batches, or outside a step this micro-batch's global counts (all_reduce_sum) and 1."""
        if step.totals is None:
            return D.all_reduce_sum(micro_counts, self.device), 1.0
        return {k: step.totals[k] for k in micro_counts}, float(step.micro_batches)

    def model_flops(self, lengths: list[int], step: StepContext, logit_positions: int = 0,
                    causal: bool | None = None) -> float:
        """Training FLOPs (forward + backward) of one pass over texts of these lengths (embedtrain.flops)."""
        spec = step.flops
        if spec is None:
            return 0.0
        return float(train_flops(spec.config, lengths, spec.causal if causal is None else causal, logit_positions,
                                 spec.weights_train))

    def stream_flops(self, streams, step: StepContext, logit_positions: int = 0, causal: bool | None = None) -> float:
        return self.model_flops([n for s in streams for n in text_lengths(s)], step, logit_positions, causal)

    def loss(self, model, batch: MicroBatch, step: StepContext = NO_STEP) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def forward_backward(self, model, batch: MicroBatch, backward: Backward,
                         step: StepContext = NO_STEP) -> dict[str, float]:
        loss, metrics = self.loss(model, batch, step)
        backward(loss, True)
        return metrics

    # ---------------------------------------------------------------- hooks the engine calls
    def text_format(self, data_format: TextTokenizer):
        """How evaluation during training formats a text (default: as the data builder does)."""
        return data_format

    def eval_instruction_policy(self, cfg):
        """policy(task_metadata, prompt_type) -> instruction for the offline-suite evaluation during
        training, or None: the suite's per-task instructions."""
        return None

    def saved_module(self, model: EmbeddingModel) -> torch.nn.Module:
        """The module whose weights a checkpoint's weights/, best/ and final/ hold (gathered under ZeRO-3)."""
        return model.lm

    def run_meta(self) -> dict:
        """Entries the saved folder's embedtrain.json gets from this objective (carried into exports)."""
        return {}

    def write_weights(self, state: dict[str, torch.Tensor], model: EmbeddingModel, cfg, tokenizer, out: Path) -> None:
        """On rank 0: write saved_module()'s full state into folder `out` (atomically), loadable by
        embedtrain.load and as model.init_from."""
        write_lm_folder(state, model, cfg, tokenizer, out, self.run_meta())


def text_order(batch: MicroBatch) -> torch.Tensor:
    """Permutation that puts the streams' concatenated outputs back into the batch's text order."""
    order = torch.tensor([i for s in batch.streams for i in s.text_ids])
    return torch.argsort(order)


def embed_batch(model, batch: MicroBatch, device) -> torch.Tensor:
    """(num_texts, H) embeddings of every text of the micro-batch, in text order, fp32."""
    parts = [model(s.to(device)) for s in batch.streams]
    return torch.cat(parts).float()[text_order(batch).to(device)]


class RngSnapshot:
    """RNG state before a forward, so a gradient-cache re-forward sees the same dropout masks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield
