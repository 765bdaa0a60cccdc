"""`embedtrain.load(path).encode(texts)`: inference on any finished run, packed, no padding.

Works on a run directory (its final/ folder is used, or final_merged/ when asked), a final/ folder,
or an `embedtrain export` folder: full fine-tuned weights, a LoRA adapter (merged into its base on
load), and compression-token runs (LLM2Vec-Gen). bf16 on GPU, the run's own dtype on CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

META = "embedtrain.json"


def find_final(path: str | Path) -> Path:
    """The folder holding embedtrain.json: path itself, a run directory's final/, or a checkpoint's
    weights/ (checkpoints/stepNNNNNNNN)."""
    p = Path(path)
    for candidate in (p, p / "final", p / "weights"):
        if (candidate / META).is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no {META} here or in final/ or weights/ below it (expected an embedtrain "
                            "run directory, its final/ folder, a checkpoints/stepNNNNNNNN folder written with "
                            "run.checkpoint_weights, or an `embedtrain export` folder)")


class Embedder:
    """A loaded embedding model. encode() batches texts by token count into packed streams."""

    def __init__(self, model, text_format, meta: dict, device: torch.device):
        self.model, self.text, self.meta, self.device = model, text_format, meta, device
        self.model.eval()

    @property
    def dim(self) -> int:
        if self.meta.get("kind") == "compression":
            return self.meta["teacher_dim"]
        return self.model.lm.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: list[str] | str, instruction: str | None = None, batch_size: int = 64,
               normalize: bool = True, show_progress: bool | None = None) -> torch.Tensor:
        """(N, D) float32 CPU tensor in input order. `instruction` is applied to every text (queries);
        documents are encoded without. batch_size: texts per packed forward (sorted by length)."""
        from tqdm import tqdm

        from embedtrain.data.packing import pack_texts
        from embedtrain.model.compression import CompressionText, embed_tokenized

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        instructions = [instruction] * len(texts) if instruction else None
        compression = isinstance(self.text, CompressionText)
        tokenized = self.text.queries(texts, instructions) if compression else self.text.encode(texts, instructions)
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
        out = F.normalize(out, dim=-1) if normalize else out
        return out[0] if single else out


def from_base(model_path: str, pooling: str = "mean", family: str = "auto", attention: str = "causal",
              instruction_format: str = "Instruct: {instruction}\nQuery: ", max_length: int = 512,
              device: str | torch.device | None = None, dtype: str | None = None) -> Embedder:
    """An untrained model folder as an embedder (baselines): the family template, the pooling asked for."""
    from embedtrain.config.schema import ModelConfig
    from embedtrain.data.packing import TextTokenizer
    from embedtrain.model.embedder import build_model, load_tokenizer

    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    tokenizer = load_tokenizer(model_path)
    model = build_model(ModelConfig(path=model_path, family=family, dtype=dtype, attention=attention, pooling=pooling),
                        tokenizer, device)
    meta = {"family": model.family.name, "pooling": pooling, "attention": attention, "max_length": max_length,
            "instruction_format": instruction_format, "base_model": model_path, "dtype": dtype}
    return Embedder(model, TextTokenizer(tokenizer, model.family, max_length, instruction_format), meta, device)


def load(path: str | Path, device: str | torch.device | None = None, dtype: str | None = None,
         attn_backend: str = "auto") -> Embedder:
    """Load a finished run (or an exported folder) for encoding."""
    from embedtrain.config.schema import ModelConfig
    from embedtrain.data.packing import TextTokenizer
    from embedtrain.model.embedder import build_model, load_tokenizer

    final = find_final(path)
    meta = json.loads((final / META).read_text())
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.type == "cuda" else meta.get("dtype", "float32"))
    if meta.get("kind") == "compression":
        from embedtrain.model.compression_io import load_compression_run, text_format

        model, tokenizer, meta = load_compression_run(final, device, dtype=dtype)
        return Embedder(model, text_format(model, tokenizer, meta), meta, device)
    tokenizer = load_tokenizer(str(final))
    # a LoRA run's folder holds its adapter: build_model (load_causal_lm) merges it onto the base it names
    cfg = ModelConfig(path=str(final), family=meta["family"], dtype=dtype, attention=meta["attention"],
                      pooling=meta["pooling"], attn_backend=attn_backend)
    model = build_model(cfg, tokenizer, device)
    text = TextTokenizer(tokenizer, model.family, meta["max_length"], meta["instruction_format"])
    return Embedder(model, text, meta, device)
