"""Prefetching the next step's batches on a background thread changes nothing but when they are made: the same
losses as without it (bit-identical), with evaluation during training using the tokenizer meanwhile."""
import json
import subprocess
import sys

from embedtrain.data.prefetch import Prefetcher
from plugin_helpers import tiny_setup
from test_distributed import _env


def test_prefetcher_hands_out_each_step_and_prepares_the_next():
    calls = []
    pre = Prefetcher(lambda k: calls.append(k) or [k], last_step=4)
    assert [pre.take(k)[0] for k in range(4)] == [[0], [1], [2], [3]]
    pre.close()
    assert calls == [0, 1, 2, 3]  # each step prepared once, the last one not prepared beyond
    resumed = Prefetcher(lambda k: [k], last_step=10)
    assert resumed.take(6)[0] == [6] and resumed.take(7)[0] == [7] and resumed.take(3)[0] == [3]  # any order
    resumed.close()


def test_training_with_and_without_prefetch_is_bit_identical(tmp_path):
    model = tiny_setup(tmp_path, {"train.jsonl": (0, 64), "held.jsonl": (1000, 1016)})
    (tmp_path / "r.yaml").write_text(f"""
run: {{progress_bar: false, log_every: 1}}
model: {{path: {model}, family: chatml, pooling: mean}}
data: {{train: [{tmp_path / 'train.jsonl'}], max_length: 48, max_tokens_per_batch: 512}}
train: {{batch_size: 8, steps: 5, lr: 1.0e-2, grad_accum: 2}}
eval: {{retrieval: {tmp_path / 'held.jsonl'}, every_steps: 2}}
""")
    rows = {}
    for name, flag in (("on", "true"), ("off", "false")):
        cmd = [sys.executable, "-m", "embedtrain", "train", str(tmp_path / "r.yaml"), "--set",
               f"run.output_dir={tmp_path / name}", "--set", f"data.prefetch={flag}"]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[name] = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    for key in ("loss", "real_tokens", "grad_norm", "eval/retrieval/mrr"):
        assert [r.get(key) for r in rows["on"]] == [r.get(key) for r in rows["off"]], key
    assert all(r["data_s"] >= 0 for r in rows["on"]) and len(rows["on"]) == 5
