"""`embedtrain export RUN_DIR OUT_DIR`: a folder sentence-transformers and plain transformers load.

Contrastive / reconstruction runs (causal attention) export with stock sentence-transformers modules
only, so the folder needs no embedtrain to load:
  Transformer (the merged weights; the tokenizer's post-processor adds [BOS] ... suffix EOS exactly as
  training formatted texts) -> Pooling (lasttoken = the EOS state, or mean without the prompt tokens)
  -> Normalize. Prompts carry the chat-template prefix and each instruction: `document` is the
  default prompt, `query` / one per training task hold the instructions.
Bidirectional runs (model.attention: bidirectional) swap the Transformer module for
embedtrain.st_modules.BidirectionalTransformer (a padding-only 4D mask), so loading needs embedtrain.
Compression runs add their K tokens to the vocabulary (rows written into the embedding matrix), the
tokenizer appends them to every text, and the two maps become Dense layers after a pooling module
that averages the last n states (embedtrain.st_modules, so loading needs embedtrain installed):
mean over n commutes with the two affine maps.
Every export gets a README.md model card (model_card.py) written from the run directory's files.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from tokenizers import processors

from embedtrain.api import META, find_final, inference_max_length
from embedtrain.families import FAMILIES
from embedtrain.files import replace_dir
from embedtrain.model.compression_io import WEIGHTS
from embedtrain.model.embedder import load_causal_lm, load_tokenizer
from embedtrain.model_card import write_model_card
from embedtrain.run_summary import summarize
from embedtrain.st_modules import BidirectionalTransformer, LastTokensMean
from embedtrain.st_modules import st_models as models


def _post_processor(tokenizer, head_ids: list[int], tail_ids: list[int]):
    """A TemplateProcessing that wraps every text as head + text + tail (ids as given)."""
    names = [f"__et_head{i}" for i in range(len(head_ids))], [f"__et_tail{i}" for i in range(len(tail_ids))]
    single = " ".join([*names[0], "$A", *names[1]])
    specials = list(zip(names[0], head_ids)) + list(zip(names[1], tail_ids))
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=None,
                                                                               special_tokens=specials)


def _dtype(meta: dict) -> torch.dtype:
    return torch.float32 if meta.get("dtype", "float32") == "float32" else torch.bfloat16


def _with_inference_length(meta: dict, config, max_length: int | None, reserved: int, run_dir) -> dict:
    return dict(meta, inference_max_length=inference_max_length(meta, config, max_length, reserved,
                                                                f"export {run_dir}"))


def _load_lm(final: Path, meta: dict):
    """Full weights, or a LoRA run's adapter merged onto its base."""
    return load_causal_lm(final, _dtype(meta))


