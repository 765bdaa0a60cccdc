"""Test 7 (data): bad lines give file:line messages or are skipped and counted; truncation keeps EOS;
data order is deterministic, same-task, sharded and resumable."""
import json

import numpy as np
import pytest

from embedtrain.data.batches import BatchOrder, rank_slice
from embedtrain.data.jsonl import DataError, build_index
from embedtrain.data.packing import TextTokenizer, pack_texts
from embedtrain.families import FAMILIES
from embedtrain.tiny import byte_tokenizer

GOOD = {"query": "q", "positive": "p", "negative": ["n1", "n2"], "task": "t"}


@pytest.mark.parametrize("line, message", [
    ('{"query": "q", "positive": ', "invalid JSON"),
    ('["q", "p"]', "expected a JSON object, got list"),
    ('{"query": "q"}', "missing field 'positive'"),
    ('{"query": "", "positive": "p"}', "field 'query' is empty"),
    ('{"query": 3, "positive": "p"}', "field 'query' must be a string, got int"),
    ('{"query": "q", "positive": "p", "negative": [1]}', "'negative' must be a string or a list of strings"),
    ('{"query": "q", "positive": "p", "negative": ["  "]}', "negative 0 is empty"),
    ('{"query": "q", "positive": "p", "postive": "x"}', "unknown field(s) ['postive']"),
    ('{"query": "q", "positive": "p", "task": ""}', "field 'task' must be a non-empty string"),
])
def test_bad_line_is_an_error_naming_file_and_line(tmp_path, line, message):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError) as err:
        build_index([str(f)])
    assert f"{f}:2: " in str(err.value) and message in str(err.value)
    assert "data.skip_bad_lines" in str(err.value)


def test_skip_bad_lines_counts_and_keeps_the_rest(tmp_path, caplog):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join([json.dumps(GOOD), "{oops", json.dumps({"query": "q"}), json.dumps(GOOD), ""]))
    idx = build_index([str(f)], skip_bad_lines=True)
    assert len(idx) == 2 and idx.skipped == 2
    assert "skipped 2 bad data line(s)" in caplog.text
    assert idx.read(1).negatives == ["n1", "n2"] and list(idx.line_no) == [1, 4]


def test_missing_file_and_single_negative_string(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        build_index([str(tmp_path / "nope.jsonl")])
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"query": "q", "positive": "p", "negative": "n"}) + "\n")
    idx = build_index([str(f)])
    ex = idx.read(0)
    assert ex.negatives == ["n"] and ex.task == "d"  # task defaults to the file name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_truncation_cuts_content_never_eos(family):
    tok = byte_tokenizer(family)
    fam = FAMILIES[family]
    tt = TextTokenizer(tok, fam, 40, "Instruct: {instruction}\nQuery: ")
    short, long_ = tt.encode(["hi", "word " * 200], ["Find", "Find"])
    assert not short.truncated and long_.truncated and len(long_.ids) == 40
    eos = tok.convert_tokens_to_ids(fam.eos_token)
    assert long_.ids[-1] == eos and short.ids[-1] == eos
    assert long_.ids[:long_.pool_from] == short.ids[:short.pool_from]  # template + instruction intact
    if fam.suffix:
        n = len(tt.suffix_ids)
        assert long_.ids[-1 - n:-1] == tt.suffix_ids


def test_packing_respects_budget_and_positions():
    tok = byte_tokenizer("chatml")
    tt = TextTokenizer(tok, FAMILIES["chatml"], 64, "{instruction}")
    texts = tt.encode([("t" * n) for n in (50, 3, 20, 33, 9, 12, 40)])
    streams = pack_texts(texts, 100, tt.pad_id, pad_to_multiple_of=8)
    assert sorted(i for s in streams for i in s.text_ids) == list(range(7))
    for s in streams:
        assert s.num_tokens <= 100 and s.num_tokens % 8 == 0 or s.num_tokens == s.num_real_tokens
        for seg in range(len(s.cu_seqlens) - 1):
            a, b = int(s.cu_seqlens[seg]), int(s.cu_seqlens[seg + 1])
            assert s.position_ids[a:b].tolist() == list(range(b - a))
    assert sum(s.num_real_tokens for s in streams) == sum(len(t.ids) for t in texts)
    with pytest.raises(ValueError, match="exceeds data.max_tokens_per_batch=10"):
        pack_texts(texts, 10, 0)


def _index(tmp_path, sizes):
    f = tmp_path / "d.jsonl"
    with open(f, "w") as out:
        for task, n in sizes.items():
            for i in range(n):
                out.write(json.dumps({"query": f"{task}{i}", "positive": "p", "task": task}) + "\n")
    return build_index([str(f)])


def test_batch_order_same_task_deterministic_sharded(tmp_path, caplog):
    caplog.set_level("INFO")
    idx = _index(tmp_path, {"a": 37, "b": 20, "c": 3})
    order = BatchOrder(idx, global_batch=8, seed=1)
    assert order.batches_per_epoch == 4 + 2 and order.left_per_epoch == 5 + 4 + 3
    assert "wait for another epoch's shuffle" in caplog.text
    again = BatchOrder(idx, global_batch=8, seed=1)
    for k in range(20):  # three epochs
        ids = order.global_batch_ids(k)
        assert len(set(idx.task_id[ids])) == 1  # one task per global batch
        assert np.array_equal(ids, again.global_batch_ids(k))  # a pure function of (seed, k): resumable
        shards = [rank_slice(ids, r, 2) for r in range(2)]
        assert np.array_equal(np.concatenate(shards), ids) and len(shards[0]) == 4
    epoch0 = np.concatenate([order.global_batch_ids(k) for k in range(6)])
    assert len(set(epoch0.tolist())) == 48  # no example twice within an epoch
    assert not np.array_equal(order.global_batch_ids(0), BatchOrder(idx, 8, seed=2).global_batch_ids(0))
    with pytest.raises(ValueError, match="no task has train.batch_size=64"):
        BatchOrder(idx, global_batch=64, seed=1)
