"""Issue 4 tests 1-3 and 5: the compression objective (LLM2Vec-Gen) against a plain unpacked reference,
a frozen backbone through the real trainer (world size 2, ZeRO-3), one backbone copy, and decoding."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from embedtrain.config.loader import load_recipe
from embedtrain.config.validate import objective_options
from embedtrain.data.jsonl import DataError, build_index
from embedtrain.generation import generate
from embedtrain.model.compression import CompressionHead
from embedtrain.model.compression_io import decode_text, load_compression_run
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.compression import Compression
from embedtrain.tiny import make_tiny_model

from test_distributed import DATA, ROOT, _env, run_dist_worker

M, N = 2, 3  # thought and compression tokens of the tiny runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny llama3-family model (it has a BOS), 40 WordNet queries answered by it, its own mean-pooled
    states as the teacher; a compression recipe over the generated folder."""
    root = tmp_path_factory.mktemp("comp")
    model = make_tiny_model("llama3", root / "model")
    queries = root / "queries.jsonl"
    with open(DATA) as f:
        lines = [json.loads(next(f))["query"] for _ in range(40)]
    queries.write_text("".join(json.dumps({"query": q}) + "\n" for q in lines))
    recipe = root / "recipe.yaml"
    recipe.write_text(f"""
run: {{output_dir: {root / 'run'}, log_every: 1, progress_bar: false}}
model: {{path: {model}, family: llama3}}
data: {{train: [{root / 'gen'}], max_length: 40, max_tokens_per_batch: 96, instruction_format: "{{instruction}}",
        default_instruction: "Generate a passage that answers: "}}
train: {{objective: compression, batch_size: 8, steps: 6, lr: 1.0e-2, warmup_steps: 1}}
objective: {{compression: {{thought_tokens: {M}, compression_tokens: {N}, response_max_length: 20, logits_chunk: 16}}}}
teacher: {{path: {model}, kind: hf, pooling: mean}}
generate: {{queries: [{queries}], output_dir: {root / 'gen'}, max_new_tokens: 14, shard_size: 16, batch_size: 8}}
eval: {{retrieval: {root / 'held.jsonl'}, max_examples: 12, document_instruction: "Summarize the passage: "}}
""")
    with open(ROOT / "recipes" / "quickstart" / "data" / "heldout.jsonl") as f:
        (root / "held.jsonl").write_text("".join(next(f) for _ in range(12)))
    cfg, _ = load_recipe(recipe)
    assert generate(cfg)["complete"]
    return root, recipe


def _objective(recipe, overrides=()):
    cfg, origin = load_recipe(recipe, list(overrides))
    tok = load_tokenizer(cfg.model.path)
    model = build_model(cfg.model, tok, torch.device("cpu"))
    index = build_index(cfg.data.train)
    objective = Compression(objective_options(cfg, origin), torch.device("cpu"))
    objective.setup(model, cfg, index, tok)
    return cfg, model, tok, index, objective


def _reference(cfg, tok, head: CompressionHead, examples):
    """Stock HF model (eager attention), one query and one response at a time, full logits, plain formulas."""
    lm = AutoModelForCausalLM.from_pretrained(cfg.model.path, attn_implementation="eager")
    emb = lm.get_input_embeddings()
    leaves = {n: p.detach().clone().requires_grad_() for n, p in head.named_parameters()}
    bos, eos = tok.convert_tokens_to_ids("<|begin_of_text|>"), tok.convert_tokens_to_ids("<|eot_id|>")
    ce, n_tok, align = 0.0, 0, 0.0
    for e in examples:
        q = [bos] + tok(cfg.data.default_instruction + e.query, add_special_tokens=False)["input_ids"][:cfg.data.max_length - 1]
        x = torch.cat([emb(torch.tensor(q)), leaves["special.weight"]])
        h = lm.model(inputs_embeds=x[None], use_cache=False).last_hidden_state[0, -N:]  # the n compression states
        p = h @ leaves["recon.weight"].T + leaves["recon.bias"]
        z = p @ leaves["align.weight"].T + leaves["align.bias"]
        align = align + ((z.mean(0) - e.target) ** 2).mean()
        r = tok(e.positive, add_special_tokens=False)["input_ids"][:19]
        logits = lm(inputs_embeds=torch.cat([p, emb(torch.tensor(r))])[None], use_cache=False).logits[0]
        labels = torch.tensor(r + [eos])
        ce = ce + F.cross_entropy(logits[N - 1:], labels, reduction="sum")
        n_tok += len(labels)
    recon, align = ce / n_tok, align / len(examples)
    (recon + align).backward()
    return recon.item(), align.item(), {n: t.grad for n, t in leaves.items()}


