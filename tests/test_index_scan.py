"""The JSONL index built by parallel byte ranges equals the one-process scan, line numbers included, and a bad line
in a later range is named with its true file:line."""
import json

import numpy as np
import pytest

from embedtrain.data import jsonl_scan
from embedtrain.data.jsonl import DataError, build_index

from test_distributed import DATA


@pytest.fixture
def big(tmp_path):
    lines = open(DATA).readlines()[:3000]
    lines[1200] = "\n"  # a blank line shifts line numbers but holds no example
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(lines))
    return path, lines


def _arrays(index):
    return (index.offset, index.line_no, index.task_id, index.file_id), index.tasks


def test_parallel_ranges_equal_one_process(big, monkeypatch):
    path, lines = big
    monkeypatch.setenv("EMBEDTRAIN_INDEX_WORKERS", "1")
    one = build_index([str(path)])
    monkeypatch.setattr(jsonl_scan, "PARALLEL_BYTES", 1024)
    monkeypatch.setenv("EMBEDTRAIN_INDEX_WORKERS", "3")  # 12 ranges
    assert len(jsonl_scan._bounds(str(path), 12)) == 13
    many = build_index([str(path)])
    (a, ta), (b, tb) = _arrays(one), _arrays(many)
    assert ta == tb and all(np.array_equal(x, y) for x, y in zip(a, b)) and len(one) == 2999
    assert [many.read(i) for i in (0, 1199, 1200, 2998)] == [one.read(i) for i in (0, 1199, 1200, 2998)]
    assert many.line_no[1200] == 1202  # after the blank line 1201


def test_a_bad_line_in_a_later_range_names_its_line(big, monkeypatch):
    path, lines = big
    lines[2500] = json.dumps({"query": "q", "positive": ""}) + "\n"
    path.write_text("".join(lines))
    monkeypatch.setattr(jsonl_scan, "PARALLEL_BYTES", 1024)
    monkeypatch.setenv("EMBEDTRAIN_INDEX_WORKERS", "3")
    with pytest.raises(DataError, match=rf"{path}:2501: field 'positive' is empty \(fix the line"):
        build_index([str(path)])
    skipped = build_index([str(path)], skip_bad_lines=True)
    assert skipped.skipped == 1 and len(skipped) == 2998


def test_world2_indexes_once_and_a_bad_line_stops_every_rank(tmp_path):
    """Rank 0 indexes and shares; a bad line stops both ranks with the same file:line message, before any
    model loads (no hang: the error is broadcast)."""
    import subprocess
    import sys

    from embedtrain.tiny import make_tiny_model
    from test_distributed import _env

    model = make_tiny_model("chatml", tmp_path / "model")
    lines = open(DATA).readlines()[:64]
    (tmp_path / "good.jsonl").write_text("".join(lines))
    (tmp_path / "bad.jsonl").write_text("".join(lines[:30]) + '{"query": "q"}\n' + "".join(lines[30:]))
    (tmp_path / "r.yaml").write_text(f"""
run: {{progress_bar: false, output_dir: {tmp_path / 'run'}}}
model: {{path: {model}, family: chatml, pooling: mean}}
data: {{train: [{tmp_path / 'good.jsonl'}], max_length: 48, max_tokens_per_batch: 1024}}
train: {{batch_size: 8, steps: 2, lr: 1.0e-2}}
""")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "embedtrain",
           "train", str(tmp_path / "r.yaml")]
    good = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "indexed 64 examples" in good.stderr and "(on rank 0, shared with 1 other rank(s))" in good.stderr
    bad = subprocess.run(cmd + ["--set", f"data.train=[{tmp_path / 'bad.jsonl'}]"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    message = f"error: {tmp_path / 'bad.jsonl'}:31: missing field 'positive'"
    assert bad.returncode != 0 and bad.stderr.count(message) == 2, bad.stderr[-3000:]
    assert "Loading weights" not in bad.stderr  # stopped before any model loads
