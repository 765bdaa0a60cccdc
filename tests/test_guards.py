"""Stability guards at world size 2: a NaN loss on ONE rank skips the step on both (no rank diverges: weights,
optimizer and schedule unchanged, the same on every rank), is counted and logged; past train.max_bad_steps the
run stops with a clear message and a checkpoint of the state before the bad step. ZeRO 0 (embedtrain's own
skip for the plain optimizer), ZeRO 2 and 3 (DeepSpeed's)."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from plugin_helpers import plugin_setup
from test_distributed import _env

# InfoNCE whose loss is NaN on rank NAN_RANK at the optimizer steps listed in NAN_STEPS (1-based). The
# objective is re-registered under its own name so the engine runs it unchanged.
PLUGIN = '''
import os
import sys
from dataclasses import dataclass

from embedtrain import distributed as D
from embedtrain.config.objective_options import InfoNCEOptions, options_for
from embedtrain.objectives import register
from embedtrain.objectives.base import NO_STEP
from embedtrain.objectives.infonce import InfoNCE

BAD = {int(s) for s in os.environ["NAN_STEPS"].split(",")}


@options_for("nan_infonce")
@dataclass
class NanOptions(InfoNCEOptions):
    pass


@register("nan_infonce")
class NanInfoNCE(InfoNCE):
    calls = 0

    def loss(self, model, batch, step=NO_STEP):
        loss, metrics = super().loss(model, batch, step)
        NanInfoNCE.calls += 1  # one micro-batch per step here
        if NanInfoNCE.calls in BAD and D.rank() == int(os.environ["NAN_RANK"]):
            loss = loss * float("nan")
            metrics["loss"] = float("nan")
        return loss, metrics

'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    model = plugin_setup(root, "nan_plugin", PLUGIN, 96)
    (root / "r.yaml").write_text(f"""
run: {{progress_bar: false, log_every: 1, checkpoint_every: 1, keep_checkpoints: 0}}
model: {{path: {model}, family: chatml, pooling: mean}}
data: {{train: [{root / 'train.jsonl'}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{objective: nan_infonce, batch_size: 8, steps: 5, lr: 1.0e-2, warmup_steps: 0, grad_clip: 1.0}}
""")
    return root


def _run(root, name, nan_steps, *sets):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "nan_plugin.py"), "train", str(root / "r.yaml"), "--set", f"run.output_dir={root / name}"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(_env(), NAN_STEPS=nan_steps, NAN_RANK="1", PYTHONPATH=os.pathsep.join([str(root), _env()["PYTHONPATH"]]))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step{step:08d}" / "weights" / "model.safetensors"))


def _same(a, b):
    return set(a) == set(b) and all((a[k] - b[k]).abs().max().item() == 0 for k in a)


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_a_nan_on_one_rank_skips_the_step_on_both(setup, stage):
    root = setup
    proc = _run(root, f"skip{stage}", "3", f"deepspeed.zero_stage={stage}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = root / f"skip{stage}"
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["bad_step"] for r in rows] == [0, 0, 1, 0, 0] and [r["update_skipped"] for r in rows] == [0, 0, 1, 0, 0]
    assert [r["bad_steps"] for r in rows] == [0, 0, 1, 1, 1]
    # the bad step changed nothing: its weights and learning rate are those of the step before
    assert _same(_weights(run_dir, 2), _weights(run_dir, 3)) and not _same(_weights(run_dir, 3), _weights(run_dir, 4))
    assert rows[2]["lr"] == rows[1]["lr"] > rows[3]["lr"]  # the schedule did not advance either
    assert all(r["loss"] == r["loss"] for i, r in enumerate(rows) if i != 2)  # every other step is finite
    assert "step 3: loss nan" in proc.stderr and "skipped on every rank" in proc.stderr


def test_past_max_bad_steps_the_run_stops_with_the_state_before(setup):
    root = setup
    proc = _run(root, "stop", "2,4", "deepspeed.zero_stage=2", "train.max_bad_steps=1", "run.checkpoint_every=0")
    assert proc.returncode != 0
    assert "step 4: 2 steps with a non-finite loss or gradient norm, more than train.max_bad_steps=1" in proc.stderr
    run_dir = root / "stop"
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["bad_steps"] == 2
    # `latest` names step 3's checkpoint (the state before the bad step 4); a resume starts from there
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000003"
    state = json.loads((run_dir / "checkpoints" / "step00000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["bad_steps"] == 1  # as it was before step 4
    assert _same(_weights(run_dir, 3), load_file(str(run_dir / "checkpoints" / "step00000003" / "weights" /
                                                      "model.safetensors")))
