"""Evaluation during training (eval.every_steps) and run.keep_best: the logged scores equal a reference computed
from the step's checkpoint weights, evaluating leaves the training losses as they were, and best/ holds the
weights of the best logged step."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import embedtrain
from embedtrain.config.loader import RecipeError, load_recipe
from embedtrain.data.jsonl import build_index
from embedtrain.evaluation import suite_build as sb
from embedtrain.tiny import make_tiny_model

from test_distributed import DATA, _env

INSTRUCTION = "Retrieve the word"


def _mini_suite(root, pairs):
    """One retrieval task in the offline-suite format: query i's relevant document is d{i}."""
    splits = {"test": {"corpus": [{"id": f"d{i}", "text": p} for i, (_, p) in enumerate(pairs)],
                       "queries": [{"id": f"q{i}", "text": q} for i, (q, _) in enumerate(pairs)],
                       "qrels": [{"query-id": f"q{i}", "corpus-id": f"d{i}", "score": 1} for i in range(len(pairs))]}}
    entry = sb.write_task_files(root, "MiniRetrieval", "retrieval", splits, instruction=INSTRUCTION,
                                description="held-out WordNet pairs", source="wordnet")
    sb.write_manifest(root, [entry], sources={"wordnet": {"licence": "WordNet 3.0 licence"}})


