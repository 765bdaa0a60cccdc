"""sentence-transformers modules for exported embedtrain models (loaded by import path; no remote code).

LastTokensMean: mean of the last `num_tokens` real tokens' states, the pooling of compression-token
models (their n compression tokens close every text). Left or right padding both work.
BidirectionalTransformer: the stock Transformer module reading a decoder without its causal mask (runs
trained with model.attention: bidirectional).
"""
from __future__ import annotations

try:  # sentence-transformers 6: the module classes' new home (`sentence_transformers.models` warns)
    from sentence_transformers.sentence_transformer import modules as st_models
except ImportError:  # earlier releases
    from sentence_transformers import models as st_models

Module = st_models.Module


class LastTokensMean(Module):
    config_keys = ["embedding_dimension", "num_tokens"]

    def __init__(self, embedding_dimension: int, num_tokens: int):
        super().__init__()
        self.embedding_dimension, self.num_tokens = embedding_dimension, num_tokens

    def forward(self, features: dict, **kwargs) -> dict:
        hidden_BTH = features["token_embeddings"]
        mask_BT = features["attention_mask"].to(hidden_BTH.dtype)
        rank_BT = mask_BT.cumsum(1)  # 1-based index of each real token
        lengths_B = mask_BT.sum(1, keepdim=True)
        keep_BT = mask_BT * (rank_BT > lengths_B - self.num_tokens).to(hidden_BTH.dtype)
        features["sentence_embedding"] = (hidden_BTH * keep_BT[..., None]).sum(1) / self.num_tokens
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)


class BidirectionalTransformer(st_models.Transformer):
    """Every token attends to every real token of its own text. transformers takes a 4D mask as given, so a
    (B, 1, T, T) mask that hides only padding keys removes the causal mask without patching the model;
    padded query rows still see real keys (no empty softmax). Pooling keeps the 2D mask in features."""

    def forward(self, features: dict, **kwargs) -> dict:
        mask_BT = features.get("attention_mask")
        if mask_BT is not None and "attention_mask" not in kwargs:
            T = mask_BT.shape[1]
            kwargs["attention_mask"] = mask_BT.bool()[:, None, None, :].expand(-1, 1, T, T)
        return super().forward(features, **kwargs)
