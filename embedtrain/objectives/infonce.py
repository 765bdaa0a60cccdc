"""InfoNCE with in-batch and hard negatives gathered across ranks (METHODS.md section 2).

Loss scaling (the choice METHODS asks us to make and prove): every rank computes the mean
cross-entropy over ITS OWN queries against ALL candidates of the global batch, gathered with
gradient. The gather's backward sums every rank's gradient for our rows, and DeepSpeed averages
gradients over ranks, so each rank ends with exactly the gradient of the global mean loss.
tests/test_distributed.py checks this against the same global batch in one process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from embedtrain.config.objective_options import InfoNCEOptions
from embedtrain.data.batches import MicroBatch
from embedtrain.distributed import gather_with_grad
from embedtrain.objectives.base import NO_STEP, Backward, Objective, RngSnapshot, StepContext, embed_batch, text_order
from embedtrain.objectives.registry import register

__all__ = ["InfoNCE", "InfoNCEOptions", "infonce_loss", "matryoshka_infonce_loss"]


def _gather(x_ND: torch.Tensor, across_ranks: bool) -> tuple[torch.Tensor, int]:
    return gather_with_grad(x_ND) if across_ranks else (x_ND, 0)


def infonce_loss(emb_ND: torch.Tensor, num_queries: int, temperature: float, symmetric: bool = False,
                 gather: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """emb rows: Q queries, Q positives, then negatives. Returns this rank's mean loss + metrics.
    gather=False: this rank's candidates only (no cross-rank negatives)."""
    emb_ND = F.normalize(emb_ND.float(), dim=-1)
    q_QD, cand_CD = emb_ND[:num_queries], emb_ND[num_queries:]  # candidates: positives then negatives
    all_cand_GD, offset = _gather(cand_CD, gather)
    return _contrastive(q_QD, cand_CD, all_cand_GD, offset, temperature, symmetric, gather)


def _contrastive(q_QD, cand_CD, all_cand_GD, offset: int, temperature: float, symmetric: bool,
                 gather: bool = True):
    """Cross-entropy of this rank's (normalised) queries against the gathered candidates; + doc -> query."""
    num_queries = q_QD.shape[0]
    labels_Q = torch.arange(num_queries, device=q_QD.device) + offset
    logits_QG = q_QD @ all_cand_GD.T / temperature
    loss = F.cross_entropy(logits_QG, labels_Q)
    metrics = {"loss_q2d": loss.item(), "acc": (logits_QG.argmax(-1) == labels_Q).float().mean().item()}
    if symmetric:
        all_q_GD, q_offset = _gather(q_QD, gather)
        logits_QGq = cand_CD[:num_queries] @ all_q_GD.T / temperature
        loss_d2q = F.cross_entropy(logits_QGq, torch.arange(num_queries, device=q_QD.device) + q_offset)
        metrics["loss_d2q"] = loss_d2q.item()
        loss = (loss + loss_d2q) / 2
    metrics["loss"] = loss.item()
    return loss, metrics


def matryoshka_infonce_loss(emb_ND: torch.Tensor, num_queries: int, temperature: float, dims: list[int],
                            weights: list[float] | None = None, symmetric: bool = False,
                            gather: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_d w_d * InfoNCE on the leading d dimensions, each prefix re-normalised. The raw candidates are
    gathered across ranks once (with gradient) and sliced per d, so one forward serves every prefix."""
    emb_ND = emb_ND.float()
    all_cand_GD, offset = _gather(emb_ND[num_queries:], gather)
    weights = weights or [1.0] * len(dims)
    loss, metrics = emb_ND.new_zeros(()), {}
    for d, w in zip(dims, weights):
        q_Qd = F.normalize(emb_ND[:num_queries, :d], dim=-1)
        cand_Cd = F.normalize(emb_ND[num_queries:, :d], dim=-1)
        loss_d, m = _contrastive(q_Qd, cand_Cd, F.normalize(all_cand_GD[:, :d], dim=-1), offset, temperature,
                                 symmetric, gather)
        loss = loss + w * loss_d
        metrics[f"loss_dim{d}"], metrics[f"acc_dim{d}"] = m["loss"], m["acc"]
    metrics["loss"] = loss.item()
    return loss, metrics


@register("infonce")
class InfoNCE(Objective):
    def setup(self, model, cfg, index, tokenizer) -> None:
        dims = self.options.matryoshka_dims or []
        hidden = model.lm.config.hidden_size
        if any(d > hidden for d in dims):
            raise ValueError(f"objective.infonce.matryoshka_dims {dims}: the model's embeddings have {hidden} "
                             f"dimensions; use dimensions <= {hidden}")

    def _loss(self, emb_ND: torch.Tensor, num_queries: int) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.options
        if o.matryoshka_dims:
            return matryoshka_infonce_loss(emb_ND, num_queries, o.temperature, o.matryoshka_dims,
                                           o.matryoshka_weights, o.symmetric, o.gather_across_ranks)
        return infonce_loss(emb_ND, num_queries, o.temperature, o.symmetric, o.gather_across_ranks)

    def run_meta(self) -> dict:
        return {"matryoshka_dims": list(self.options.matryoshka_dims)} if self.options.matryoshka_dims else {}

    def loss(self, model, batch: MicroBatch, step: StepContext = NO_STEP):
        emb = embed_batch(model, batch, self.device)
        loss, metrics = self._loss(emb, batch.num_queries)
        metrics["flops"] = self.stream_flops(batch.streams, step)
        return loss, metrics

    def forward_backward(self, model, batch: MicroBatch, backward: Backward,
                         step: StepContext = NO_STEP) -> dict[str, float]:
        if not self.options.grad_cache:
            return super().forward_backward(model, batch, backward, step)
        streams = [s.to(self.device) for s in batch.streams]
        # 1. Embed every stream without a graph, remembering the RNG each forward started from.
        snapshots, cached = [], []
        with torch.no_grad():
            for s in streams:
                snapshots.append(RngSnapshot(self.device))
                cached.append(model(s).detach().requires_grad_())
        # 2. Loss and its gradient w.r.t. the embeddings only (collectives included, no parameters).
        emb = torch.cat(cached).float()[text_order(batch).to(self.device)]
        loss, metrics = self._loss(emb, batch.num_queries)
        loss.backward()
        # 3. Re-run each stream with a graph and push the cached embedding gradient through it.
        for i, (s, snap, leaf) in enumerate(zip(streams, snapshots, cached)):
            with snap.replay():
                out = model(s)
            backward((out * leaf.grad.to(out.dtype)).sum(), i == len(streams) - 1)
        metrics["flops"] = self.stream_flops(batch.streams, step)  # model FLOPs: the no-grad pass is not counted
        return metrics
