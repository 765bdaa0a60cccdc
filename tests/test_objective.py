"""Test 4 in one process (with dropout, so the RNG replay matters), gradient checkpointing, and the
saved final weights (full, LoRA adapter, merged) against the in-training model."""
import json

import torch
import torch.nn.functional as F

from embedtrain.config.schema import LoraConfig, ModelConfig
from embedtrain.data.batches import MicroBatchBuilder
from embedtrain.data.jsonl import build_index
from embedtrain.data.packing import TextTokenizer
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.infonce import InfoNCE, InfoNCEOptions, infonce_loss

from test_distributed import DATA


def _setup(path, max_tokens, lora=None, checkpointing=False):
    tok = load_tokenizer(str(path))
    torch.manual_seed(0)
    cfg = ModelConfig(path=str(path), family="chatml", lora=lora or LoraConfig(), gradient_checkpointing=checkpointing)
    model = build_model(cfg, tok, torch.device("cpu"))
    model.freeze_unused_lm_head()
    text_tok = TextTokenizer(tok, model.family, 48, "Instruct: {instruction}\nQuery: ")
    builder = MicroBatchBuilder(build_index([str(DATA)]), text_tok, max_tokens, 1, {}, "Retrieve the word")
    return model, builder


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, batch, options, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    metrics = InfoNCE(options, torch.device("cpu")).forward_backward(model, batch, lambda loss, final: loss.backward())
    return metrics["loss"], _grads(model)


def test_grad_cache_equals_plain_with_lora_dropout(tiny_models):
    lora = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.2)
    model, builder = _setup(tiny_models["chatml"], max_tokens=128, lora=lora)
    model.train()
    batch = builder.build(list(range(12)))
    assert len(batch.streams) >= 3
    plain_loss, plain = _run(model, batch, InfoNCEOptions(temperature=0.05), seed=7)
    cached_loss, cached = _run(model, batch, InfoNCEOptions(temperature=0.05, grad_cache=True), seed=7)
    _, other_seed = _run(model, batch, InfoNCEOptions(temperature=0.05), seed=8)
    assert abs(plain_loss - cached_loss) <= 1e-6 and set(plain) == set(cached) and plain
    assert max((plain[n] - cached[n]).abs().max().item() for n in plain) <= 1e-5
    # Dropout is live: another seed gives other gradients, so the equality above needed the RNG replay.
    assert max((plain[n] - other_seed[n]).abs().max().item() for n in plain) > 1e-4


def test_infonce_loss_matches_plain_formula():
    torch.manual_seed(0)
    emb = torch.randn(4 + 4 + 5, 16, requires_grad=True)
    loss, metrics = infonce_loss(emb, 4, temperature=0.1)
    e = F.normalize(emb, dim=-1)
    ref = -torch.stack([torch.log_softmax(e[i] @ e[4:].T / 0.1, -1)[i] for i in range(4)]).mean()
    assert torch.allclose(loss, ref, atol=1e-6) and 0 <= metrics["acc"] <= 1


def test_gradient_checkpointing_same_gradients(tiny_models):
    grads = []
    for ckpt in (False, True):
        model, builder = _setup(tiny_models["chatml"], max_tokens=2048, checkpointing=ckpt)
        model.train()
        _, g = _run(model, builder.build(list(range(8))), InfoNCEOptions(), seed=0)
        grads.append(g)
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) <= 1e-6


def test_final_weights_reload_to_the_same_embeddings(tmp_path, tiny_models):
    """A short LoRA run with save_merged: adapter and merged folders reload (plain transformers for
    the merged one) to the embeddings of the trained in-memory model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from embedtrain.config.loader import load_recipe
    from embedtrain.engine.trainer import train

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
run: {{output_dir: {tmp_path / 'run'}, progress_bar: false, save_merged: true}}
model: {{path: {tiny_models['chatml']}, family: chatml, lora: {{enabled: true, r: 4, alpha: 8}}}}
data: {{train: [{DATA}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 3, lr: 5.0e-2}}
""")
    train(*load_recipe(recipe))
    final, merged = tmp_path / "run" / "final", tmp_path / "run" / "final_merged"
    meta = json.loads((final / "embedtrain.json").read_text())
    assert meta["family"] == "chatml" and meta["pooling"] == "last"
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models["chatml"]), attn_implementation="eager")
    with torch.no_grad():
        before = base.model(input_ids=ids).last_hidden_state
        adapter = PeftModel.from_pretrained(base, str(final)).eval()
        via_adapter = adapter.get_decoder()(input_ids=ids).last_hidden_state
        plain = AutoModelForCausalLM.from_pretrained(str(merged), attn_implementation="eager")
        via_merged = plain.model(input_ids=ids).last_hidden_state
    assert (via_adapter - via_merged).abs().max() <= 1e-5
    assert (via_adapter - before).abs().max() > 1e-3  # training changed the model
    assert "embedtrain_packed" not in (merged / "config.json").read_text()  # loads without embedtrain