def test_losses_and_gradients_equal_unpacked_reference(setup):
    _, recipe = setup
    cfg, model, tok, index, objective = _objective(recipe)
    examples = [index.read(i) for i in range(8)]
    batch = objective.make_batch(examples)
    assert len(batch.streams) >= 2 and len(batch.decode_streams) >= 2  # really packed, several streams
    assert all(len(s.text_ids) >= 2 for s in batch.decode_streams[:1])
    loss, metrics = objective.loss(model, batch)
    loss.backward()
    ref_recon, ref_align, ref_grads = _reference(cfg, tok, model.compression, examples)
    assert abs(metrics["loss_recon"] - ref_recon) <= 1e-5 and abs(metrics["loss_align"] - ref_align) <= 1e-5
    assert abs(loss.item() - (ref_recon + ref_align)) <= 1e-5
    for name, p in model.compression.named_parameters():
        worst = (p.grad - ref_grads[name]).abs().max().item()
        assert worst <= 1e-5, f"{name}: gradient differs by {worst}"
        assert p.grad.abs().max() > 1e-4  # every trainable part gets gradient
    # The backbone is frozen: no gradient reached it.
    assert all(p.grad is None and not p.requires_grad for p in model.lm.parameters())


def test_one_backbone_copy(setup):
    _, recipe = setup
    cfg, model, *_ = _objective(recipe)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    backbone = sum(p.numel() for p in base.parameters())
    head = model.compression
    h, d = head.recon.in_features, head.align.out_features
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == backbone + (M + N) * h + (h * h + h) + (h * d + d)
    # one transformer stack serves both passes
    stacks = [m for m in model.modules() if type(m).__name__ == "LlamaModel"]
    assert len(stacks) == 1


def test_rejects_data_without_targets(setup, tmp_path):
    _, recipe = setup
    with pytest.raises(ValueError, match="embedtrain generate"):
        _objective(recipe, [f"data.train=[{DATA}]"])
    partial = tmp_path / "partial"
    partial.mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        build_index([str(partial)])


@pytest.fixture(scope="module")
def world2(setup):
    root, recipe = setup
    return run_dist_worker(root / "out", recipe, "comp_z0,comp_z3,comp_micro,comp_frozen,comp_resume")


def test_backbone_bitwise_frozen_under_zero3(setup, world2):
    """Test 1: after optimizer steps (world size 2, ZeRO-3) every backbone weight, every pre-existing
    embedding row included, is bitwise the starting one; the special rows and both maps moved."""
    root, recipe = setup
    out, _ = world2
    trained = load_file(str(out / "comp_frozen.safetensors"))
    original = load_file(str(Path(load_recipe(recipe)[0].model.path) / "model.safetensors"))
    assert set(original) == {k[len("lm."):] for k in trained if k.startswith("lm.")}
    for k, v in original.items():
        assert torch.equal(trained[f"lm.{k}"], v), f"backbone weight {k} changed"
    cfg, _ = load_recipe(recipe)
    initial = CompressionHead(64, 64, M, N).initialize(original["model.embed_tokens.weight"], cfg.run.seed)
    for name, p in initial.named_parameters():
        moved = (trained[f"compression.{name}"] - p).abs().max().item()
        assert moved > 1e-3, f"compression.{name} did not train"


