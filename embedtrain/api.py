"""`embedtrain.load(path).encode(texts)`: inference on any finished run, packed, no padding.

Works on a run directory (its final/ folder is used, or final_merged/ when asked), a final/ folder,
or an `embedtrain export` folder: full fine-tuned weights, a LoRA adapter (merged into its base on
load), and compression-token runs (LLM2Vec-Gen). bf16 on GPU, the run's own dtype on CPU.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from embedtrain.config.schema import ModelConfig
from embedtrain.data.packing import TextTokenizer, pack_texts
from embedtrain.model.compression import CompressionText, embed_tokenized
from embedtrain.model.compression_io import load_compression_run, reserved_positions, text_format
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.model.folder import META, find_final, trained_context

__all__ = ["Embedder", "META", "find_final", "from_base", "inference_max_length", "load", "trained_context"]


def check_max_length(value: int, model_max: int, where: str) -> int:
    if not isinstance(value, int) or value < 8:
        raise ValueError(f"{where}: max_length must be an integer >= 8, got {value!r}")
    if value > model_max:
        raise ValueError(f"{where}: max_length {value} exceeds the {model_max} tokens the model's positions "
                         "were trained for; pass at most that")
    return value


def inference_max_length(meta: dict, config, override: int | None = None, reserved: int = 0,
                         where: str = "load") -> int:
    """Tokens per text at inference. Training's data.max_length (meta["max_length"]) is a cost setting for
    short training pairs and must not cut documents at inference: the default is what an export recorded
    (meta["inference_max_length"]), else the base model's trained context; `override` caps it.
    reserved: positions the text cannot use (a compression run's special tokens)."""
    model_max = trained_context(config) - reserved
    if override is not None:
        return check_max_length(override, model_max, where)
    return min(int(meta.get("inference_max_length") or model_max), model_max)


def check_dim(dim: int | None, full: int, where: str) -> None:
    if dim is not None and (not isinstance(dim, int) or not 1 <= dim <= full):
        raise ValueError(f"{where}: dim must be an integer in [1, {full}] (the model's embedding size), got {dim!r}")


class Embedder:
    """A loaded embedding model. encode() batches texts by token count into packed streams."""

    def __init__(self, model, text_format, meta: dict, device: torch.device):
        self.model, self.text, self.meta, self.device = model, text_format, meta, device
        # positions a text may use: a compression run's special tokens follow every text
        self.model_max_length = trained_context(model.lm.config) - reserved_positions(meta)
        self.model.eval()

    @property
    def dim(self) -> int:
        if self.meta.get("kind") == "compression":
            return self.meta["teacher_dim"]
        return self.model.lm.config.hidden_size

    @property
    def max_length(self) -> int:
        """Tokens per text (template, instruction and EOS included) before content is cut."""
        return self.text.max_length

    @torch.no_grad()
    def encode(self, texts: list[str] | str, instruction: str | None = None, batch_size: int = 64,
               normalize: bool = True, show_progress: bool | None = None,
               max_length: int | None = None, dim: int | None = None) -> torch.Tensor:
        """(N, D) float32 CPU tensor in input order. `instruction` is applied to every text (queries);
        documents are encoded without. batch_size: texts per packed forward (sorted by length).
        max_length: tokens per text for this call (default: the one chosen at load).
        dim: keep the leading `dim` dimensions (before normalising): a Matryoshka-trained model's
        truncated embedding (meta["matryoshka_dims"] lists the trained sizes)."""
        check_dim(dim, self.dim, "encode(dim=...)")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        instructions = [instruction] * len(texts) if instruction else None
        compression = isinstance(self.text, CompressionText)
        fmt = self.text
        if max_length is not None:
            fmt = copy.copy(self.text)
            fmt.max_length = check_max_length(max_length, self.model_max_length, "encode(max_length=...)")
        tokenized = fmt.queries(texts, instructions) if compression else fmt.encode(texts, instructions)
        order = sorted(range(len(texts)), key=lambda i: -len(tokenized[i].ids))
        show = len(texts) > 4 * batch_size if show_progress is None else show_progress
        for start in tqdm(range(0, len(order), batch_size), desc="encode", unit="batch", disable=not show):
            chunk = order[start:start + batch_size]
            part = [tokenized[i] for i in chunk]
            budget = sum(len(t.ids) for t in part)  # the whole chunk in one stream
            if compression:
                vecs, _ = embed_tokenized(self.model, self.model.compression, part, budget, self.text.pad_id,
                                          self.device)
            else:
                stream = pack_texts(part, budget, self.text.pad_id)[0]
                vecs = self.model(stream.to(self.device)).float()[torch.argsort(torch.tensor(stream.text_ids)).to(self.device)]
            out[torch.tensor(chunk)] = vecs.cpu()
        out = out[:, :dim] if dim else out
        out = F.normalize(out, dim=-1) if normalize else out
        return out[0] if single else out


def from_base(model_path: str, pooling: str = "mean", family: str = "auto", attention: str = "causal",
              instruction_format: str = "Instruct: {instruction}\nQuery: ", max_length: int | None = None,
              device: str | torch.device | None = None, dtype: str | None = None) -> Embedder:
    """An untrained model folder as an embedder (baselines): the family template, the pooling asked for."""
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    tokenizer = load_tokenizer(model_path)
    model = build_model(ModelConfig(path=model_path, family=family, dtype=dtype, attention=attention, pooling=pooling),
                        tokenizer, device)
    max_length = inference_max_length({}, model.lm.config, max_length, where=f"from_base({model_path!r})")
    meta = {"family": model.family.name, "pooling": pooling, "attention": attention, "max_length": max_length,
            "instruction_format": instruction_format, "base_model": model_path, "dtype": dtype}
    return Embedder(model, TextTokenizer(tokenizer, model.family, max_length, instruction_format), meta, device)


def load(path: str | Path, device: str | torch.device | None = None, dtype: str | None = None,
         attn_backend: str = "auto", max_length: int | None = None) -> Embedder:
    """Load a finished run (or an exported folder) for encoding. max_length: tokens per text (default: the
    base model's trained context, not the training data.max_length; see inference_max_length)."""
    final = find_final(path)
    meta = json.loads((final / META).read_text())
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.type == "cuda" else meta.get("dtype", "float32"))
    if meta.get("kind") == "compression":
        model, tokenizer, meta = load_compression_run(final, device, dtype=dtype)
        n = reserved_positions(meta)
        meta = dict(meta, training_max_length=meta["max_length"],
                    max_length=inference_max_length(meta, model.lm.config, max_length, n, f"load({str(path)!r})"))
        return Embedder(model, text_format(model, tokenizer, meta), meta, device)
    tokenizer = load_tokenizer(str(final))
    # a LoRA run's folder holds its adapter: build_model (load_causal_lm) merges it onto the base it names
    cfg = ModelConfig(path=str(final), family=meta["family"], dtype=dtype, attention=meta["attention"],
                      pooling=meta["pooling"], attn_backend=attn_backend)
    model = build_model(cfg, tokenizer, device)
    meta = dict(meta, training_max_length=meta["max_length"],
                max_length=inference_max_length(meta, model.lm.config, max_length, where=f"load({str(path)!r})"))
    text = TextTokenizer(tokenizer, model.family, meta["max_length"], meta["instruction_format"])
    return Embedder(model, text, meta, device)