def export(run_dir: str | Path, out_dir: str | Path, max_length: int | None = None) -> Path:
    """max_length: tokens per text of the exported model (default: the base model's trained context;
    training's data.max_length is not an inference limit)."""
    final = find_final(run_dir)
    meta = json.loads((final / META).read_text())
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    hf_dir = tmp / "_hf"
    tokenizer = load_tokenizer(str(final))
    family = FAMILIES[meta["family"]]
    vocab = tokenizer.get_vocab()
    bos = [vocab[family.bos_token]] if family.bos_token else []
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = family.eos_token
    if meta.get("kind") == "compression":
        return _export_compression(final, meta, tokenizer, family, bos, out, tmp, max_length, run_dir)
    lm = _load_lm(final, meta)
    meta = _with_inference_length(meta, lm.config, max_length, 0, run_dir)
    wrap_like_training(tokenizer, family)
    lm.save_pretrained(str(hf_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(hf_dir))
    prompts = training_prompts(family, meta["instruction_format"], meta.get("instructions") or {},
                               meta.get("default_instruction"))
    # a plain transformers model attends causally: bidirectional runs need embedtrain's module to load
    transformer_cls = models.Transformer if meta["attention"] == "causal" else BidirectionalTransformer
    st = sentence_transformer(text_transformer(transformer_cls, str(hf_dir), meta["inference_max_length"]),
                              meta["pooling"], prompts)
    return _save(st, meta, out, tmp, hf_dir, run_dir, prompts)


def text_transformer(cls, path: str, max_length: int, **kwargs):
    """The Transformer module reading plain text only. sentence-transformers >= 6 renders texts through the
    tokenizer's chat template when it has one (its "message" modality: the prompt as a system turn, the text
    as a user turn), which is not how training formatted them; the text modality keeps the post-processor's
    wrapping. The choice is saved in the folder's sentence_bert_config.json, so loading keeps it."""
    if "modality_config" in inspect.signature(models.Transformer.__init__).parameters:
        kwargs.update(modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                      module_output_name="token_embeddings")
    return cls(path, max_seq_length=max_length, **kwargs)


def wrap_like_training(tokenizer, family) -> None:
    """Give the tokenizer a post-processor that adds [BOS] ... suffix EOS around every text, as embedtrain's
    TextTokenizer formats training texts (the prefix comes with the prompt)."""
    vocab = tokenizer.get_vocab()
    bos = [vocab[family.bos_token]] if family.bos_token else []
    suffix = tokenizer(family.suffix, add_special_tokens=False)["input_ids"] if family.suffix else []
    _post_processor(tokenizer, bos, suffix + [vocab[family.eos_token]])


def training_prompts(family, instruction_format: str, instructions: dict[str, str],
                     default_instruction: str | None = None) -> dict[str, str]:
    """sentence-transformers prompts: `document` (the template prefix), one per task, and `query`."""
    prompts = {"document": family.prefix}
    for task, instruction in instructions.items():
        prompts[task] = family.prefix + instruction_format.format(instruction=instruction)
    if default_instruction:
        prompts["query"] = family.prefix + instruction_format.format(instruction=default_instruction)
    return prompts


def sentence_transformer(transformer, pooling: str, prompts: dict[str, str]) -> SentenceTransformer:
    """transformer (text_transformer, its tokenizer wrapping texts like training: wrap_like_training) -> Pooling
    (lasttoken, or mean without the prompt tokens) -> Normalize."""
    mode = "lasttoken" if pooling == "last" else "mean"
    pool = models.Pooling(_embedding_dim(transformer), pooling_mode=mode, include_prompt=False)
    return SentenceTransformer(modules=[transformer, pool, models.Normalize()], prompts=prompts,
                               default_prompt_name="document")


def _embedding_dim(transformer) -> int:
    """The Transformer module's hidden size (get_embedding_dimension from sentence-transformers 6 on)."""
    return (getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension)()


def _save(st, meta: dict, out: Path, tmp: Path, hf_dir: Path, run_dir, prompts: dict) -> Path:
    st.save(str(tmp), create_model_card=False)  # ours below: written from the run's own files
    shutil.rmtree(hf_dir, ignore_errors=True)
    (tmp / META).write_text(json.dumps(dict(meta, exported=True), indent=1))
    write_model_card(tmp, summarize(run_dir), meta, prompts, path=str(out))
    replace_dir(tmp, out)
    return out


def _export_compression(final: Path, meta: dict, tokenizer, family, bos: list[int], out: Path, tmp: Path,
                        max_length: int | None, run_dir) -> Path:
    m, n = meta["thought_tokens"], meta["compression_tokens"]
    state = load_file(str(final / WEIGHTS))
    names = [f"<|embedtrain_thought_{i}|>" for i in range(m)] + [f"<|embedtrain_compress_{i}|>" for i in range(n)]
    tokenizer.add_special_tokens({"additional_special_tokens": names}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(names)
    dtype = _dtype(meta)
    lm = _load_lm(Path(meta["base_model"]), meta)
    meta = _with_inference_length(meta, lm.config, max_length, m + n, run_dir)
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        lm.get_input_embeddings().weight[torch.tensor(ids)] = state["special.weight"].to(dtype)
    _post_processor(tokenizer, bos, ids)
    hf_dir = tmp / "_hf"
    lm.save_pretrained(str(hf_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(hf_dir))
    transformer = text_transformer(models.Transformer, str(hf_dir), meta["inference_max_length"] + m + n)
    hidden = _embedding_dim(transformer)
    recon = models.Dense(hidden, hidden, bias=True, activation_function=torch.nn.Identity())
    align = models.Dense(hidden, meta["teacher_dim"], bias=True, activation_function=torch.nn.Identity())
    with torch.no_grad():
        for dense, key in ((recon, "recon"), (align, "align")):
            dense.linear.weight.copy_(state[f"{key}.weight"].float())
            dense.linear.bias.copy_(state[f"{key}.bias"].float())
    fmt = meta["instruction_format"]
    prompts = {task: fmt.format(instruction=inst) for task, inst in (meta.get("instructions") or {}).items()}
    st = SentenceTransformer(modules=[transformer, LastTokensMean(hidden, n), recon, align, models.Normalize()],
                             prompts=prompts or None)
    # the trained head beside the ST modules: embedtrain.load / eval / decode of the export read it
    shutil.copy2(final / WEIGHTS, tmp / WEIGHTS)
    return _save(st, meta, out, tmp, hf_dir, run_dir, prompts)
