"""run.report_to: TensorBoard, Weights & Biases (offline) and CSV get the same step metrics as metrics.jsonl."""
import csv
import json
import subprocess
import sys

import pytest

from embedtrain.config.loader import load_recipe
from embedtrain.engine.monitors import open_monitors
from embedtrain.tiny import make_tiny_model

from test_distributed import DATA, _env

HELD = DATA.parent / "heldout.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    model = make_tiny_model("chatml", root / "model")
    (root / "train.jsonl").write_text("".join(open(DATA).readlines()[:48]))
    (root / "r.yaml").write_text(f"""
run: {{output_dir: {root / 'run'}, progress_bar: false, log_every: 1, report_to: [tensorboard, wandb, csv]}}
model: {{path: {model}, family: chatml, pooling: mean}}
data: {{train: [{root / 'train.jsonl'}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 4, lr: 1.0e-2}}
eval: {{retrieval: {HELD}, max_examples: 16, every_steps: 2}}
""")
    env = dict(_env(), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "embedtrain", "train", str(root / "r.yaml")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in open(root / "run" / "metrics.jsonl")]
    return root / "run", rows


def test_tensorboard_events_hold_the_metrics_jsonl_values(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, rows = run
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    for key in ("loss", "lr", "grad_norm", "eval/retrieval/mrr"):
        logged = [(r["step"], r[key]) for r in rows if key in r]
        events = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in events] == [s for s, _ in logged] and logged
        assert all(abs(v - w) <= 1e-6 * max(1.0, abs(w)) for (_, v), (_, w) in zip(events, logged))  # float32
    assert [e.step for e in acc.Scalars("eval/retrieval/mrr")] == [2, 4]


def test_csv_and_wandb_offline_get_the_same_steps(run):
    run_dir, rows = run
    with open(run_dir / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [(int(r["step"]), float(r["value"])) for r in table if r["name"] == "loss"] == \
        [(r["step"], r["loss"]) for r in rows]
    run_id = (run_dir / "wandb_id.txt").read_text().strip()  # kept for --resume
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    # W&B's offline log (for `wandb sync`) records each step's history values as JSON text
    log = next(offline[0].glob("*.wandb")).read_bytes()
    assert all(json.dumps(r["loss"]).encode() in log for r in rows)


def test_a_missing_monitor_package_fails_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "r.yaml").write_text("model: {path: m}\ndata: {train: [a.jsonl]}\nrun: {report_to: [wandb]}\n")
    cfg, _ = load_recipe(tmp_path / "r.yaml", [f"run.output_dir={tmp_path / 'run'}"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RuntimeError, match=r"run\.report_to: wandb needs the wandb package: pip install 'embedtrain\[monitor\]'"):
        open_monitors(cfg, tmp_path / "run")
