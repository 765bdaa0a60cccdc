"""The trainable module: a Hugging Face causal LM run over packed streams, plus pooling.

DeepSpeed wraps this module (so gradient sync, ZeRO partitioning and checkpointing see one object);
objectives call the DeepSpeed engine with a PackedStream and get pooled embeddings back.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from embedtrain.config.schema import ModelConfig
from embedtrain.data.packing import PackedStream
from embedtrain.families import Family, resolve_family
from embedtrain.model.attention import IMPL_NAME, PackedAttention, pick_backend

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pool(hidden_TH: torch.Tensor, stream: PackedStream, mode: str) -> torch.Tensor:
    """(T, H) hidden states -> (S, H) one vector per text of the stream."""
    if mode == "last":
        return hidden_TH[stream.last_index]
    if mode == "mean":
        n_texts = len(stream.text_ids)
        seg_T = torch.repeat_interleave(
            torch.arange(len(stream.cu_seqlens) - 1, device=hidden_TH.device),
            (stream.cu_seqlens[1:] - stream.cu_seqlens[:-1]).long())
        w_T = stream.pool_mask.to(hidden_TH.dtype)
        sums_SH = hidden_TH.new_zeros(len(stream.cu_seqlens) - 1, hidden_TH.shape[1])
        sums_SH = sums_SH.index_add(0, seg_T, hidden_TH * w_T[:, None])
        counts_S = torch.zeros(sums_SH.shape[0], device=hidden_TH.device, dtype=hidden_TH.dtype).index_add(0, seg_T, w_T)
        return sums_SH[:n_texts] / counts_S[:n_texts, None].clamp_min(1)
    raise ValueError(f"unknown pooling {mode!r}")


class EmbeddingModel(nn.Module):
    def __init__(self, lm: nn.Module, family: Family, causal: bool, pooling: str, backend: str):
        super().__init__()
        self.lm = lm
        self.family = family
        self.causal = causal
        self.pooling = pooling
        self.backend = backend
        # The compression objective's trainable special tokens and maps (model/compression.py
        # CompressionHead), set by its setup() or by loading a compression run; None on other models.
        self.compression: nn.Module | None = None

    def freeze_unused_lm_head(self) -> int:
        """Freeze an untied LM head the objective never uses: no optimizer state for vocab x H."""
        head = self.lm.get_output_embeddings()
        tied = head.weight is self.lm.get_input_embeddings().weight
        if tied or not head.weight.requires_grad:
            return 0
        head.weight.requires_grad_(False)
        return head.weight.numel()

    def decoder(self) -> nn.Module:
        # get_decoder() reaches through a peft wrapper to the (LoRA-patched) transformer stack.
        return self.lm.get_decoder()

    def hidden_states(self, stream: PackedStream, inject: tuple[torch.Tensor, torch.Tensor] | None = None,
                      causal: bool | None = None) -> torch.Tensor:
        """Last-layer states (after the final norm) of a packed stream: (T, H).

        inject=(positions_P, vectors_PH) replaces the input embeddings at those positions (soft prefixes).
        """
        packed = PackedAttention.build(stream.cu_seqlens, self.causal if causal is None else causal, self.backend)
        kwargs = dict(position_ids=stream.position_ids[None], use_cache=False, packed=packed)
        if inject is None:
            out = self.decoder()(input_ids=stream.input_ids[None], **kwargs)
        else:
            positions_P, vectors_PH = inject
            embeds_TH = self.lm.get_input_embeddings()(stream.input_ids)
            embeds_TH = embeds_TH.index_put((positions_P,), vectors_PH.to(embeds_TH.dtype))
            out = self.decoder()(inputs_embeds=embeds_TH[None], **kwargs)
        return out.last_hidden_state[0]

    def forward(self, stream: PackedStream, inject: tuple[torch.Tensor, torch.Tensor] | None = None,
                causal: bool | None = None, return_hidden: bool = False) -> torch.Tensor:
        """Pooled embeddings of the stream's texts: (S, H), in the model's dtype, not normalised; or,
        with return_hidden, the (T, H) states. Objectives call this through the DeepSpeed engine."""
        hidden_TH = self.hidden_states(stream, inject, causal)
        return hidden_TH if return_hidden else pool(hidden_TH, stream, self.pooling)

    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()


def unwrap(model) -> EmbeddingModel:
    """The EmbeddingModel inside a DeepSpeed engine (its .module), or the model itself."""
    return model.module if hasattr(model, "module") else model


def load_tokenizer(path: str):
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model.path {path!r} is not a local folder (embedtrain loads models from "
                                "disk; download or convert the model first)")
    return AutoTokenizer.from_pretrained(path)


def resolve_weights(cfg: ModelConfig) -> str:
    """model.init_from may name a weights folder, an earlier run (its final/ folder is used) or one of its
    checkpoints (checkpoints/stepNNNNNNNN: its weights/ folder). A LoRA run's folder holds an adapter;
    load_causal_lm merges it onto the base weights it names."""
    if not cfg.init_from:
        return cfg.path
    path = Path(cfg.init_from)
    for sub in ("final", "weights"):
        if (path / sub / "embedtrain.json").is_file() or (path / sub / "config.json").is_file():
            path = path / sub
            break
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise FileNotFoundError(f"model.init_from={cfg.init_from}: no config.json in {path} (expected a weights "
                                "folder, a run directory with final/, or a checkpoint step folder with weights/)")
    return str(path)


def load_causal_lm(folder: str | Path, dtype: torch.dtype, _depth: int = 0, **kwargs):
    """The causal LM in a weights folder, or, for a LoRA run's adapter folder (final/ or a checkpoint's
    weights/), its base weights (as its embedtrain.json names them, themselves possibly an adapter)
    with the adapter merged in: the function that run computed, as plain weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model weights folder not found: {folder}")
    if not (folder / "adapter_config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True, **kwargs)
    meta_file = folder / "embedtrain.json"
    if not meta_file.is_file() or _depth > 8:
        raise ValueError(f"{folder} holds a LoRA adapter without embedtrain.json naming its base weights (or a "
                         "chain of adapters over 8 deep); start from full weights, e.g. the run's final_merged/")
    from peft import PeftModel  # optional at import time: only LoRA runs need it

    meta = json.loads(meta_file.read_text())
    base = load_causal_lm(meta.get("base_weights") or meta["base_model"], dtype, _depth + 1, **kwargs)
    log.info("merging the LoRA adapter %s onto %s", folder, meta.get("base_weights") or meta["base_model"])
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def build_model(cfg: ModelConfig, tokenizer, device: torch.device, hf_attention: str | None = None) -> EmbeddingModel:
    """Load the causal LM from a local folder, apply LoRA / checkpointing, pick the attention kernel.

    hf_attention: load with this stock transformers attention instead of the packed one (the padded
    baselines of bench/train_speed.py: same weights, same LoRA init, padded batches)."""
    weights = resolve_weights(cfg)
    dtype = DTYPES[cfg.dtype]
    backend = pick_backend(cfg.attn_backend, device, dtype) if hf_attention is None else hf_attention
    lm = load_causal_lm(weights, dtype, attn_implementation=hf_attention or IMPL_NAME)
    family = resolve_family(cfg.family, lm.config.model_type, tokenizer.get_vocab())
    lm.config.use_cache = False
    if cfg.gradient_checkpointing:
        # transformers 5.x renamed it (the old name warns); non-reentrant works with LoRA and ZeRO-3.
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules or list(family.lora_targets)
        lm = get_peft_model(lm, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                           target_modules=targets, bias="none"))
    log.info("model %s: family=%s attention=%s backend=%s dtype=%s lora=%s", weights, family.name,
             "causal" if cfg.attention == "causal" else "bidirectional", backend, cfg.dtype, cfg.lora.enabled)
    return EmbeddingModel(lm.to(device), family, cfg.attention == "causal", cfg.pooling, backend)
