"""SIGUSR1 / SIGTERM mid-run: the step finishes, a checkpoint is written, the process exits with the
requeue code, and --resume ends exactly where an uninterrupted run ends."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from embedtrain.distributed import child_env
from embedtrain.engine.preemption import REQUEUE_EXIT_CODE
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60


def _env():
    return child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _losses(run):
    return [json.loads(line)["loss"] for line in open(run / "metrics.jsonl")]


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_checkpoints_exits_for_requeue_and_resumes_exactly(tmp_path, sig):
    model = make_tiny_model("chatml", tmp_path / "model")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(open(ROOT / "recipes/quickstart/data/train.jsonl").readlines()[:600]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
run: {{progress_bar: false}}
model: {{path: {model}, lora: {{enabled: true, dropout: 0.1}}}}
data: {{train: [{data}], max_length: 48, max_tokens_per_batch: 2048}}
train: {{batch_size: 16, steps: {STEPS}, lr: 1.0e-3, warmup_steps: 5}}
""")
    cmd = [sys.executable, "-m", "embedtrain", "train", str(recipe)]
    whole = subprocess.run(cmd + ["--set", f"run.output_dir={tmp_path / 'whole'}"], env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    split = tmp_path / "split"
    proc = subprocess.Popen(cmd + ["--set", f"run.output_dir={split}"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # signal once a few steps have been logged
        if (split / "metrics.jsonl").exists() and len((split / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    assert f"received {sig.name}" in err
    stopped_at = len(_losses(split))
    assert 5 <= stopped_at < STEPS  # stopped early, after finishing the step in flight
    assert (split / "checkpoints" / "latest").read_text().strip() == f"step{stopped_at:08d}"
    assert not (split / "final").exists()

    resumed = subprocess.run(cmd + ["--set", f"run.output_dir={split}", "--resume"], env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(split) == _losses(tmp_path / "whole")  # every step once, bit-identical
    a = load_file(str(tmp_path / "whole" / "final" / "adapter_model.safetensors"))
    b = load_file(str(split / "final" / "adapter_model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
