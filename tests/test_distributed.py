"""Tests 3-6 at world size 2 (gloo, torchrun): gathered InfoNCE gradients, gradient caching under
DeepSpeed, ZeRO stage trajectories, exact resume. One launch runs every scenario (imports dominate)."""
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
from embedtrain.data.jsonl import build_index
from embedtrain.data.packing import TextTokenizer
from embedtrain.distributed import child_env
from embedtrain.families import FAMILIES
from embedtrain.model.embedder import load_tokenizer
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "quickstart" / "data" / "train.jsonl"
SCENARIOS = ("grad_plain,grad_cache,grad_symmetric,grad_local,grad_matryoshka,z0,z1,z2,z3,z3_offload,z3_eval,z2_gradcache,z3_gradcache,z0_accum,"
             "z2_accum,recon_z0,recon_z3,recon_micro,recon_whole,resume")


def _env():
    return child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = make_tiny_model("chatml", root / "model")
    data = root / "train.jsonl"
    data.write_text("".join(open(DATA).readlines()[:400]))
    recipe = root / "recipe.yaml"
    recipe.write_text(f"""
run: {{output_dir: {root / 'run'}, log_every: 1, progress_bar: false, checkpoint_every: 5}}
model: {{path: {model}, family: chatml, pooling: last}}
data:
  train: [{data}]
  max_length: 48
  max_tokens_per_batch: 2048
  instructions: {{wordnet_def2lemma: Retrieve the word}}
train: {{batch_size: 8, steps: 10, lr: 1.0e-3, warmup_steps: 2, grad_clip: 1.0}}
objective: {{infonce: {{temperature: 0.05}}}}
""")
    return root, recipe


def run_dist_worker(out: Path, recipe: Path, scenarios: str) -> tuple[Path, dict]:
    """One torchrun launch (2 processes) of dist_worker.py; its results.json."""
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_worker.py"), str(out), str(recipe), scenarios]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def world2(setup):
    root, recipe = setup
    return run_dist_worker(root / "out", recipe, SCENARIOS)


