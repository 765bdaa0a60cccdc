"""What every objective shares: embedding a rank's micro-batch in text order."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from embedtrain.data.batches import MicroBatch
from embedtrain.flops import text_lengths, train_flops

# backward(loss, final) runs one backward pass; final=False tells the engine more backward passes
# of the same micro-batch follow (gradient caching), so gradients are not yet reduced.
Backward = Callable[[torch.Tensor, bool], None]


class Objective:
    name = "base"
    uses_lm_head = False  # objectives that decode (reconstruction) set True; otherwise the head is frozen
    uses_negatives = True  # False: the data's hard negatives are not read into batches
    # True when splitting a batch into accumulated micro-batches leaves the loss unchanged (no in-batch
    # interaction between examples): train.micro_batch_per_rank may then derive grad_accum.
    splittable = False

    def __init__(self, options, device: torch.device):
        self.options = options
        self.device = device

    def setup(self, model, cfg, index, tokenizer) -> None:
        """Before DeepSpeed wraps the model: objectives that add trainable modules or freeze weights do it
        here (the model is the bare EmbeddingModel)."""

    # Set by the engine before a step's micro-batches run, for objectives whose step_totals are not empty:
    # those totals summed over the step's micro-batches and every rank, plus "micro_batches". A token mean
    # divided by them is one mean over the whole optimizer batch, whatever the accumulation and world size.
    step_norm: dict[str, float] | None = None

    def step_totals(self, batches: list[MicroBatch]) -> dict[str, float]:
        """This rank's counts, over all micro-batches of one step, that the loss averages over ({}: the
        loss needs none, e.g. a mean over equally many queries in every micro-batch)."""
        return {}

    def normalizer(self, micro_counts: dict[str, float]) -> tuple[dict[str, float], float]:
        """(denominators, factor) for this micro-batch's sums: the step's totals and the number of
        micro-batches (DeepSpeed divides each micro-step's loss by it), or without step_norm this
        micro-batch's global counts (all_reduce_sum of micro_counts) and 1."""
        from embedtrain import distributed as D

        if self.step_norm is None:
            return D.all_reduce_sum(micro_counts, self.device), 1.0
        return {k: self.step_norm[k] for k in micro_counts}, float(self.step_norm["micro_batches"])

    # Objectives that format and pack their own batches set this to a method (examples -> MicroBatch);
    # None: the data builder's standard (query, positive, negatives) packing.
    make_batch = None

    # (decoder config, whether the decoder's own weights train, the model's attention is causal), set by
    # the engine: objectives then report the model FLOPs of each micro-batch as metrics["flops"].
    flop_spec: tuple | None = None

    def model_flops(self, lengths: list[int], logit_positions: int = 0, causal: bool | None = None) -> float:
        """Training FLOPs (forward + backward) of one pass over texts of these lengths (embedtrain.flops)."""
        if self.flop_spec is None:
            return 0.0
        config, weights_train, model_causal = self.flop_spec
        return float(train_flops(config, lengths, model_causal if causal is None else causal, logit_positions,
                                 weights_train))

    def stream_flops(self, streams, logit_positions: int = 0, causal: bool | None = None) -> float:
        return self.model_flops([n for s in streams for n in text_lengths(s)], logit_positions, causal)

    def loss(self, model, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def forward_backward(self, model, batch: MicroBatch, backward: Backward) -> dict[str, float]:
        loss, metrics = self.loss(model, batch)
        backward(loss, True)
        return metrics


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
