"""`embedtrain mine`: the mined negatives equal a brute-force reference written here (every query scored
against every candidate in a plain double loop, sorted, windowed and margin-filtered), for TF-IDF, BM25
and a tiny random model; the CLI end to end; and the errors bad input gets."""
import json
import math
from collections import Counter

import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from embedtrain import cli
from embedtrain.api import from_base
from embedtrain.data.jsonl import build_index
from embedtrain.mining import MineSettings, mine
from embedtrain.tiny import make_tiny_model

ANIMALS = [  # the first two positives are near-duplicates: each is a false negative for the other's query
    ("where does the cat sleep", "the cat sleeps on the warm mat by the door"),
    ("where did the cat nap", "the cat sleeps on the warm mat near the door"),
    ("what do dogs eat", "dogs eat meat and dry kibble every day"),
    ("how fast can a horse run", "a horse can run fast across open fields"),
    ("what do cats eat", "cats eat fish and meat and sometimes dry kibble"),
    ("where do birds sleep", "birds sleep in nests high in the trees"),
    ("how do fish breathe", "fish breathe water through their gills"),
]
CODE = [  # the first and last share a query: neither positive may be the other line's negative
    ("how to sort a list in python", "use sorted(list) or list.sort() in python"),
    ("reverse a list python", "use reversed(list) or list.reverse() in python"),
    ("read a file in python", "open the file with open(path) and call read() in python"),
    ("write a file in python", "open the file with open(path, 'w') and call write() in python"),
    ("sort a dict by value", "sort the items with sorted(d.items(), key=lambda kv: kv[1]) in python"),
    ("how to sort a list in python", "call list.sort() to sort a python list in place"),
]
GIVEN = "cats eat fish  and meat and sometimes dry kibble"  # line 3's given negative: line 5's positive
CORPUS = ["the  cat sleeps on the warm mat by the door",  # a positive again, up to whitespace: one candidate
          "a python list can hold cats and dogs", "the mat by the door is warm"]


def norm(text):
    return " ".join(text.split())


@pytest.fixture
def data(tmp_path):
    a, b = tmp_path / "animals.jsonl", tmp_path / "code.jsonl"
    lines = [{"query": q, "positive": p, "task": "animals"} for q, p in ANIMALS]
    lines[2]["negative"] = GIVEN  # a string, as the format allows
    a.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code = [{"query": q, "positive": p, "instruction": "Find code"} for q, p in CODE]  # task: the file name
    b.write_text("".join(json.dumps(x) + "\n" for x in code))
    rows = lines + [dict(x, task="code") for x in code]
    return [str(a), str(b)], rows, lines + code


def pools_of(rows, corpus=()):
    """task -> distinct candidate texts, in first-appearance order (positives, then the corpus)."""
    pools = {}
    for r in rows:
        pools.setdefault(r["task"], [])
    for task, pool in pools.items():
        for text in [r["positive"] for r in rows if r["task"] == task] + list(corpus):
            if norm(text) not in {norm(t) for t in pool}:
                pool.append(text)
    return pools


def reference(rows, score, lo, hi, threshold, corpus=()):
    """Per line: (window [(score, text)], eligible texts, margin-skipped texts), by brute force."""
    pools, out = pools_of(rows, corpus), []
    for i, r in enumerate(rows):
        banned = {norm(x["positive"]) for x in rows if x["task"] == r["task"] and norm(x["query"]) == norm(r["query"])}
        scored = [(score(i, text), j, text) for j, text in enumerate(pools[r["task"]]) if norm(text) not in banned]
        ranked = sorted(scored, key=lambda x: (-x[0], x[1]))  # equal scores: lower pool index first
        limit = threshold(score(i, r["positive"]))
        for k in range(min(hi + 1, len(ranked)) - 1):  # the exact comparison below is meaningful only if
            a, b = ranked[k][0], ranked[k + 1][0]  # float noise cannot reorder candidates or cross the margin
            assert a == b or a - b > 1e-5, (r["query"], ranked)  # (exact ties: identical texts up to a word)
        assert all(s == limit or abs(s - limit) > 1e-5 for s, _, _ in ranked[lo - 1:hi])  # (exact: 0 == 0)
        window = [(s, t) for s, _, t in ranked[lo - 1:hi]]
        out.append((window, [t for s, t in window if s <= limit], [t for s, t in window if s > limit]))
    return out


def tfidf_score(rows, corpus=()):
    pools = pools_of(rows, corpus)
    vecs = {task: TfidfVectorizer().fit(pool) for task, pool in pools.items()}

    def score(i, text):
        vec = vecs[rows[i]["task"]]
        q, d = vec.transform([rows[i]["query"]]).toarray()[0], vec.transform([text]).toarray()[0]
        return sum(float(x) * float(y) for x, y in zip(q, d))
    return score


