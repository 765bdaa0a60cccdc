"""Weighted mixing of data.train entries: the realised mix matches the weights within sampling error, the order is
a pure function of (seed, step), groups stay same-task and are used without replacement within their epoch,
max_examples takes a seeded subset, and a run resumed mid-epoch with a mix is bit-identical."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from embedtrain.config.loader import RecipeError, load_recipe
from embedtrain.config.schema import DataConfig, DataSource
from embedtrain.data.batches import BatchOrder, make_batch_order
from embedtrain.data.jsonl import build_index
from embedtrain.data.mixing import BLOCK, entry_probabilities
from plugin_helpers import tiny_setup
from test_distributed import _env


def _files(tmp_path, sizes, tasks=("a", "b")):
    """One JSONL file per size; each file's lines alternate between two tasks."""
    paths = []
    for f, n in enumerate(sizes):
        p = tmp_path / f"src{f}.jsonl"
        p.write_text("".join(json.dumps({"query": f"q{f}-{i}", "positive": f"p{f}-{i}", "task": tasks[i % 2]}) + "\n"
                             for i in range(n)))
        paths.append(str(p))
    return paths


def test_realised_mix_matches_the_weights(tmp_path):
    paths = _files(tmp_path, [40, 400, 40])
    weights = [0.5, 0.3, 0.2]
    data = DataConfig(train=[DataSource(p, weight=w) for p, w in zip(paths, weights)], mixing="weights")
    index = build_index(data.sources())
    order = make_batch_order(index, 4, seed=7, data=data)
    steps = 3 * BLOCK + 123  # across draw blocks
    got = order.realised(steps)
    for (name, share), w in zip(got.items(), weights):
        sigma = math.sqrt(w * (1 - w) / steps)
        assert abs(share - w) <= 4 * sigma, (name, share, w)
    # the same counts, stepping through global_batch_ids one step at a time
    counted = np.zeros(3)
    for k in range(steps):
        counted[index.source_id[order.global_batch_ids(k)[0]]] += 1
    assert np.allclose(counted / steps, list(got.values()))


def test_order_is_a_pure_function_of_seed_and_step(tmp_path):
    paths = _files(tmp_path, [24, 60])
    data = DataConfig(train=[DataSource(paths[0], weight=1.0), DataSource(paths[1], weight=3.0)], mixing="weights")
    index = build_index(data.sources())
    walked = make_batch_order(index, 4, seed=3, data=data)
    forward = [walked.global_batch_ids(k).tolist() for k in range(BLOCK + 50)]
    fresh = make_batch_order(index, 4, seed=3, data=data)
    for k in (BLOCK + 49, 5000 % (BLOCK + 50), 0, BLOCK, 17):  # any order of queries, a fresh object
        assert fresh.global_batch_ids(k).tolist() == forward[k]
    other = make_batch_order(index, 4, seed=4, data=data)
    assert [other.global_batch_ids(k).tolist() for k in range(50)] != forward[:50]
    for ids in forward:  # same-task, same-entry batches
        assert len(set(index.task_id[ids])) == 1 and len(set(index.source_id[ids])) == 1
    # within one epoch of a group every example is drawn once: the first 3 batches of entry 0 / task a
    # (12 examples, 3 batches per epoch) cover it exactly
    group = [ids for ids in forward if index.source_id[ids[0]] == 0 and index.task_id[ids[0]] == 0][:3]
    assert sorted(i for ids in group for i in ids) == sorted(np.flatnonzero((index.source_id == 0) & (index.task_id == 0)))


def test_temperature_and_size_probabilities():
    p = entry_probabilities([100, 10000], "temperature", [None, None], 2.0)
    assert np.allclose(p, [10 / 110, 100 / 110])
    assert np.allclose(entry_probabilities([100, 300], "size", [None, None], 1.0), [0.25, 0.75])
    assert np.allclose(entry_probabilities([100, 300], "weights", [None, 3.0], 1.0), [0.25, 0.75])


def test_max_examples_takes_a_seeded_subset(tmp_path):
    paths = _files(tmp_path, [80, 40])
    data = DataConfig(train=[DataSource(paths[0], max_examples=16), paths[1]])
    index = build_index(data.sources())
    order = make_batch_order(index, 4, seed=1, data=data)
    used = {i for k in range(400) for i in order.global_batch_ids(k) if index.source_id[i] == 0}
    assert len(used) == 16
    again = make_batch_order(index, 4, seed=1, data=data)
    assert {i for k in range(400) for i in again.global_batch_ids(k) if index.source_id[i] == 0} == used
    # without a mix or a cap the order is the epoch-based one, unchanged
    plain = DataConfig(train=paths)
    assert isinstance(make_batch_order(build_index(plain.sources()), 4, 1, plain), BatchOrder)


@pytest.mark.parametrize("override, message", [
    ("data.train=[{path: a.jsonl, weight: 2}]", r"data\.train\[0\]\.weight is used with data\.mixing: weights"),
    ("data.train=[{path: a.jsonl, wieght: 2}]", r"unknown key `data\.train\[0\]\.wieght`; did you mean `data\.train\[0\]\.weight`"),
    ("data.train=[{path: a.jsonl, weight: 0}]", r"data\.train\[0\]\.weight must be > 0"),
    ("data.train=[{path: a.jsonl, max_examples: 0}]", r"data\.train\[0\]\.max_examples must be >= 1"),
    ("data.train=[7]", r"data\.train\[0\] must be str"),
])
def test_bad_entries_are_named(tmp_path, override, message):
    (tmp_path / "r.yaml").write_text("model: {path: m}\ndata: {train: [a.jsonl]}\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.yaml", [override])


def test_resume_mid_epoch_with_a_mix_is_bit_identical(tmp_path):
    model = tiny_setup(tmp_path, {"a.jsonl": (0, 40), "b.jsonl": (2000, 2080)})
    (tmp_path / "r.yaml").write_text(f"""
run: {{progress_bar: false, log_every: 1}}
model: {{path: {model}, family: chatml, pooling: mean, lora: {{enabled: true, r: 4, alpha: 8, dropout: 0.1}}}}
data: {{train: [{{path: {tmp_path / 'a.jsonl'}, weight: 3}}, {{path: {tmp_path / 'b.jsonl'}, weight: 1, max_examples: 48}}],
        mixing: weights, max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 6, lr: 1.0e-2}}
""")

    def train(name, *extra):
        cmd = [sys.executable, "-m", "embedtrain", "train", str(tmp_path / "r.yaml"), "--set",
               f"run.output_dir={tmp_path / name}", *extra]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    whole = train("whole")
    train("parts", "--set", "run.stop_at_step=3")
    train("parts", "--resume")
    losses = {n: [json.loads(line)["loss"] for line in open(tmp_path / n / "metrics.jsonl")] for n in ("whole", "parts")}
    assert len(losses["whole"]) == 6 and losses["parts"] == losses["whole"]
    assert "data mix (data.mixing: weights), share of steps: a.jsonl 75.0%, b.jsonl 25.0%" in whole.stderr
    assert "data mix realised over 6 steps" in whole.stderr
