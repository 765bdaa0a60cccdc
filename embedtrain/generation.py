"""`embedtrain generate`: the frozen LLM answers every query; the teacher embeds every answer.

Work is cut into shards of generate.shard_size input rows; rank r of W takes shards k with
k % W == r, so no collective is needed (ranks never wait on each other) and any launcher works.
A shard is generated with its own seed (run.seed, k) and fixed batches, so it comes out the same
whichever rank makes it and however often the run was restarted; finished shards are skipped.
The last rank to find every shard complete writes manifest.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from embedtrain.config.errors import RecipeError
from embedtrain.config.schema import RecipeConfig
from embedtrain.data import generated as G
from embedtrain.data.jsonl import DataError
from embedtrain.families import Family, resolve_family
from embedtrain.files import atomic_write_text
from embedtrain.model.embedder import DTYPES, load_tokenizer
from embedtrain.model.teacher import Teacher, resolve_teacher_path

log = logging.getLogger("embedtrain.generate")
_SENTINEL = "\u2063EMBEDTRAIN_QUERY\u2063"


class PromptBuilder:
    """Token ids of one user turn plus the opening of the assistant's turn, from the tokenizer's own chat
    template (or the family's when the tokenizer has none); only the query is cut when too long."""

    def __init__(self, tokenizer, family: Family, max_prompt_length: int):
        self.tok = tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                                 add_generation_prompt=True, **dict(family.chat_template_kwargs))
            head, tail = text.split(_SENTINEL)
        else:
            head = (family.bos_token or "") + family.prefix
            tail = family.suffix + family.assistant_open
        self.head = self._ids(head)
        self.tail = self._ids(tail)
        self.room = max_prompt_length - len(self.head) - len(self.tail)
        if self.room < 1:
            raise ValueError(f"generate.max_prompt_length={max_prompt_length} leaves no room for the query "
                             f"after the chat template ({len(self.head) + len(self.tail)} tokens)")

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def build(self, query: str) -> tuple[list[int], bool]:
        content = self._ids(query)
        return self.head + content[:self.room] + self.tail, len(content) > self.room


def _settings(cfg: RecipeConfig, queries: list[dict]) -> dict:
    g = cfg.generate
    digest = hashlib.sha256("\n".join(json.dumps(q, sort_keys=True) for q in queries).encode()).hexdigest()
    return {"model": cfg.model.path, "dtype": cfg.model.dtype, "family": cfg.model.family, "seed": cfg.run.seed,
            "queries": list(g.queries), "rows": len(queries), "queries_sha256": digest,
            "shard_size": g.shard_size, "max_new_tokens": g.max_new_tokens, "max_prompt_length": g.max_prompt_length,
            "batch_size": g.batch_size, "do_sample": g.do_sample, "temperature": g.temperature, "top_p": g.top_p,
            "teacher": dataclasses.asdict(cfg.teacher)}


def _check_settings(out: Path, settings: dict) -> None:
    path = out / G.SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in settings if old.get(k) != settings[k] and k != "batch_size"]
        if changed:
            raise DataError(f"{out} holds shards made with other settings ({', '.join(changed)} differ from "
                            f"{path}); use a new generate.output_dir, or delete that folder to start over")
    else:
        atomic_write_text(path, json.dumps(settings, indent=1))


def validate_generate(cfg: RecipeConfig) -> None:
    g = cfg.generate
    problems = []
    if not g.queries:
        problems.append("generate.queries: is required (query-only JSONL files)")
    if not g.output_dir:
        problems.append("generate.output_dir: is required (the folder shards are written to)")
    for key in ("max_new_tokens", "max_prompt_length", "batch_size", "shard_size"):
        if getattr(g, key) < 1:
            problems.append(f"generate.{key}: must be >= 1, got {getattr(g, key)}")
    if g.do_sample and not (g.temperature > 0 and 0 < g.top_p <= 1):
        problems.append(f"generate: sampling needs temperature > 0 and 0 < top_p <= 1, got {g.temperature}, {g.top_p}")
    if problems:
        raise RecipeError("; ".join(problems))