def bm25_score(rows, corpus=(), k1=1.2, b=0.75):
    analyze = CountVectorizer().build_analyzer()
    stats = {}
    for task, pool in pools_of(rows, corpus).items():
        docs = [analyze(t) for t in pool]
        df = Counter(term for d in docs for term in set(d))
        stats[task] = (len(docs), sum(len(d) for d in docs) / len(docs), df)

    def score(i, text):
        n, avgdl, df = stats[rows[i]["task"]]
        tf, total = Counter(analyze(text)), 0.0
        for term in analyze(rows[i]["query"]):  # each query token, repeats included
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                total += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(analyze(text)) / avgdl))
        return total
    return score


def check_mean_scores(stats, rows, score, out):
    """The command's own scores (task means in OUT.json) equal the reference's."""
    for task, counts in stats["tasks"].items():
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        pos = [score(i, rows[i]["positive"]) for i in idx]
        neg = [score(i, n) for i in idx for n in out[i]["negative"]]
        assert counts["mean_positive_score"] == pytest.approx(sum(pos) / len(pos), rel=1e-5)
        assert counts["mean_negative_score"] == pytest.approx(sum(neg) / len(neg), rel=1e-5)


def read_out(path):
    return [json.loads(line) for line in open(path)]


def check_common(rows, lines, out, pools):
    """Every line kept with its fields (the task written out where it was the file name); no negative is
    a positive of the query or from another task."""
    assert len(out) == len(rows)
    for r, line, o in zip(rows, lines, out):
        expected = {k: v for k, v in dict(line, task=r["task"]).items() if k != "negative"}
        assert {k: v for k, v in o.items() if k != "negative"} == expected
        assert norm(r["positive"]) not in {norm(n) for n in o["negative"]}
        assert all(n in pools[r["task"]] for n in o["negative"])  # nothing from another task's pool
    sort_a, sort_b = out[7], out[12]  # same query: each other's positive is off-limits
    assert sort_b["positive"] not in sort_a["negative"] and sort_a["positive"] not in sort_b["negative"]


def test_tfidf_top_equals_reference_and_margin_removes_near_duplicates(data, tmp_path):
    files, rows, lines = data
    s = MineSettings(1, 4, 2, relative_margin=0.05, sampling="top")
    stats = mine(files, "tfidf", tmp_path / "out.jsonl", s)
    out = read_out(tmp_path / "out.jsonl")
    ref = reference(rows, tfidf_score(rows), 1, 4, lambda p: p * 0.95)
    assert [o["negative"] for o in out] == [elig[:2] for _, elig, _ in ref]
    check_mean_scores(stats, rows, tfidf_score(rows), out)
    check_common(rows, lines, out, pools_of(rows))
    # the near-duplicate positive ranks first for the other cat query and the margin drops it
    assert ref[0][0][0][1] == ANIMALS[1][1] and ANIMALS[1][1] in ref[0][2]
    assert ref[1][0][0][1] == ANIMALS[0][1] and ANIMALS[0][1] in ref[1][2]
    assert ANIMALS[1][1] not in out[0]["negative"] and ANIMALS[0][1] not in out[1]["negative"]
    skipped = sum(len(sk) for _, _, sk in ref)
    assert skipped > 0 and sum(t["margin_skipped"] for t in stats["tasks"].values()) == skipped
    assert json.loads((tmp_path / "out.jsonl.json").read_text())["tasks"]["code"]["queries"] == len(CODE)


def test_bm25_with_corpus_and_absolute_margin_equals_reference(data, tmp_path):
    files, rows, lines = data
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n\n")
    s = MineSettings(2, 6, 3, margin=0.5, sampling="top", corpus=str(corpus))
    stats = mine(files, "bm25", tmp_path / "out.jsonl", s)
    out = read_out(tmp_path / "out.jsonl")
    ref = reference(rows, bm25_score(rows, CORPUS), 2, 6, lambda p: p - 0.5, CORPUS)
    assert [o["negative"] for o in out] == [elig[:3] for _, elig, _ in ref]
    check_mean_scores(stats, rows, bm25_score(rows, CORPUS), out)
    pools = pools_of(rows, CORPUS)
    assert len(pools["animals"]) == len(ANIMALS) + 2 and stats["tasks"]["animals"]["pool"] == len(ANIMALS) + 2
    check_common(rows, lines, out, pools)
    assert any(n in CORPUS for o in out for n in o["negative"])  # corpus texts are candidates of every task
    assert any(sk for _, _, sk in ref) and stats["short_queries"] == sum(len(e) < 3 for _, e, _ in ref)


