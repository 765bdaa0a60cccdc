"""The same CLI under torchrun and under the deepspeed launcher (2 processes, CPU/gloo): same losses."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedtrain.distributed import child_env
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, tmp_path, **extra):
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_torchrun_and_deepspeed_launcher_agree(tmp_path):
    launcher = Path(sys.executable).with_name("deepspeed")
    launcher = str(launcher) if launcher.exists() else shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("the deepspeed launcher script is neither beside this python nor on PATH")
    model = make_tiny_model("qwen2", tmp_path / "model")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(open(ROOT / "recipes/quickstart/data/train.jsonl").readlines()[:200]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
run: {{log_every: 1, progress_bar: false}}
model: {{path: {model}, pooling: mean, lora: {{enabled: true, dropout: 0.0}}}}
data: {{train: [{data}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 4, lr: 1.0e-3}}
deepspeed: {{zero_stage: 2}}
""")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
          "embedtrain", "train", str(recipe), "--set", "run.output_dir=tr"], tmp_path)
    port = str(29500 + os.getpid() % 1000)
    _run([launcher, "--num_gpus", "2", "--master_port", port, "--module", "embedtrain", "train", str(recipe),
          "--set", "run.output_dir=ds"], tmp_path)
    # the workstation helper (launch/single_node.sh) is torchrun underneath: the same run
    _run(["bash", str(ROOT / "launch/single_node.sh"), str(recipe), "--set", "run.output_dir=sn"],
         tmp_path, NPROC="2", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    losses = {}
    for name in ("tr", "ds", "sn"):
        losses[name] = [json.loads(line)["loss"] for line in open(tmp_path / name / "metrics.jsonl")]
        assert (tmp_path / name / "final" / "adapter_model.safetensors").is_file()
    assert len(losses["tr"]) == 4 and max(abs(a - b) for a, b in zip(losses["tr"], losses["ds"])) <= 1e-6
    assert losses["sn"] == losses["tr"]
    resolved = (tmp_path / "ds" / "config.yaml").read_text()
    assert "zero_stage: 2" in resolved and "pooling: mean" in resolved  # resolved config saved in the run dir
