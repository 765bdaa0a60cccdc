"""Run summaries (`embedtrain info`) and exported model cards: every number they state equals what the run's
own files say (metrics.jsonl, the data files, best.json), recomputed here from those files."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedtrain.distributed import child_env
from embedtrain.export import export
from embedtrain.model_card import render_model_card, write_model_card
from embedtrain.run_summary import summarize
from embedtrain.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "quickstart" / "data" / "train.jsonl"
INSTRUCTION = "Retrieve the word"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "embedtrain", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    model = make_tiny_model("chatml", root / "model")
    (model / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# a tiny model\n")
    lines = open(DATA).readlines()
    (root / "a.jsonl").write_text("".join(lines[:40]) + "\n")  # a blank line: not an example
    (root / "b.jsonl").write_text("".join(lines[40:64]))
    held = [json.loads(line) for line in lines[1000:1040] if json.loads(line)["task"] == "wordnet_def2lemma"]
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    (root / "r.yaml").write_text(f"""
run: {{progress_bar: false, output_dir: {root / 'run'}, keep_best: true}}
model: {{path: {model}, family: chatml, pooling: mean}}
data: {{train: [{root / 'a.jsonl'}, {root / 'b.jsonl'}], max_length: 48, max_tokens_per_batch: 2048,
        instructions: {{wordnet_def2lemma: "{INSTRUCTION}"}}}}
