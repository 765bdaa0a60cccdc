"""A compression run's final/ folder: saving, loading for inference, and decoding embeddings into text.

final/ holds only what trained (compression.safetensors: the K special rows and both maps), the
tokenizer, and embedtrain.json naming the frozen base weights it runs on; the backbone is not copied.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from embedtrain.config.schema import ModelConfig
from embedtrain.files import replace_dir, temp_dir_beside
from embedtrain.model.attention import IMPL_NAME
from embedtrain.model.compression import CompressionHead, CompressionText, embed_texts
from embedtrain.model.embedder import build_model, load_tokenizer, resolve_weights
from embedtrain.model.folder import META, find_final

WEIGHTS = "compression.safetensors"


def reserved_positions(meta: dict) -> int:
    """Positions a compression run's special tokens take after every text (0 for any other run)."""
    return meta["thought_tokens"] + meta["compression_tokens"] if meta.get("kind") == "compression" else 0


def save_compression_final(state: dict[str, torch.Tensor], head: CompressionHead, cfg, family: str, tokenizer,
                           out: Path, options) -> None:
    tmp = temp_dir_beside(out)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    tokenizer.save_pretrained(str(tmp))
    meta = {"kind": "compression", "family": family, "base_model": str(Path(resolve_weights(cfg.model)).resolve()),
            "dtype": cfg.model.dtype, "thought_tokens": head.thought, "compression_tokens": head.compression,
            "teacher_dim": head.align.out_features, "instruction_format": cfg.data.instruction_format,
            "max_length": cfg.data.max_length, "response_max_length": options.response_max_length,
            "instructions": dict(cfg.data.instructions), "default_instruction": cfg.data.default_instruction,
            "document_instruction": cfg.eval.document_instruction,
            "pooling": "mean of the projected compression states", "normalize": False}
    (tmp / META).write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, out)


def load_compression_run(path: str | Path, device: torch.device | None = None, dtype: str | None = None):
    """(EmbeddingModel with .compression, tokenizer, meta) of a finished compression run, in eval mode."""
    final = find_final(path)
    meta = json.loads((final / META).read_text())
    if meta.get("kind") != "compression":
        raise ValueError(f"{final} is not a compression run (decode needs compression tokens)")
    if not (final / WEIGHTS).is_file():
        raise FileNotFoundError(f"{final}: no {WEIGHTS} (the trained special tokens and maps); re-export the "
                                "run with this embedtrain, or point at the run's final/ folder")
    # An export carries its backbone (with the K rows appended, unused here: the head injects them).
    backbone = final if meta.get("exported") else Path(meta["base_model"])
    if not backbone.is_dir():
        raise FileNotFoundError(f"{final}/embedtrain.json: base model {meta['base_model']} not found; the run "
                                "holds only the compression tokens and needs its frozen base weights")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(str(final))
    model = build_model(ModelConfig(path=str(backbone), family=meta["family"], dtype=dtype or meta["dtype"]),
                        tokenizer, device)
    state = load_file(str(final / WEIGHTS))
    hidden = state["special.weight"].shape[1]
    head = CompressionHead(hidden, meta["teacher_dim"], meta["thought_tokens"], meta["compression_tokens"],
                           dtype=state["special.weight"].dtype)
    head.load_state_dict(state)
    model.compression = head.to(device=device, dtype=model.lm.dtype)
    model.eval()
    return model, tokenizer, meta


def text_format(model, tokenizer, meta: dict) -> CompressionText:
    return CompressionText(tokenizer, model.family, meta["max_length"], meta["instruction_format"],
                           meta["thought_tokens"], meta["compression_tokens"], meta["response_max_length"])


@torch.no_grad()
def decode_text(model, tokenizer, text: str, instruction: str | None, max_new_tokens: int, meta: dict) -> str:
    """Greedy decoding from the soft prompts alone (no query tokens): what the embedding holds."""
    if meta.get("exported") and not getattr(model.lm.config, "tie_word_embeddings", False):
        raise ValueError("decoding needs the LM head, which an export leaves out for a base model with untied "
                         "output embeddings: decode from the run's final/ folder instead")
    fmt = text_format(model, tokenizer, meta)
    device = next(model.parameters()).device
    _, p_NnH = embed_texts(model, model.compression, fmt, [text], [instruction], 0, device)
    lm = model.lm
    # Generation with a KV cache needs a standard attention kernel; packed attention is for training.
    lm.set_attn_implementation("sdpa")
    try:
        new = lm.generate(inputs_embeds=p_NnH.to(lm.dtype), attention_mask=torch.ones(p_NnH.shape[:2], dtype=torch.long,
                                                                                         device=device),
                          max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=fmt.eos_id,
                          pad_token_id=fmt.pad_id)
    finally:
        lm.set_attn_implementation(IMPL_NAME)
    tokens = new[0].tolist()
    cut = tokens.index(fmt.eos_id) if fmt.eos_id in tokens else len(tokens)
    return tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