def test_bf16_training_runs_and_saves_bf16(tmp_path, tiny_models):
    from safetensors.torch import load_file

    from embedtrain.config.loader import load_recipe
    from embedtrain.engine.trainer import train

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
run: {{output_dir: {tmp_path / 'run'}, progress_bar: false}}
model: {{path: {tiny_models['qwen3']}, dtype: bfloat16, pooling: mean, gradient_checkpointing: true}}
data: {{train: [{DATA}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 3, lr: 1.0e-3, schedule: cosine, warmup_steps: 1}}
""")
    out = train(*load_recipe(recipe))
    assert len(out["losses"]) == 3 and all(torch.isfinite(torch.tensor(out["losses"])))
    weights = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert all(0 < json.loads(line)["packing_efficiency"] <= 1 for line in lines)


def test_matryoshka_loss_equals_each_prefix_loss_run_separately():
    """One forward, every prefix: loss and gradient equal the weighted sum of plain InfoNCE run on each
    prefix on its own (each re-normalised by infonce_loss), symmetric included."""
    from embedtrain.objectives.infonce import matryoshka_infonce_loss

    torch.manual_seed(0)
    emb = torch.randn(4 + 4 + 5, 32, requires_grad=True)
    dims, weights = [32, 16, 4], [1.0, 0.5, 0.25]
    loss, metrics = matryoshka_infonce_loss(emb, 4, 0.1, dims, weights, symmetric=True)
    (grad,) = torch.autograd.grad(loss, emb)
    ref_emb = emb.detach().clone().requires_grad_()
    parts = [w * infonce_loss(ref_emb[:, :d], 4, 0.1, symmetric=True)[0] for d, w in zip(dims, weights)]
    ref = sum(parts)
    (ref_grad,) = torch.autograd.grad(ref, ref_emb)
    assert abs(loss.item() - ref.item()) <= 1e-6 and (grad - ref_grad).abs().max().item() <= 1e-6
    assert grad[:, 16:].abs().sum() > 0 and set(metrics) >= {"loss_dim32", "loss_dim16", "loss_dim4", "loss"}
    # the prefix terms matter: without them the gradient of the leading dimensions differs
    (full_only,) = torch.autograd.grad(infonce_loss(ref_emb, 4, 0.1, symmetric=True)[0], ref_emb)
    assert (grad[:, :4] - full_only[:, :4]).abs().max().item() > 1e-3


def test_matryoshka_with_grad_cache_equals_plain(tiny_models):
    model, builder = _setup(tiny_models["chatml"], max_tokens=128)
    model.train()
    batch = builder.build(list(range(12)))
    assert len(batch.streams) >= 3
    m = dict(temperature=0.05, matryoshka_dims=[64, 32, 8])
    plain_loss, plain = _run(model, batch, InfoNCEOptions(**m), seed=7)
    cached_loss, cached = _run(model, batch, InfoNCEOptions(**m, grad_cache=True), seed=7)
    full_loss, _ = _run(model, batch, InfoNCEOptions(temperature=0.05), seed=7)
    assert abs(plain_loss - cached_loss) <= 1e-5 and set(plain) == set(cached) and plain
    scale = max(plain[n].abs().max().item() for n in plain)  # full fine-tuning: gradients up to ~10
    assert max((plain[n] - cached[n]).abs().max().item() for n in plain) <= 1e-6 * max(1.0, scale)
    assert abs(plain_loss - full_loss) > 1e-3  # the prefixes add their own terms