train: {{batch_size: 8, steps: 3, lr: 2.0e-2}}
objective: {{infonce: {{matryoshka_dims: [16, 32]}}}}
eval: {{retrieval: {root / 'heldout.jsonl'}, every_steps: 2}}
""")
    proc = _cli("train", root / "r.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = export(root / "run", root / "exported")
    return root, out


def _metrics(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def _card_table(card: str, section: str) -> list[list[str]]:
    body = card.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("|")]


def test_card_states_the_runs_numbers(run):
    root, out = run
    card = (out / "README.md").read_text()
    rows = _metrics(root / "run")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == str(root / "model") and front["license"] == "apache-2.0"
    assert front["library_name"] == "sentence-transformers" and "embedtrain" in front["tags"]
    steps = re.search(r"- Steps: (\d+) of (\d+)", card).groups()
    assert (int(steps[0]), int(steps[1])) == (rows[-1]["step"], 3)
    tokens = re.search(r"- Tokens seen: ([\d,]+)", card).group(1)
    assert int(tokens.replace(",", "")) == sum(r["real_tokens"] for r in rows)
    data = {path.strip("`"): int(n) for path, n in _card_table(card, "Training")[2:]}
    count = {p: sum(1 for line in open(p) if line.strip()) for p in (root / "a.jsonl", root / "b.jsonl")}
    assert data == {str(p): n for p, n in count.items()} and list(count.values()) == [40, 24]
    # scores: the best logged MRR (best.json's step) and the last logged step, 4 decimals
    header, _, *table = _card_table(card, "Evaluation")
    evals = [r for r in rows if "eval_time_s" in r]
    best = max(evals, key=lambda r: r["eval/retrieval/mrr"])
    assert [r["step"] for r in evals] == [2, 3]
    assert json.loads((root / "run" / "best.json").read_text())["step"] == best["step"]
    col = {h.split(" (")[0]: i for i, h in enumerate(header)}
    for metric, *values in table:
        assert float(values[col["best"] - 1]) == round(best[f"eval/{metric}"], 4)
        assert float(values[col["last"] - 1]) == round(evals[-1][f"eval/{metric}"], 4)
    assert {m for m, *_ in table} == {"retrieval/recall@1", "retrieval/recall@10", "retrieval/mrr"}
    # usage: a prompt the export defines, no trust_remote_code for a causal export, the Matryoshka truncation
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert "prompt_name='wordnet_def2lemma'" in card and "wordnet_def2lemma" in prompts
    assert "trust_remote_code" not in card and "truncate_dim=16" in card
    assert f"instruction={INSTRUCTION!r}" in card


def test_info_json_equals_summarize(run):
    root, _ = run
    proc = _cli("info", root / "run", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    assert printed == summarize(root / "run")
    rows = _metrics(root / "run")
    assert printed["steps_done"] == rows[-1]["step"] and printed["steps_planned"] == 3
    assert printed["tokens_seen"] == sum(r["real_tokens"] for r in rows)
    assert printed["checkpoints"] == {"tags": ["step00000003"], "latest": "step00000003"} and printed["final"]
    assert printed["matryoshka_dims"] == [16, 32] and printed["objective"] == "infonce"
    text = _cli("info", root / "run")
    assert text.returncode == 0 and "steps: 3 of 3" in text.stdout


def test_info_bad_path_exits_2(tmp_path):
    proc = _cli("info", tmp_path / "nothing")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and str(tmp_path / "nothing") in proc.stderr
    with pytest.raises(FileNotFoundError, match="expected a run directory"):
        summarize(tmp_path)


def test_summary_of_other_folders(run, tmp_path):
    root, out = run
    step = summarize(root / "run" / "checkpoints" / "step00000003")
    assert step["weights_step"] == 3 and step["run_dir"] == str(root / "run")
    exported = summarize(out)
    assert exported["kind"] == "export" and "steps_done" not in exported and exported["matryoshka_dims"] == [16, 32]
    # without best.json the best step is the logged step with the highest eval.retrieval MRR
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(root / "run" / name, copy / name)
    best = json.loads((root / "run" / "best.json").read_text())
    assert {k: summarize(copy)["evaluation"]["best"][k] for k in best} == best


def test_card_without_scores_or_licence(tmp_path):
    summary = {"base_model": str(tmp_path), "run_dir": str(tmp_path), "steps_done": 2, "steps_planned": 2}
    card = write_model_card(tmp_path, summary, {"attention": "bidirectional", "pooling": "mean"},
                            {"document": ""}).read_text()
    assert "no evaluation scores" in card and "licence is that of the base model" in card
    assert "license" not in yaml.safe_load(card.split("---\n")[1])
    assert "trust_remote_code=True" in card  # a bidirectional export loads embedtrain's module
    assert "trust_remote_code" not in render_model_card(summary, {}, None, "x", remote=False)


def test_matryoshka_sizes_and_truncation_carry_into_the_export(run, tmp_path):
    """The trained sizes reach the export's embedtrain.json; sentence-transformers' truncate_dim on the export
    equals embedtrain's encode(dim=); `embedtrain eval --dim` scores the truncated vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    import embedtrain
    from embedtrain.evaluation.mteb_encoder import evaluate_encoder, load_instructions, make_encoder, resolve_tasks
    from test_eval_suite_offline import _write_mini_suite

    root, out = run
    assert json.loads((out / "embedtrain.json").read_text())["matryoshka_dims"] == [16, 32]
    texts = ["a small domesticated carnivorous mammal", "sea", "the act of running quickly over a long distance"]
    ours = embedtrain.load(out)
    st = SentenceTransformer(str(out), device="cpu", truncate_dim=16)
    got = torch.nn.functional.normalize(st.encode(texts, convert_to_tensor=True), dim=-1)
    want = ours.encode(texts, dim=16)
    assert got.shape == want.shape == (3, 16) and (got * want).sum(-1).min() >= 0.9999
    full = ours.encode(texts)
    assert (want - torch.nn.functional.normalize(full[:, :16], dim=-1)).abs().max() <= 1e-6
    with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 64\]"):
        ours.encode(texts, dim=65)

    suite = tmp_path / "suite"
    _write_mini_suite(suite)
    proc = _cli("eval", out, "--suite", suite, "--tasks", "MiniRetrieval", "MiniSTS", "--dim", 16,
                "--output", tmp_path / "eval16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((tmp_path / "eval16" / "scores.json").read_text())

    def truncated(texts, instruction):  # the reference: the full vectors cut to 16 here, then normalised
        full = ours.encode(texts, instruction=instruction, normalize=False)
        return torch.nn.functional.normalize(full[:, :16], dim=-1)

    encoder = make_encoder(truncated, "reference", 16, load_instructions(None, str(suite)))
    ref = evaluate_encoder(encoder, resolve_tasks(["MiniRetrieval", "MiniSTS"], str(suite)), tmp_path / "ref", "ref")
    assert scores.keys() == ref.keys() and all(abs(scores[k] - ref[k]) <= 1e-6 for k in ref)
    bad = _cli("eval", out, "--suite", suite, "--tasks", "MiniSTS", "--dim", 65, "--output", tmp_path / "bad")
    assert bad.returncode == 2 and "--dim: dim must be an integer in [1, 64]" in bad.stderr
