"""Parquet files and folders and `datasets` save_to_disk folders as data.train entries: the same examples give the
same packed batches as JSONL; sentence-transformers-style columns map onto our fields; a bad row names its file
and row."""
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedtrain.config.schema import DataSource
from embedtrain.data.batches import BatchOrder, MicroBatchBuilder
from embedtrain.data.jsonl import DataError, build_index
from embedtrain.data.packing import TextTokenizer
from embedtrain.families import FAMILIES
from embedtrain.model.embedder import load_tokenizer

from test_distributed import DATA


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in open(DATA).readlines()[:64]]


def _table(rows):
    return pa.table({"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows],
                     "negative": [r.get("negative", []) for r in rows], "task": [r["task"] for r in rows]})


def _batches(entry, tok, steps=6):
    index = build_index([entry])
    order = BatchOrder(index, 8, seed=5)
    builder = MicroBatchBuilder(index, TextTokenizer(tok, FAMILIES["chatml"], 48, "Instruct: {instruction}\nQuery: "),
                                512, 1, {"wordnet_def2lemma": "Retrieve the word"}, None)
    out = []
    for k in range(steps):
        batch = builder.build(order.global_batch_ids(k))
        out.append(([s.input_ids.tolist() for s in batch.streams], [s.text_ids for s in batch.streams], batch.task))
    return index, out


def test_jsonl_parquet_and_datasets_folder_give_identical_batches(tmp_path, rows, tiny_models):
    tok = load_tokenizer(str(tiny_models["chatml"]))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(_table(rows), tmp_path / "pairs.parquet")
    (tmp_path / "shards" / "pairs").mkdir(parents=True)
    for i, part in enumerate((rows[:25], rows[25:])):  # a folder of two shards, read in name order
        pq.write_table(_table(part), tmp_path / "shards" / "pairs" / f"part-{i}.parquet")
    datasets.Dataset(_table(rows)).save_to_disk(str(tmp_path / "saved" / "pairs"))
    ref_index, ref = _batches(str(tmp_path / "pairs.jsonl"), tok)
    for entry in (tmp_path / "pairs.parquet", tmp_path / "shards" / "pairs", tmp_path / "saved" / "pairs"):
        index, got = _batches(DataSource(str(entry)), tok)
        assert got == ref, entry
        assert index.tasks == ref_index.tasks and len(index) == len(ref_index) == 64
        assert [index.read(i) for i in range(64)] == [ref_index.read(i) for i in range(64)]


def test_sentence_transformers_columns_map_onto_our_fields(tmp_path, rows):
    two = [r for r in rows if len(r.get("negative", [])) >= 2][:20]
    (tmp_path / "nli.jsonl").write_text("".join(json.dumps(dict(r, negative=r["negative"][:2], task="nli")) + "\n"
                                                for r in two))
    table = pa.table({"anchor": [r["query"] for r in two], "positive": [r["positive"] for r in two],
                      "negative_1": [r["negative"][0] for r in two], "negative_2": [r["negative"][1] for r in two]})
    pq.write_table(table, tmp_path / "nli.parquet")
    src = DataSource(str(tmp_path / "nli.parquet"),
                     columns={"query": "anchor", "negative": ["negative_1", "negative_2"]})
    got, ref = build_index([src]), build_index([str(tmp_path / "nli.jsonl")])
    assert [got.read(i) for i in range(len(two))] == [ref.read(i) for i in range(len(two))]


def test_bad_rows_name_file_and_row(tmp_path, rows):
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(_table(rows[:10]), folder / "a.parquet")
    broken = [dict(r) for r in rows[10:20]]
    broken[4]["query"] = "   "
    pq.write_table(_table(broken), folder / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet:row 5: field 'query' \(column 'query'\) is missing or empty"):
        build_index([str(folder)])
    index = build_index([str(folder)], skip_bad_lines=True)
    assert len(index) == 19 and index.skipped == 1
    table = _table(rows[:4]).set_column(0, "query", pa.array([1, 2, 3, 4]))
    pq.write_table(table, tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints\.parquet: column 'query' \(query\) holds int64, expected strings"):
        build_index([str(tmp_path / "ints.parquet")])
    with pytest.raises(DataError, match=r"no 'query' column \(columns: question, positive, negative, task\); map one"):
        pq.write_table(_table(rows[:4]).rename_columns(["question", "positive", "negative", "task"]), tmp_path / "q.parquet")
        build_index([str(tmp_path / "q.parquet")])
    with pytest.raises(DataError, match=r"data\.train\[0\]\.columns\.query: no column 'anchor'"):
        build_index([DataSource(str(tmp_path / "q.parquet"), columns={"query": "anchor"})])
    empty_neg = _table(rows[:4]).set_column(2, "negative", pa.array([["x"], [""], [], None], pa.list_(pa.string())))
    pq.write_table(empty_neg, tmp_path / "neg.parquet")
    with pytest.raises(DataError, match=r"neg\.parquet:row 2: a negative \(column 'negative'\) is missing or empty"):
        build_index([str(tmp_path / "neg.parquet")])
