"""Issue 3 test 5: stage I (reconstruction, full fine-tuning) then stage II (InfoNCE + a fresh LoRA)
through the CLI; stage II starts from stage I's weights and trains only the new LoRA."""
import json
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from embedtrain.distributed import child_env
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "quickstart" / "data"


def _train(recipe, tmp_path):
    env = child_env(OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "embedtrain", "train", str(recipe)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _common(tmp_path) -> Path:
    """A tiny llama3 model, data, a held-out set and common.yaml; the model folder."""
    model = make_tiny_model("llama3", tmp_path / "base")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(open(DATA / "train.jsonl").readlines()[:120]))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(open(DATA / "heldout.jsonl").readlines()[:40]))
    (tmp_path / "common.yaml").write_text(f"""
run: {{progress_bar: false}}
model: {{path: {model}, family: llama3}}
data: {{train: [{data}], max_length: 64, max_tokens_per_batch: 1024, default_instruction: Retrieve the word}}
eval: {{retrieval: {held}}}
""")
    return model


def test_stage1_then_stage2_chain(tmp_path):
    model = _common(tmp_path)
    (tmp_path / "stage1.yaml").write_text("""
base: common.yaml
run: {output_dir: stage1}
train: {objective: reconstruction, batch_size: 8, steps: 3, lr: 1.0e-2}
""")
    (tmp_path / "stage2.yaml").write_text("""
base: common.yaml
run: {output_dir: stage2, save_merged: true}
model: {init_from: stage1, lora: {enabled: true, r: 4, alpha: 8}}
train: {objective: infonce, batch_size: 8, steps: 2, lr: 1.0e-2}
""")
    _train(tmp_path / "stage1.yaml", tmp_path)
    _train(tmp_path / "stage2.yaml", tmp_path)
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    original = load_file(str(model / "model.safetensors"))
    stage1 = load_file(str(s1 / "final" / "model.safetensors"))
    assert any(not torch.equal(original[k], stage1[k]) for k in original)  # stage I trained everything
    assert not torch.equal(original["lm_head.weight"], stage1["lm_head.weight"])  # the decoder head too
    # Stage II's held-out scores before training are stage I's after training: same starting function.
    e1 = json.loads((s1 / "eval.json").read_text())["after"]
    e2 = json.loads((s2 / "eval.json").read_text())["before"]
    assert e1 == e2
    adapter = load_file(str(s2 / "final" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)  # only the new LoRA was trained and saved
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(s2 / "final_merged")).model(input_ids=ids).last_hidden_state
        on_stage1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(s1 / "final")), str(s2 / "final"))
        on_original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model)), str(s2 / "final"))
        via_stage1 = on_stage1.get_decoder()(input_ids=ids).last_hidden_state
        via_original = on_original.get_decoder()(input_ids=ids).last_hidden_state
    assert (merged - via_stage1).abs().max() <= 1e-5  # stage II = stage I weights + the LoRA delta
    assert (merged - via_original).abs().max() > 1e-3


def test_lora_stage1_checkpoint_then_stage2(tmp_path):
    """Stage I with LoRA, stage II from one of its checkpoint folders: init_from merges the stage I adapter
    onto its base, so stage II starts from the function stage I computed at that step; loading stage II
    follows the chain (stage II adapter -> stage I adapter -> base)."""
    from embedtrain import load

    _common(tmp_path)
    (tmp_path / "stage1.yaml").write_text("""
base: common.yaml
run: {output_dir: stage1, checkpoint_every: 2}
model: {lora: {enabled: true, r: 4, alpha: 8, dropout: 0.0}}
train: {objective: reconstruction, batch_size: 8, steps: 2, lr: 1.0e-2}
""")
    (tmp_path / "stage2.yaml").write_text("""
base: common.yaml
run: {output_dir: stage2, save_merged: true}
model: {init_from: stage1/checkpoints/step00000002, lora: {enabled: true, r: 4, alpha: 8, dropout: 0.0}}
train: {objective: infonce, batch_size: 8, steps: 2, lr: 1.0e-2}
""")
    _train(tmp_path / "stage1.yaml", tmp_path)
    _train(tmp_path / "stage2.yaml", tmp_path)
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    assert (s1 / "checkpoints" / "step00000002" / "weights" / "adapter_model.safetensors").is_file()
    e1 = json.loads((s1 / "eval.json").read_text())["after"]
    e2 = json.loads((s2 / "eval.json").read_text())["before"]
    assert e1 != json.loads((s1 / "eval.json").read_text())["before"]  # stage I's adapter changed the scores
    assert e1 == e2
    texts = ["a domesticated carnivorous mammal", "move fast by using one's feet"]
    chained = torch.as_tensor(load(s2, device="cpu").encode(texts))
    merged = torch.as_tensor(load(s2 / "final_merged", device="cpu").encode(texts))
    assert (chained - merged).abs().max() <= 1e-5
