"""Embedding texts with a (training-time) EmbeddingModel, and a small retrieval score for held-out pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from embedtrain.data.packing import TextTokenizer, pack_texts
from embedtrain.model.compression import CompressionText, embed_texts


@torch.no_grad()
def encode_texts(model, text_tok: TextTokenizer, texts: list[str], instructions: list[str | None] | None,
                 max_tokens: int, device, normalize: bool = True) -> torch.Tensor:
    """(N, H) fp32 embeddings, packed streams (no padding), in input order. A model with compression
    tokens (text_tok a CompressionText) gives its (N, D) compression embeddings."""
    was_training = model.training
    model.eval()
    if isinstance(text_tok, CompressionText):
        out, _ = embed_texts(model, model.compression, text_tok, texts, instructions, max_tokens, device)
        model.train(was_training)
        return F.normalize(out, dim=-1) if normalize else out
    streams = pack_texts(text_tok.encode(texts, instructions), max_tokens, text_tok.pad_id)
    out = torch.empty(len(texts), model.lm.config.hidden_size, dtype=torch.float32, device=device)
    for s in streams:
        out[torch.tensor(s.text_ids, device=device)] = model(s.to(device)).float()
    model.train(was_training)
    return F.normalize(out, dim=-1) if normalize else out


def retrieval_scores(q_ND: torch.Tensor, d_ND: torch.Tensor) -> dict[str, float]:
    """Query i's relevant document is row i of d; all rows of d are the candidate pool."""
    sims = q_ND @ d_ND.T
    gold = sims.diagonal()[:, None]
    rank = (sims > gold).sum(-1) + 1  # 1-based rank of the relevant document
    return {"recall@1": float((rank <= 1).float().mean()), "recall@10": float((rank <= 10).float().mean()),
            "mrr": float((1.0 / rank.float()).mean()), "n": float(len(rank))}
