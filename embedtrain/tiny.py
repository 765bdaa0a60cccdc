"""Tiny randomly initialised models of each family, with a byte-level tokenizer, for tests and benches.

The tokenizer has the family's template tokens as single special tokens, so formatting, EOS pooling
and truncation behave as with the real checkpoint; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from embedtrain.families import FAMILIES

_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
}
FAMILY_MODEL_TYPE = {"llama3": "llama", "chatml": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                     "mistral": "mistral", "gemma": "gemma"}


def byte_tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fam = FAMILIES[family]
    specials = fam.all_special() + ["<pad>"]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token=fam.eos_token)
    fast.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in ("<pad>", fam.eos_token)]})
    return fast


def make_tiny_model(family: str, out_dir: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, seed: int = 0) -> Path:
    """Write a tiny random model + tokenizer of `family` to out_dir (safetensors) and return the path."""
    import transformers

    out = Path(out_dir)
    tok = byte_tokenizer(family)
    cls_name, extra = _CONFIGS[FAMILY_MODEL_TYPE[family]]
    config = getattr(transformers, cls_name)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
