"""Issue 5 tests 1-2: `embedtrain.load().encode` (packed) equals one text at a time and a stock HF
reference; `embedtrain export` folders loaded by sentence-transformers (and plain transformers) give
the in-library embeddings, for an EOS-pooled LoRA run, a mean-pooled run, a bidirectional run and a
compression run."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoModelForCausalLM

import embedtrain
from embedtrain.config.loader import load_recipe
from embedtrain.data.packing import TextTokenizer
from embedtrain.export import export
from embedtrain.families import FAMILIES
from embedtrain.generation import generate
from embedtrain.model.embedder import load_tokenizer
from embedtrain.tiny import make_tiny_model

from test_distributed import DATA, _env

INSTRUCTION = "Given a dictionary definition, retrieve the word it defines"
TEXTS = ["a small domesticated carnivorous mammal", "the act of running quickly over a long distance", "sea",
         "a word", "any of various large trees with broad leaves and a rounded crown " * 3]


CHATML_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _train(recipe, tmp, *sets):
    cmd = [sys.executable, "-m", "embedtrain", "train", str(recipe)] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = make_tiny_model("chatml", root / "model")
    # like every real ChatML model, a chat template: sentence-transformers >= 6 renders texts through it unless
    # the export says text only (its exported embeddings then differ from training's)
    tok = load_tokenizer(str(model))
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(str(model))
    data = root / "train.jsonl"
    data.write_text("".join(open(DATA).readlines()[:64]))
    (root / "r.yaml").write_text(f"""
run: {{progress_bar: false}}
model: {{path: {model}, family: chatml}}
data: {{train: [{data}], max_length: 160, max_tokens_per_batch: 2048,
        instructions: {{wordnet_def2lemma: "{INSTRUCTION}"}}}}
train: {{batch_size: 8, steps: 2, lr: 1.0e-2}}
""")
    _train(root / "r.yaml", root, "run.output_dir=lora", "model.pooling=last", "model.lora.enabled=true",
           "model.lora.r=4", "model.lora.alpha=8", "run.save_merged=true")
    _train(root / "r.yaml", root, "run.output_dir=mean", "model.pooling=mean")
    _train(root / "r.yaml", root, "run.output_dir=bidir", "model.attention=bidirectional", "model.pooling=mean")
    # a compression run on a generated folder (the tiny model answers, its own mean states as teacher)
    queries = root / "q.jsonl"
    queries.write_text("".join(f'{{"query": "{t}"}}\n' for t in TEXTS * 4))
    (root / "c.yaml").write_text(f"""
run: {{progress_bar: false, output_dir: {root / 'comp'}}}
model: {{path: {model}, family: chatml}}
data: {{train: [{root / 'gen'}], max_length: 48, max_tokens_per_batch: 512, instruction_format: "{{instruction}}"}}
train: {{objective: compression, batch_size: 4, steps: 2, lr: 1.0e-2}}
objective: {{compression: {{thought_tokens: 2, compression_tokens: 3, response_max_length: 16}}}}
teacher: {{path: {model}, kind: hf, pooling: mean}}
generate: {{queries: [{queries}], output_dir: {root / 'gen'}, max_new_tokens: 8, shard_size: 10}}
""")
    generate(load_recipe(root / "c.yaml")[0])
    _train(root / "c.yaml", root)
    return root, model


@pytest.mark.parametrize("name", ["lora", "mean", "comp"])
def test_packed_encode_equals_one_text_at_a_time(runs, name):
    root, _ = runs
    m = embedtrain.load(root / name)
    packed = m.encode(TEXTS, instruction=INSTRUCTION, batch_size=64)
    single = torch.stack([m.encode(t, instruction=INSTRUCTION) for t in TEXTS])
    assert packed.shape[0] == len(TEXTS) and (packed - single).abs().max() <= 1e-5


def test_encode_equals_stock_hf_reference(runs):
    """EOS pooling of the LoRA run = the merged weights run by a stock HF model, one text, eager attention."""
    root, model = runs
    merged = AutoModelForCausalLM.from_pretrained(str(model), attn_implementation="eager")
    from peft import PeftModel

    merged = PeftModel.from_pretrained(merged, str(root / "lora" / "final")).merge_and_unload()
    tok = load_tokenizer(str(model))
    # load() encodes up to the model's context (512), not the training data.max_length (160)
    ids = TextTokenizer(tok, FAMILIES["chatml"], 512, "Instruct: {instruction}\nQuery: ").encode(
        TEXTS, [INSTRUCTION] * len(TEXTS))
    with torch.no_grad():
        ref = torch.stack([merged.model(input_ids=torch.tensor(t.ids)[None]).last_hidden_state[0, -1] for t in ids])
    got = embedtrain.load(root / "lora").encode(TEXTS, instruction=INSTRUCTION)
    assert (got - F.normalize(ref, dim=-1)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["lora", "mean", "bidir", "comp"])
def test_export_loads_in_sentence_transformers(runs, name):
    """The export in sentence-transformers, and the export in embedtrain.load (what `embedtrain eval` of an
    exported folder runs), both equal the run's own embeddings."""
    root, _ = runs
    out = export(root / name, root / f"st_{name}")
    ours = embedtrain.load(root / name)
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=name in ("bidir", "comp"))
    ours_queries = ours.encode(TEXTS, instruction=INSTRUCTION)
    reloaded = embedtrain.load(out)
    assert (reloaded.encode(TEXTS, instruction=INSTRUCTION) - ours_queries).abs().max() <= 1e-5
    if name == "comp":
        queries = st.encode([t for t in TEXTS], convert_to_tensor=True)
        expected = ours.encode(TEXTS)
    else:
        queries = st.encode(TEXTS, prompt_name="wordnet_def2lemma", convert_to_tensor=True)
        expected = ours_queries
        docs = st.encode(TEXTS, convert_to_tensor=True)  # the default prompt: documents, no instruction
        ours_docs = ours.encode(TEXTS)
        assert (docs * ours_docs).sum(-1).min() >= 0.9999
        # the instruction really changes the vectors (a random tiny model's vectors are all alike)
        assert (docs - expected).abs().max() > 100 * (docs - ours_docs).abs().max() + 1e-3
    cos = (queries * expected).sum(-1)
    assert cos.min() >= 0.9999, cos
    # plain transformers loads the weights too
    base = AutoModel.from_pretrained(str(out))
    assert base.config.hidden_size == 64


