"""Issue 18: bench/peer_sentence_transformers.py end to end on a tiny model (both sides train at world size 1
and 2, cross-rank negatives on and off; both exports scored on a mini suite), and its checks catching sides
that disagree."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_distributed import DATA, _env
from test_eval_suite_offline import _write_mini_suite

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peer_sentence_transformers as peer  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from embedtrain.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("peer")
    model = make_tiny_model("chatml", root / "model")
    lines = open(DATA).readlines()[:200]
    # half the rows lose their negatives: tasks mixing rows with and without one are split for ST
    rows = [json.loads(x) for x in lines]
    for r in rows[::2]:
        del r["negative"]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "inst.json").write_text(json.dumps({"wordnet_def2lemma": "Retrieve the word",
                                                "wordnet_lemma2def": "Retrieve the definition"}))
    _write_mini_suite(root / "suite")
    out = root / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "peer_sentence_transformers.py"), "--data", str(root / "train.jsonl"),
           "--instructions", str(root / "inst.json"), "--model", str(model), "--steps", "3", "--batch-size", "8",
           "--warmup", "1", "--max-length", "96", "--repeats", "1", "--world-sizes", "1,2", "--gather", "on,off",
           "--suite", str(root / "suite"), "--tasks", "MiniRetrieval,MiniSTS", "--eval-max-length", "96",
           "--work-dir", str(root / "work"), "--out-dir", str(out)]
    env = dict(_env(), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "peer_sentence_transformers.json").read_text()), out


def test_both_sides_train_and_agree_on_step_one(bench):
    report, out = bench
    rows = report["rows"]
    assert {(r["world"], r["gather"], r["side"]) for r in rows} == {
        (w, g, s) for w, g in [(1, True), (2, True), (2, False)] for s in peer.SIDES}
    for r in rows:
        assert r["real_tok_s"] > 0 and r["examples_s"] > 0 and r["peak_rss_gib"] > 0
    checks = {c["check"]: c for c in report["checks"]}
    for where in ("world 1", "world 2, gather on", "world 2, gather off"):
        assert checks[f"first-step loss agrees ({where})"]["pass"] is True, checks
        assert checks[f"same real tokens every step ({where})"]["pass"] is True, checks
    for where in ("world 1", "world 2, gather on", "world 2, gather off"):
        assert checks[f"same initial LoRA weights, every run and rank ({where})"]["pass"] is True, checks
    runs = {(r["world"], r["gather"], r["side"]): r for r in report["runs"]}
    # same weights, batches and loss: every step's loss agrees (step 1 would agree even from other LoRA
    # matrices, lora_B starting at zero; a gradient scaled or clipped differently shows from step 2 on)
    for world, gather in [(1, True), (2, True), (2, False)]:
        et, st = runs[(world, gather, "embedtrain")]["losses"], runs[(world, gather, "sentence-transformers")]["losses"]
        assert len(et) == 3 and et == pytest.approx(st, rel=1e-4), (world, gather, et, st)
    # the same batch is a different loss without cross-rank negatives: the gather setting really reached both sides
    for side in peer.SIDES:
        assert runs[(2, True, side)]["first_loss"] != pytest.approx(runs[(2, False, side)]["first_loss"], abs=1e-3)
    assert (out / "table.md").read_text().startswith("# embedtrain vs sentence-transformers")


def test_both_exports_scored_on_the_suite(bench):
    report, _ = bench
    for r in report["rows"]:
        assert set(r["suite"]) == {"MiniRetrieval", "MiniSTS", "mean"}
        assert all(0.0 <= v <= 1.0 for v in r["suite"].values())


def _run(side, first_loss, tokens, tok_s=100.0, losses=None, repeat=0, init="A"):
    return {"name": f"{side}_r{repeat}", "side": side, "world": 1, "gather": True, "repeat": repeat,
            "real_tok_s": tok_s, "examples_s": 1.0, "step_s": 1.0, "efficiency": 1.0, "peak_rss_gib": 1.0,
            "peak_rss_gib_sum": 1.0, "first_loss": first_loss, "losses": losses or [first_loss],
            "real_tokens": tokens, "init_lora": [init], "export": None}


def test_checks_fail_when_the_sides_compute_different_things():
    args = peer.parse_args(["--world-sizes", "1", "--lora-dropout", "0"])
    _, checks = peer.aggregate(args, [_run("embedtrain", 2.0, [10, 12], 160.0),
                                      _run("sentence-transformers", 2.0, [10, 12])], {})
    assert [c["pass"] for c in checks] == [True, True, True, None]  # the last: the loss-curve gap, measured
    _, checks = peer.aggregate(args, [_run("embedtrain", 2.0, [10, 12], 160.0, init="A"),
                                      _run("sentence-transformers", 2.0, [10, 12], init="B")], {}, lora_init="A")
    assert [c["pass"] for c in checks] == [True, False, True, True, None]  # ST started from other LoRA weights
    _, checks = peer.aggregate(args, [_run("embedtrain", 2.01, [10, 12]),
                                      _run("sentence-transformers", 2.0, [10, 13])], {})
    assert [c["pass"] for c in checks] == [False, False, False, None]


def _suite(mean):
    return {"A": mean - 0.01, "B": mean + 0.01, "mean": mean}


def test_drift_compares_the_gap_between_sides_with_each_sides_reruns():
    args = peer.parse_args(["--world-sizes", "1", "--lora-dropout", "0", "--eval-repeats", "all"])
    runs = [_run("embedtrain", 2.0, [10, 12], 160.0, [2.0, 1.5], 0), _run("embedtrain", 2.0, [10, 12], 160.0,
                                                                          [2.0, 1.5], 1),
            _run("sentence-transformers", 2.0, [10, 12], 100.0, [2.0, 1.52], 0),
            _run("sentence-transformers", 2.0, [10, 12], 100.0, [2.0, 1.49], 1)]
    noisy = {"embedtrain_r0": _suite(0.42), "embedtrain_r1": _suite(0.42),
             "sentence-transformers_r0": _suite(0.43), "sentence-transformers_r1": _suite(0.405)}
    rows, checks = peer.aggregate(args, runs, noisy)
    st_row = [r for r in rows if r["side"] == "sentence-transformers"][0]
    assert st_row["suite_mean_each"] == [0.43, 0.405] and st_row["suite"]["mean"] == pytest.approx(0.4175)
    assert st_row["suite"]["A"] == pytest.approx(0.4075)
    by = {c["check"].split(" (")[0]: c for c in checks}
    assert by["loss curves, largest per-step gap"]["value"] == \
        "embedtrain vs ST 2.00e-02 (step 2); ST repeats 3.00e-02; embedtrain repeats 0.00e+00"
    assert by["embedtrain suite mean >= ST's"]["pass"] is True
    assert by["suite gap within the sides' run-to-run range"]["pass"] is True  # |+0.0025| <= 0.025
    # ST reruns that agree with each other but not with embedtrain: the gap is outside the range
    steady = dict(noisy, **{"sentence-transformers_r0": _suite(0.43), "sentence-transformers_r1": _suite(0.429)})
    _, checks = peer.aggregate(args, runs, steady)
    by = {c["check"].split(" (")[0]: c for c in checks}
    assert by["embedtrain suite mean >= ST's"]["pass"] is False
    assert by["suite gap within the sides' run-to-run range"]["pass"] is False