@torch.no_grad()
def answer(lm, tokenizer, prompts: list[list[int]], cfg: RecipeConfig, eos_ids: list[int], pad_id: int,
           device) -> list[str]:
    """Responses to token-id prompts, in input order: longest first in fixed batches, left padded."""
    g = cfg.generate
    gen_cfg = GenerationConfig(max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, eos_token_id=eos_ids,
                               pad_token_id=pad_id, **({"temperature": g.temperature, "top_p": g.top_p, "top_k": None}
                                                       if g.do_sample else {}))
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), g.batch_size):
        chunk = order[start:start + g.batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        new = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        for row, i in enumerate(chunk):
            tokens = new[row, width:].tolist()
            cut = next((j for j, t in enumerate(tokens) if t in eos_ids), len(tokens))
            out[i] = tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
    return out


def _write_manifest(out: Path, n_shards: int, sizes: list[int], teacher_dim: int, settings: dict) -> None:
    empty = 0
    for k in range(n_shards):
        with open(out / f"{G.shard_stem(k)}.jsonl", encoding="utf-8") as f:
            empty += sum(1 for line in f if line.strip() and not json.loads(line)["response"])
    meta = {"rows": sum(sizes), "teacher_dim": teacher_dim, "empty_responses": empty,
            "shards": [{"index": k, "rows": sizes[k]} for k in range(n_shards)], "settings": settings}
    atomic_write_text(out / G.MANIFEST, json.dumps(meta, indent=1))
    if empty:
        log.warning("%d of %d responses are empty (the model ended its turn at once); they are kept: "
                    "their target is the teacher's embedding of an empty text", empty, sum(sizes))


def generate(cfg: RecipeConfig, max_shards: int | None = None) -> dict:
    """Run (or resume) generation for this rank. Returns {"done": shards written now, "complete": bool}."""
    validate_generate(cfg)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    g = cfg.generate
    queries = G.read_queries(g.queries)
    resolve_teacher_path(cfg.teacher.path)  # fail before the LLM loads
    out = Path(g.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(cfg, queries)
    _check_settings(out, settings)
    n_shards = math.ceil(len(queries) / g.shard_size)
    sizes = [min(g.shard_size, len(queries) - k * g.shard_size) for k in range(n_shards)]
    todo = [k for k in range(rank, n_shards, world) if G.shard_rows(out, k) != sizes[k]]
    skipped = len(range(rank, n_shards, world)) - len(todo)
    if max_shards is not None:
        todo = todo[:max_shards]
    log.info("generate: %d queries in %d shards; rank %d of %d: %d to do, %d already complete", len(queries),
             n_shards, rank, world, len(todo), skipped)
    if todo:
        tokenizer = load_tokenizer(cfg.model.path)
        hf_config = AutoConfig.from_pretrained(cfg.model.path)
        family = resolve_family(cfg.model.family, hf_config.model_type, tokenizer.get_vocab())
        prompts = PromptBuilder(tokenizer, family, g.max_prompt_length)
        eos_ids = sorted({tokenizer.convert_tokens_to_ids(family.eos_token)}
                         | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        lm = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=DTYPES[cfg.model.dtype],
                                                  attn_implementation="sdpa", use_safetensors=True).to(device).eval()
        teacher = Teacher(cfg.teacher, device)
        bar = tqdm(total=sum(sizes[k] for k in todo), unit="query", desc=f"generate rank {rank}",
                   disable=not cfg.run.progress_bar or rank != 0)
        cut = 0
        for k in todo:
            rows = queries[k * g.shard_size:k * g.shard_size + sizes[k]]
            built = [prompts.build(r["query"]) for r in rows]
            cut += sum(t for _, t in built)
            torch.manual_seed(cfg.run.seed * 1_000_003 + k)  # sampling depends on the shard only
            responses = answer(lm, tokenizer, [ids for ids, _ in built], cfg, eos_ids, pad_id, device)
            out_rows = [dict(r, response=resp) for r, resp in zip(rows, responses)]
            G.write_shard(out, k, out_rows, teacher.encode(responses))
            bar.update(len(rows))
        bar.close()
        if cut:
            log.warning("%d prompt(s) longer than generate.max_prompt_length=%d were cut", cut, g.max_prompt_length)
    complete = all(G.shard_rows(out, k) == sizes[k] for k in range(n_shards))
    if complete and not (out / G.MANIFEST).is_file():
        with safe_open(str(out / f"{G.shard_stem(0)}.safetensors"), "pt") as f:
            dim = f.get_slice("teacher").get_shape()[1]
        _write_manifest(out, n_shards, sizes, dim, settings)
        log.info("generate: all %d shards complete; %s is ready for data.train", n_shards, out)
    elif not complete:
        log.info("generate: shards still missing (other ranks, or --max-shards); rerun to finish")
    return {"done": len(todo), "complete": complete}