def test_bidirectional_export_is_not_read_causally(runs):
    """The exported bidirectional folder read by the stock (causal) Transformer module gives other vectors:
    the export's equality with the run (above) rests on its padding-only mask, not on a causal read."""
    from embedtrain.st_modules import st_models

    root, _ = runs
    out = root / "st_bidir"
    if not out.is_dir():
        export(root / "bidir", out)
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert type(st[0]).__name__ == "BidirectionalTransformer"
    causal = SentenceTransformer(modules=[st_models.Transformer(str(out)), st[1], st[2]], device="cpu",
                                 prompts=st.prompts, default_prompt_name="document")
    a, b = st.encode(TEXTS, convert_to_tensor=True), causal.encode(TEXTS, convert_to_tensor=True)
    ours = embedtrain.load(root / "bidir").encode(TEXTS)
    # a random tiny model's vectors are all alike: compare with the export's own error, not an absolute
    assert (a - b).abs().max() > 100 * (a - ours).abs().max() + 1e-3


def test_eval_command_runs_mteb_offline_on_local_tasks(runs, tmp_path):
    """Test 3: `embedtrain eval` end to end, HF_HUB_OFFLINE=1, on local suite tasks; mteb's JSON + summary."""
    import json

    from test_eval_suite_offline import _write_mini_suite

    root, _ = runs
    suite = tmp_path / "suite"
    _write_mini_suite(suite)
    out = tmp_path / "eval"
    env = dict(_env(), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "embedtrain", "eval", str(root / "lora"), "--suite", str(suite), "--tasks",
           "MiniRetrieval", "MiniSTS", "MiniClassification", "--output", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"MiniRetrieval", "MiniSTS", "MiniClassification"}
    written = {p.stem: json.loads(p.read_text()) for p in out.rglob("Mini*.json")}  # mteb's own result files
    assert set(written) == set(scores)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert "| MiniSTS | STS | cosine_spearman |" in (out / "summary.md").read_text()
    bad = subprocess.run(cmd[:-2] + ["--tasks", "NoSuchTask", "--output", str(out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown task(s) NoSuchTask" in bad.stderr


def test_merged_lora_folder_loads_the_same(runs):
    root, _ = runs
    a = embedtrain.load(root / "lora").encode(TEXTS, instruction=INSTRUCTION)
    b = embedtrain.load(root / "lora" / "final_merged").encode(TEXTS, instruction=INSTRUCTION)
    assert (a - b).abs().max() <= 1e-5


def test_eval_says_plainly_when_mteb_data_is_unreachable(runs, tmp_path):
    root, _ = runs
    env = dict(_env(), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "embedtrain", "eval", str(root / "mean"), "--tasks", "STS12",
                           "--output", str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "mteb task STS12: its dataset is not on disk and the Hugging Face hub is unreachable" in proc.stderr


LONG = " ".join(f"item{i} is one of many long parts of this document" for i in range(8))  # ~400 tokens of the tiny test vocabulary


def test_inference_length_is_the_models_not_the_training_max_length(runs):
    """The runs trained with data.max_length 160; a ~400-token document must be encoded whole by load,
    encode and the exported folder (the tiny model's trained context is 512), and the flags cap it."""
    root, model = runs
    ours = embedtrain.load(root / "lora")
    assert ours.max_length == 512 and ours.meta["training_max_length"] == 160
    tok = load_tokenizer(str(model))
    full = TextTokenizer(tok, FAMILIES["chatml"], 512, "Instruct: {instruction}\nQuery: ").encode([LONG])[0]
    assert 300 < len(full.ids) < 512 and not full.truncated
    merged = AutoModelForCausalLM.from_pretrained(str(root / "lora" / "final_merged"), attn_implementation="eager")
    with torch.no_grad():
        ref = F.normalize(merged.model(input_ids=torch.tensor(full.ids)[None]).last_hidden_state[0, -1], dim=-1)
    got = ours.encode(LONG)
    assert (got - ref).abs().max() <= 1e-5
    cut = embedtrain.load(root / "lora", max_length=160).encode(LONG)
    assert (cut - ours.encode(LONG, max_length=160)).abs().max() <= 1e-6
    assert (cut - got).abs().max() > 1e-3  # truncation at 160 really changes the vector
    with pytest.raises(ValueError, match="exceeds the 512 tokens"):
        ours.encode(LONG, max_length=4096)
    for name, cap in (("mean", None), ("mean", 100)):
        out = export(root / name, root / f"st_len_{name}_{cap}", max_length=cap)
        st = SentenceTransformer(str(out), device="cpu")
        assert st.max_seq_length == (cap or 512)
        mine = embedtrain.load(root / name, max_length=cap).encode([LONG, TEXTS[0]])
        assert (st.encode([LONG, TEXTS[0]], convert_to_tensor=True) * mine).sum(-1).min() >= 0.9999
        assert embedtrain.load(out).max_length == (cap or 512)  # the exported folder keeps its length