def test_compression_world2_and_zero3_equal_plain_process(setup, world2):
    """The global token / query means are exact across ranks and accumulated micro-steps, and ZeRO-3 follows
    ZeRO-0."""
    root, recipe = setup
    r = world2[1]
    assert len(r["comp_z0"]) == 6 and len({round(x, 4) for x in r["comp_z0"]}) > 3
    assert max(abs(a - b) for a, b in zip(r["comp_z0"], r["comp_z3"])) <= 1e-5
    run = root / "plain"
    proc = subprocess.run([sys.executable, "-m", "embedtrain", "train", str(recipe), "--set", f"run.output_dir={run}"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    plain = [json.loads(line)["loss"] for line in open(run / "metrics.jsonl")]
    assert max(abs(a - b) for a, b in zip(plain, r["comp_z0"])) <= 1e-5
    # 4 accumulated micro-steps of 1 example per rank: still the step's token and query means
    assert max(abs(a - b) for a, b in zip(plain, r["comp_micro"])) <= 1e-5
    evals = json.loads((run / "eval.json").read_text())
    assert evals["before"] != evals["after"]  # held-out retrieval ran on compression embeddings


def test_compression_resume_equals_uninterrupted(world2):
    """METHODS.md section 3: resume must be exact (the reference swapped the encoder in as decoder). Two
    ranks, ZeRO-2: stopped after step 3 and resumed equals 6 steps straight, losses and final weights."""
    out, r = world2
    res = r["comp_resume"]
    assert len(res["first"]) == 3 and res["first"] + res["second"] == res["straight"]  # exactly
    a = load_file(str(out / "comp_straight" / "final" / "compression.safetensors"))
    b = load_file(str(out / "comp_split" / "final" / "compression.safetensors"))
    assert set(a) == {"special.weight", "recon.weight", "recon.bias", "align.weight", "align.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decode_trained_run(setup, world2):
    """Test 5: `embedtrain decode` on a trained run prints text; the cached greedy decoding equals a
    plain step-by-step argmax over the soft prompts."""
    root, _ = setup
    run = world2[0] / "comp_z0"
    proc = subprocess.run([sys.executable, "-m", "embedtrain", "decode", str(run), "a small domestic animal",
                           "--max-new-tokens", "6"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip()
    model, tok, meta = load_compression_run(run, torch.device("cpu"))
    text = decode_text(model, tok, "a small domestic animal", None, 6, meta)
    assert printed == text and isinstance(text, str)
    from embedtrain.model.compression import embed_texts
    from embedtrain.model.compression_io import text_format

    fmt = text_format(model, tok, meta)
    _, p = embed_texts(model, model.compression, fmt, ["a small domestic animal"], [None], 0, torch.device("cpu"))
    lm = AutoModelForCausalLM.from_pretrained(meta["base_model"], attn_implementation="eager")
    x, ids = p[0], []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(lm(inputs_embeds=x[None], use_cache=False).logits[0, -1].argmax())
            if nxt == fmt.eos_id:
                break
            ids.append(nxt)
            x = torch.cat([x, lm.get_input_embeddings()(torch.tensor([nxt]))])
    assert text == tok.decode(ids, skip_special_tokens=True).strip()


def test_eval_phrases_inputs_as_generation_requests(world2):
    """`embedtrain eval` on a compression run: documents get the run's eval.document_instruction, other
    texts METHODS.md section 3's requests (the mteb task instructions are not used)."""
    from types import SimpleNamespace

    from mteb.types import PromptType

    from embedtrain import load
    from embedtrain.evaluation.mteb_run import GENERATION_REQUESTS, embedder_encoder

    embedder = load(world2[0] / "comp_z0", device="cpu")
    assert embedder.meta["document_instruction"] == "Summarize the passage: "
    seen = []
    plain_encode = embedder.encode
    embedder.encode = lambda texts, instruction=None, **kw: seen.append(instruction) or plain_encode(texts, instruction, **kw)
    encoder = embedder_encoder(embedder, "comp", {"T": "Retrieve semantically similar text"})
    for task_type, prompt_type in (("Retrieval", PromptType.query), ("Retrieval", PromptType.document), ("STS", None)):
        meta = SimpleNamespace(name="T", type=task_type)
        vectors = encoder.encode([{"text": ["a small domestic animal"]}], task_metadata=meta, hf_split="test",
                                 hf_subset="default", prompt_type=prompt_type)
        assert vectors.shape == (1, embedder.dim)
    assert seen == [GENERATION_REQUESTS["query"], "Summarize the passage: ", GENERATION_REQUESTS["symmetric"]]


def test_online_teacher_gives_the_cached_targets(setup):
    """objective.compression.online_teacher re-embeds responses every step; with the teacher that made the
    cache, the targets (and so the loss) are the cached ones."""
    _, recipe = setup
    *_, index, cached = _objective(recipe)
    *_, online = _objective(recipe, ["objective.compression.online_teacher=true"])
    examples = [index.read(i) for i in range(8)]
    a, b = cached.make_batch(examples).targets_QD, online.make_batch(examples).targets_QD
    assert online.teacher is not None and a.shape == (8, 64)
    assert (a - b).abs().max() <= 1e-5