def test_random_sampling_is_seeded_per_line_within_the_eligible_set(data, tmp_path):
    files, rows, lines = data
    ref = reference(rows, tfidf_score(rows), 1, 6, lambda p: p * 0.95)
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        mine(files, "tfidf", tmp_path / f"{name}.jsonl", MineSettings(1, 6, 2, sampling="random", seed=seed))
        outs[name] = [o["negative"] for o in read_out(tmp_path / f"{name}.jsonl")]
    assert outs["a"] == outs["b"] and outs["a"] != outs["c"]
    for negs, (_, elig, _) in zip(outs["a"], ref):
        assert len(negs) == min(2, len(elig)) and set(negs) <= set(elig)
        assert negs == [t for t in elig if t in negs]  # kept in rank order
    assert any(len(elig) > 2 for _, elig, _ in ref)  # so the draw had a choice


def test_keep_given_puts_given_first_and_mines_num_new(data, tmp_path):
    files, rows, lines = data
    mine(files, "tfidf", tmp_path / "out.jsonl", MineSettings(1, 6, 2, sampling="top", keep_given=True))
    ref = reference(rows, tfidf_score(rows), 1, 6, lambda p: p * 0.95)
    out = read_out(tmp_path / "out.jsonl")
    assert out[2]["negative"] == [GIVEN] + [t for t in ref[2][1] if norm(t) != norm(GIVEN)][:2]
    assert ref[2][1][0] == norm(GIVEN)  # ranked first: without keep_given it is mined (again)
    assert out[0]["negative"] == ref[0][1][:2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model("llama3", tmp_path_factory.mktemp("mine") / "model")


def model_score(rows, path):
    emb = from_base(str(path), pooling="mean", device="cpu")
    q = [emb.encode(r["query"], instruction=r.get("instruction")) for r in rows]  # one text at a time
    docs = {t: emb.encode(t) for t in {r["positive"] for r in rows}}
    return lambda i, text: float(sum(float(x) * float(y) for x, y in zip(q[i], docs[text])))


def test_model_top_and_cli_random_equal_reference(data, tiny, tmp_path, capsys):
    files, rows, lines = data
    score = model_score(rows, tiny)
    ref = reference(rows, score, 1, 4, lambda p: p - 0.02)
    s = MineSettings(1, 4, 2, margin=0.02, sampling="top", device="cpu")  # fp32, like the reference
    stats = mine(files, str(tiny), tmp_path / "top.jsonl", s)
    out = read_out(tmp_path / "top.jsonl")
    assert [o["negative"] for o in out] == [elig[:2] for _, elig, _ in ref]
    check_mean_scores(stats, rows, score, out)
    check_common(rows, lines, out, pools_of(rows))
    assert any(sk for _, _, sk in ref)

    argv = ["mine", ",".join(files), str(tiny), str(tmp_path / "rand.jsonl"), "--range", "1-4", "--num", "2",
            "--margin", "0.02", "--batch-size", "3", "--seed", "3", "--device", "cpu"]  # fp32 like the reference
    assert cli.main(argv) == 0
    short = sum(len(elig) < 2 for _, elig, _ in ref)
    assert short > 0 and f"mine: {short} line(s) got fewer than --num 2" in capsys.readouterr().out
    index = build_index([str(tmp_path / "rand.jsonl")])  # data.train accepts the output
    assert len(index) == len(rows) and index.tasks == ["animals", "code"]
    rand = read_out(tmp_path / "rand.jsonl")
    check_common(rows, lines, rand, pools_of(rows))
    for o, (_, elig, _) in zip(rand, ref):
        assert len(o["negative"]) == min(2, len(elig)) and set(o["negative"]) <= set(elig)


@pytest.mark.parametrize("extra, message", [
    (["--range", "5-2"], "--range 5-2: need 1 <= A <= B"),
    (["--range", "0-3"], "--range 0-3: need 1 <= A <= B"),
    (["--num", "0"], "--num 0: need at least 1"),
    (["--margin", "0.1", "--relative-margin", "0.1"], "mutually exclusive"),
    (["--range", "7-9"], "task 'animals': 7 distinct candidate texts (6 besides a query's positive), fewer than "
                         "the range start 7"),
])
def test_bad_settings_are_named(data, tmp_path, capsys, extra, message):
    files, _, _ = data
    assert cli.main(["mine", ",".join(files), "tfidf", str(tmp_path / "o.jsonl")] + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_data_line_and_missing_model_are_named(data, tmp_path, capsys):
    files, _, _ = data
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q2"}\n')
    assert cli.main(["mine", f"{files[0]},{bad}", "tfidf", str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:2: missing field 'positive'" in capsys.readouterr().err
    assert cli.main(["mine", files[0], str(tmp_path / "no_model"), str(tmp_path / "o.jsonl")]) == 2
    assert "no_model' not found" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