def _train(recipe, cwd, *sets):
    cmd = [sys.executable, "-m", "embedtrain", "train", str(recipe)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaltrain")
    model = make_tiny_model("chatml", root / "model")
    lines = open(DATA).readlines()
    (root / "train.jsonl").write_text("".join(lines[:64]))
    held = [json.loads(line) for line in lines[1000:1040] if json.loads(line)["task"] == "wordnet_def2lemma"]
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    _mini_suite(root / "suite", [(r["query"], r["positive"]) for r in held])
    (root / "r.yaml").write_text(f"""
run: {{progress_bar: false, log_every: 1, checkpoint_every: 2, keep_checkpoints: 0}}
model: {{path: {model}, family: chatml, pooling: mean}}
data: {{train: [{root / 'train.jsonl'}], max_length: 48, max_tokens_per_batch: 2048,
        instructions: {{wordnet_def2lemma: "{INSTRUCTION}"}}}}
train: {{batch_size: 8, steps: 6, lr: 2.0e-2, warmup_steps: 0}}
eval: {{retrieval: {root / 'heldout.jsonl'}}}
""")
    with_eval = ("run.output_dir=evaluated", "eval.every_steps=2", "eval.tasks=[MiniRetrieval]",
                 f"eval.suite={root / 'suite'}", "run.keep_best=true")
    proc = _train(root / "r.yaml", root, *with_eval)
    _train(root / "r.yaml", root, "run.output_dir=plain")
    return root, proc


def _rows(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def test_evaluation_does_not_change_training(setup):
    root, _ = setup
    evaluated, plain = _rows(root / "evaluated"), _rows(root / "plain")
    assert [r["loss"] for r in evaluated] == [r["loss"] for r in plain]
    assert [r["step"] for r in evaluated if "eval_time_s" in r] == [2, 4, 6]
    assert not any(k.startswith("eval") for r in plain for k in r)
    # the last step's held-out scores are eval.json's "after" (not encoded again), equal to the plain run's
    after = json.loads((root / "evaluated" / "eval.json").read_text())["after"]
    assert after == pytest.approx(json.loads((root / "plain" / "eval.json").read_text())["after"], abs=1e-6)
    assert "after training" not in setup[1].stderr + setup[1].stdout
    for r in evaluated:
        if "eval_time_s" in r:
            assert r["eval_time_s"] > 0 and {"eval/retrieval/mrr", "eval/retrieval/recall@1",
                                              "eval/suite/MiniRetrieval", "eval/suite/mean"} <= set(r)
            # the evaluation's time is not the step's: tokens/s comes from the step alone
            assert r["tokens_per_s"] == pytest.approx(r["real_tokens"] / r["step_time_s"], rel=1e-6)


def test_logged_scores_equal_a_reference_from_the_checkpoint(setup):
    """Retrieval at the training max_length from checkpoints/stepN/weights, ranked by hand; the suite task
    through `embedtrain eval`'s own path (embedtrain.load at the model's context, mteb)."""
    from embedtrain.evaluation.mteb_run import run_eval

    root, _ = setup
    idx = build_index([str(root / "heldout.jsonl")])
    ex = [idx.read(i) for i in range(len(idx))]
    for r in _rows(root / "evaluated"):
        if "eval_time_s" not in r:
            continue
        weights = root / "evaluated" / "checkpoints" / f"step{r['step']:08d}"
        emb = embedtrain.load(weights, device="cpu", max_length=48)
        q = torch.as_tensor(emb.encode([e.query for e in ex], instruction=INSTRUCTION))
        d = torch.as_tensor(emb.encode([e.positive for e in ex]))
        sims = q @ d.T
        ranks = torch.tensor([1 + sum(float(s) > float(sims[i, i]) for s in sims[i]) for i in range(len(ex))])
        assert r["eval/retrieval/mrr"] == pytest.approx(float((1.0 / ranks).mean()), abs=1e-4)
        assert r["eval/retrieval/recall@1"] == pytest.approx(float((ranks == 1).float().mean()), abs=1e-4)
        scores = run_eval(str(weights), ["MiniRetrieval"], str(root / f"ref{r['step']}"), suite_dir=str(root / "suite"),
                          device="cpu")
        assert r["eval/suite/MiniRetrieval"] == pytest.approx(scores["MiniRetrieval"], abs=1e-3)


def test_best_holds_the_weights_of_the_best_logged_step(setup):
    root, proc = setup
    run = root / "evaluated"
    logged = {r["step"]: r["eval/retrieval/mrr"] for r in _rows(run) if "eval_time_s" in r}
    top = max(logged.values())
    best_step = min(s for s, v in logged.items() if v == top)  # a later tie does not replace the kept one
    best = json.loads((run / "best.json").read_text())
    assert best["step"] == best_step and best["metric"] == "retrieval/mrr" and best["value"] == top
    kept = load_file(str(run / "best" / "model.safetensors"))
    ref = load_file(str(run / "checkpoints" / f"step{best_step:08d}" / "weights" / "model.safetensors"))
    assert kept.keys() == ref.keys() and all(torch.equal(kept[k], ref[k]) for k in ref)
    others = [s for s in logged if s != best_step]
    other = load_file(str(run / "checkpoints" / f"step{others[0]:08d}" / "weights" / "model.safetensors"))
    assert any(not torch.equal(kept[k], other[k]) for k in ref)  # the steps' weights differ: the check can fail
    assert f"at step {best_step}: weights in" in proc.stdout
    assert embedtrain.load(run / "best", device="cpu").meta["pooling"] == "mean"


@pytest.mark.parametrize("sets, message", [
    (["run.keep_best=true"], "run.keep_best: needs evaluations to compare: set eval.every_steps"),
    (["eval.every_steps=2", "eval.retrieval=null"], "eval.every_steps: has nothing to score"),
    (["eval.every_steps=2", "eval.tasks=[MiniRetrieval]"], "eval.tasks: needs eval.suite"),
    (["eval.every_steps=2", "eval.best_metric=suite/mean"], "'suite/mean' is not a score this recipe's evaluation"),
])
def test_bad_eval_settings_are_named(setup, sets, message):
    root, _ = setup
    sets = [s.replace("SUITE", str(root / "suite")) for s in sets]
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(str(root / "r.yaml"), sets)


def test_suite_tasks_are_checked_with_the_data_before_a_model_loads(setup, tmp_path, capsys):
    """A recipe may name a suite folder that is built later (shipped recipes do): load_recipe accepts it,
    `embedtrain check` and training refuse a missing folder or an unknown task, naming the key."""
    from embedtrain import cli

    root, _ = setup
    base = ["eval.every_steps=2", "eval.tasks=[MiniRetrieval]"]
    load_recipe(str(root / "r.yaml"), base + [f"eval.suite={tmp_path / 'later'}"])
    for extra, message in (([f"eval.suite={tmp_path / 'later'}"], "eval.suite: " + str(tmp_path / "later") +
                            ": no suite.json (build it with: embedtrain build-eval-suite"),
                           ([f"eval.suite={root / 'suite'}", "eval.tasks=[Nope]"], "eval.tasks: not in")):
        sets = [a for s in base + extra for a in ("--set", s)]
        assert cli.main(["check", str(root / "r.yaml"), *sets]) == 2
        assert message in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "embedtrain", "train", str(root / "r.yaml"), "--set",
                           "run.output_dir=missing", *[a for s in base for a in ("--set", s)], "--set",
                           f"eval.suite={tmp_path / 'later'}"], env=_env(), capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 2 and "error: " in proc.stderr and "no suite.json" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Traceback" not in proc.stderr
