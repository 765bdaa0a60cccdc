"""Tiny randomly initialised models of each family, with a byte-level tokenizer, for tests and benches.

The tokenizer has the family's template tokens as single special tokens, so formatting, EOS pooling
and truncation behave as with the real checkpoint; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return family_tokenizer(tok, family)


def family_tokenizer(tok, family: str):
    """A `tokenizers.Tokenizer` as a transformers tokenizer with `family`'s template tokens as specials."""
    fam = FAMILIES[family]
    specials = fam.all_special() + ["<pad>"]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token=fam.eos_token)
    fast.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in ("<pad>", fam.eos_token)]})
    return fast


def make_tiny_model(family: str, out_dir: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, seed: int = 0) -> Path:
    """Write a tiny random model + tokenizer of `family` to out_dir (safetensors) and return the path."""
    shape = dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                 tie_word_embeddings=False)
    return make_random_model(family, out_dir, byte_tokenizer(family), shape, seed=seed)


def make_random_model(family: str, out_dir: str | Path, tok, shape: dict, seed: int = 0,
                      dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """A randomly initialised model of `family` with the config fields in `shape` (a vocabulary larger
    than the tokenizer's is allowed: the real model's shape is what costs), saved with `tok`."""
    out = Path(out_dir)
    cls_name, extra = _CONFIGS[FAMILY_MODEL_TYPE[family]]
    fields = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=None, **extra)
    fields.update(shape)
    if fields["vocab_size"] < len(tok):
        raise ValueError(f"vocab_size {fields['vocab_size']} is smaller than the tokenizer ({len(tok)})")
    config = getattr(transformers, cls_name)(**fields)
    torch.manual_seed(seed)
    with torch.device(device):  # on a GPU a billion-parameter init takes seconds instead of minutes
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