def _reference_loss_and_grads(recipe, overrides=()):
    """The same 8-example global batch in ONE process, written plainly: stock HF model (eager attention),
    one text per forward, full candidate matrix, no gathering, no packing."""
    cfg, _ = load_recipe(recipe, list(overrides))
    tok = load_tokenizer(cfg.model.path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, attn_implementation="eager")
    text_tok = TextTokenizer(tok, FAMILIES["chatml"], cfg.data.max_length, cfg.data.instruction_format)
    index = build_index(cfg.data.train)
    ex = [index.read(i) for i in range(8)]
    inst = [cfg.data.instructions.get(e.task) for e in ex]
    q_ids = [t.ids for t in text_tok.encode([e.query for e in ex], inst)]
    p_ids = [t.ids for t in text_tok.encode([e.positive for e in ex])]
    n_ids = [t.ids for t in text_tok.encode([n for e in ex for n in e.negatives])]

    def emb(ids):
        return model.model(input_ids=torch.tensor(ids)[None], use_cache=False).last_hidden_state[0, -1]

    q_raw = torch.stack([emb(i) for i in q_ids])
    p_raw = torch.stack([emb(i) for i in p_ids])
    cand_raw = torch.cat([p_raw, torch.stack([emb(i) for i in n_ids])])
    options = cfg.objective.get("infonce", {})
    tau = options.get("temperature", 0.02)
    labels = torch.arange(8)
    if options.get("gather_across_ranks") is False:  # two ranks of 4: each half against its own candidates
        halves = []
        owner = [i for i, e in enumerate(ex) for _ in e.negatives]  # example of each negative row
        for r in (0, 1):
            rows = slice(4 * r, 4 * r + 4)
            q, p = F.normalize(q_raw[rows], dim=-1), F.normalize(p_raw[rows], dim=-1)
            negs = torch.tensor([j for j, i in enumerate(owner) if 4 * r <= i < 4 * r + 4], dtype=torch.long)
            cand = torch.cat([p, F.normalize(cand_raw[8:][negs], dim=-1)])
            halves.append(F.cross_entropy(q @ cand.T / tau, torch.arange(4)))
        loss = (halves[0] + halves[1]) / 2
        loss.backward()
        return loss.item(), {f"lm.{n}": prm.grad for n, prm in model.named_parameters() if prm.grad is not None}
    # Matryoshka: the same loss on each leading prefix, re-normalised, weighted; else the whole embedding once
    dims = options.get("matryoshka_dims") or [q_raw.shape[1]]
    loss = 0.0
    for d, w in zip(dims, options.get("matryoshka_weights") or [1.0] * len(dims)):
        q, p, cand = (F.normalize(x[:, :d], dim=-1) for x in (q_raw, p_raw, cand_raw))
        part = F.cross_entropy(q @ cand.T / tau, labels)
        if options.get("symmetric"):
            part = (part + F.cross_entropy(p @ q.T / tau, labels)) / 2
        loss = loss + w * part
    loss.backward()
    grads = {f"lm.{n}": prm.grad for n, prm in model.named_parameters() if prm.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("name, overrides", [("grad_plain", []), ("grad_cache", []),
                                             ("grad_symmetric", ["objective.infonce.symmetric=true"]),
                                             ("grad_local", ["objective.infonce.gather_across_ranks=false"]),
                                             ("grad_matryoshka", ["objective.infonce.symmetric=true",
                                                                  "objective.infonce.matryoshka_dims=[64,16]",
                                                                  "objective.infonce.matryoshka_weights=[1,0.5]"])])
def test_world2_gathered_infonce_equals_one_process(setup, world2, name, overrides):
    out, results = world2
    ref_loss, ref_grads = _reference_loss_and_grads(setup[1], overrides)
    got = load_file(str(out / f"grads_{name}.safetensors"))
    assert abs(results[name]["loss"] - ref_loss) <= 1e-5
    assert set(got) == set(ref_grads)
    worst = max((got[n] - ref_grads[n]).abs().max().item() for n in got)
    assert worst <= 1e-5, f"{name}: max gradient difference {worst}"
    if name in ("grad_cache", "grad_matryoshka"):
        assert results[name]["streams"] > 1  # the cache really spans several packed streams


def test_zero_stages_same_trajectory(world2):
    _, r = world2
    ref = r["z0"]
    assert len(ref) == 10 and len({round(x, 4) for x in ref}) > 5  # real steps on changing batches
    for name in ("z1", "z2", "z3", "z3_offload", "z2_gradcache", "z3_gradcache"):
        worst = max(abs(a - b) for a, b in zip(ref, r[name]))
        assert len(r[name]) == 10 and worst <= 1e-5, f"{name} differs from ZeRO-0 by {worst}"
    worst = max(abs(a - b) for a, b in zip(r["z0_accum"], r["z2_accum"]))
    assert worst <= 1e-5, f"gradient accumulation: ZeRO-2 differs from ZeRO-0 by {worst}"


def test_zero3_evaluation_during_training_and_keep_best(world2):
    """World size 2, ZeRO-3: evaluating every 5 steps leaves the trajectory as it was, and best/ (gathered
    from the shards) holds the weights of the best logged step's checkpoint."""
    out, r = world2
    assert max(abs(a - b) for a, b in zip(r["z3"], r["z3_eval"])) <= 1e-6
    rows = [json.loads(line) for line in open(out / "z3_eval" / "metrics.jsonl")]
    logged = {row["step"]: row["eval/retrieval/mrr"] for row in rows if "eval_time_s" in row}
    assert list(logged) == [5, 10] and all(0 < v <= 1 for v in logged.values())
    best = json.loads((out / "z3_eval" / "best.json").read_text())
    top = max(logged.values())
    assert best["step"] == min(s for s, v in logged.items() if v == top) and best["value"] == top
    kept = load_file(str(out / "z3_eval" / "best" / "model.safetensors"))
    ref = load_file(str(out / "z3_eval" / "checkpoints" / f"step{best['step']:08d}" / "weights" / "model.safetensors"))
    assert kept.keys() == ref.keys() and all(torch.equal(kept[k], ref[k]) for k in ref)


def test_reconstruction_zero3_equals_zero0(world2):
    r = world2[1]
    assert len(r["recon_z0"]) == 10 and len({round(x, 4) for x in r["recon_z0"]}) > 5
    worst = max(abs(a - b) for a, b in zip(r["recon_z0"], r["recon_z3"]))
    assert worst <= 1e-5, f"reconstruction: ZeRO-3 differs from ZeRO-0 by {worst}"


@pytest.mark.parametrize("objective, scenario, sets", [
    ("infonce", "z0", []),
    ("reconstruction", "recon_z0", ["train.objective=reconstruction", "objective.reconstruction.logits_chunk=16"]),
    # Same global batch of 8 on 1 rank (4 per micro-step) as on 2 ranks (2 each): accumulation derived.
    ("reconstruction", "recon_micro", ["train.objective=reconstruction", "objective.reconstruction.logits_chunk=16",
                                       "train.micro_batch_per_rank=4"]),
])
def test_world2_trajectory_equals_plain_process(setup, world2, objective, scenario, sets):
    """The same recipe as a plain `embedtrain train` process (world size 1) follows the same losses:
    gathered negatives (infonce) and the global token mean (reconstruction) are exact across ranks."""
    root, recipe = setup
    out = root / f"plain_{scenario}"
    cmd = [sys.executable, "-m", "embedtrain", "train", str(recipe), "--set", f"run.output_dir={out}"]
    for item in sets:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    plain = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    worst = max(abs(a - b) for a, b in zip(plain, world2[1][scenario]))
    assert len(plain) == 10 and worst <= 1e-5, worst
    if scenario == "recon_micro":  # the plain run accumulates 2 micro-steps of 4; recon_whole runs 1 of 8
        worst = max(abs(a - b) for a, b in zip(plain, world2[1]["recon_whole"]))
        assert worst <= 1e-5, f"accumulation changed the token mean: {worst}"
    assert (out / "config.yaml").is_file() and (out / "final" / "model.safetensors").is_file()


def test_resume_equals_uninterrupted(world2):
    out, r = world2
    res = r["resume"]
    assert len(res["first"]) == 5 and len(res["second"]) == 5
    assert res["first"] + res["second"] == res["straight"]  # exactly, not approximately
    a = load_file(str(out / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(out / "split" / "final" / "adapter_model.safetensors"))
    assert set(a) == set(b) and a and all(torch.equal(a[k], b[k]) for k in a)
    latest = (out / "split" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step00000010"


def _zero_fp32(ckpt_root: Path, tag: str) -> dict:
    """DeepSpeed's own reading of its checkpoint (unpickles our own test files; fine in a test)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)


@pytest.mark.parametrize("run, fname, ds_key", [
    ("z3", "model.safetensors", lambda k: "lm." + k),  # full fine-tuning, ZeRO-3 shards on 2 ranks
    ("split", "adapter_model.safetensors", lambda k: "lm." + k.replace(".weight", ".default.weight")),  # LoRA
])
def test_checkpoint_weights_equal_deepspeed_states(world2, run, fname, ds_key):
    """Every checkpoint's weights/ (safetensors, what final/ holds) equals the weights DeepSpeed itself
    reconstructs from that checkpoint's shards, mid-run too; the last one equals final/."""
    out, _ = world2
    ckpts = out / run / "checkpoints"
    mid = load_file(str(ckpts / "step00000005" / "weights" / fname))
    ds = _zero_fp32(ckpts, "step00000005")
    assert mid and all(torch.equal(mid[k], ds[ds_key(k)].to(mid[k].dtype)) for k in mid)
    last = load_file(str(ckpts / "step00000010" / "weights" / fname))
    final = load_file(str(out / run / "final" / fname))
    assert set(last) == set(final) and all(torch.equal(last[k], final[k]) for k in last)
    assert any(not torch.equal(mid[k], last[k]) for k in mid)  # step 5 is not step 10


def test_checkpoint_step_loads_and_serves_as_init_from(world2):
    from embedtrain import load
    from embedtrain.config.schema import ModelConfig
    from embedtrain.model.embedder import resolve_weights

    out, _ = world2
    step5, step10 = out / "z3" / "checkpoints" / "step00000005", out / "z3" / "checkpoints" / "step00000010"
    assert Path(resolve_weights(ModelConfig(path="unused", init_from=str(step5)))) == step5 / "weights"
    texts = ["a small domesticated carnivore", "to move fast on foot"]
    e5, e10, ef = (load(p, device="cpu").encode(texts) for p in (step5, step10, out / "z3"))
    assert torch.equal(torch.as_tensor(e10), torch.as_tensor(ef))
    assert not torch.allclose(torch.as_tensor(e5), torch.as_tensor(ef))


def test_init_from_lora_checkpoint_merges_its_adapter(world2):
    """A LoRA run's step folder as model.init_from: its base weights with W + (alpha / r) B A at every
    adapted matrix, written out here from the adapter's own tensors."""
    from embedtrain.config.schema import ModelConfig
    from embedtrain.model.embedder import build_model

    out, _ = world2
    weights = out / "split" / "checkpoints" / "step00000005" / "weights"
    adapter = load_file(str(weights / "adapter_model.safetensors"))
    lora = json.loads((weights / "adapter_config.json").read_text())
    base = load_file(str(out.parent / "model" / "model.safetensors"))
    expect = dict(base)
    for key in adapter:
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            a, b = adapter[key], adapter[key.replace(".lora_A.", ".lora_B.")]
            expect[module + ".weight"] = base[module + ".weight"] + (lora["lora_alpha"] / lora["r"]) * b @ a
    model = build_model(ModelConfig(path=str(out.parent / "model"), family="chatml", init_from=str(weights.parent)),
                        load_tokenizer(str(out.parent / "model")), torch.device("cpu"))
    got = model.lm.state_dict()
    changed = [k for k in expect if not torch.equal(expect[k], base[k])]
    assert len(changed) == sum(".lora_A." in k for k in adapter) > 0
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)
