"""Issue 4 test 4: `embedtrain generate` restarted after a crash (and split over ranks) produces exactly
the uninterrupted output, no row missing or doubled, and row i of the teacher matrix embeds row i's
response. Plus prompts from a real chat template, teacher kinds, and input errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from embedtrain.config.loader import load_recipe
from embedtrain.data.jsonl import DataError, build_index
from embedtrain.families import FAMILIES
from embedtrain.generation import PromptBuilder, generate
from embedtrain.model.embedder import load_tokenizer
from embedtrain.model.teacher import Teacher
from embedtrain.tiny import make_tiny_model

from test_distributed import DATA

ROWS, SHARD = 22, 5  # 5 shards, the last one short


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    model = make_tiny_model("chatml", root / "model")
    with open(DATA) as f:
        queries = [json.loads(next(f))["query"] for _ in range(ROWS)]
    (root / "q.jsonl").write_text("".join(json.dumps({"query": q, "task": "wn"}) + "\n" for q in queries))
    return root, model


def _cfg(root, model, out, *sets):
    recipe = root / "gen.yaml"
    recipe.write_text(f"""
run: {{seed: 3, progress_bar: false}}
model: {{path: {model}, family: chatml}}
data: {{train: [{out}]}}
teacher: {{path: {model}, kind: hf, pooling: mean}}
generate: {{queries: [{root / 'q.jsonl'}], output_dir: {out}, max_new_tokens: 10, shard_size: {SHARD}, batch_size: 3,
            do_sample: true, temperature: 0.9, top_p: 0.95, max_prompt_length: 60}}
""")
    return load_recipe(recipe, list(sets))[0]


def _read(out):
    rows, vecs = [], []
    for k in range(5):
        rows += [json.loads(line) for line in open(out / f"shard-{k:05d}.jsonl")]
        vecs.append(load_file(str(out / f"shard-{k:05d}.safetensors"))["teacher"])
    return rows, torch.cat(vecs)


def test_restart_and_ranks_reproduce_uninterrupted_output(tiny, monkeypatch):
    root, model = tiny
    straight = root / "straight"
    assert generate(_cfg(root, model, straight))["complete"]
    rows, vecs = _read(straight)
    queries = [json.loads(line)["query"] for line in open(root / "q.jsonl")]
    assert [r["query"] for r in rows] == queries and vecs.shape == (ROWS, 64)  # each row once, in order
    assert len({r["response"] for r in rows}) > ROWS // 2  # sampled, varied answers

    # Crash after two shards, leaving a half-written third one (tensors without JSONL, a temp file).
    crashed = root / "crashed"
    assert generate(_cfg(root, model, crashed), max_shards=2) == {"done": 2, "complete": False}
    with pytest.raises(DataError, match="no manifest.json"):
        build_index([str(crashed)])  # an unfinished folder cannot be trained on
    shutil.copy(straight / "shard-00003.safetensors", crashed / "shard-00002.safetensors")
    (crashed / ".shard-00002.jsonl.tmp999").write_text('{"query": "half')
    assert generate(_cfg(root, model, crashed)) == {"done": 3, "complete": True}
    # Two ranks, each its own shards; rank 1 happens to run first.
    split = root / "split"
    for r in (1, 0):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", "2")
        generate(_cfg(root, model, split))
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    for other in (crashed, split):
        rows2, vecs2 = _read(other)
        assert rows2 == rows and torch.equal(vecs2, vecs)
        assert json.loads((other / "manifest.json").read_text())["rows"] == ROWS

    # Row alignment: row i's vector is the teacher's embedding of row i's response.
    cfg = _cfg(root, model, straight)
    again = Teacher(cfg.teacher, torch.device("cpu")).encode([r["response"] for r in rows])
    assert (again - vecs).abs().max() <= 1e-5
    index = build_index([str(straight)])
    assert len(index) == ROWS and index.teacher_dim == 64 and index.tasks == ["wn"]
    ex = index.read(13)
    assert ex.positive == rows[13]["response"] and torch.equal(ex.target, vecs[13])
    # Other settings on an existing folder are refused, not mixed in.
    with pytest.raises(DataError, match="max_new_tokens"):
        generate(_cfg(root, model, straight, "generate.max_new_tokens=11"))


def test_prompt_uses_the_tokenizers_chat_template_and_cuts_only_the_query(tiny):
    _, model = tiny
    tok = load_tokenizer(str(model))
    fam = FAMILIES["chatml"]
    plain = PromptBuilder(tok, fam, 40)  # no chat template: the family's
    text = tok.decode(plain.build("hi")[0])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.chat_template = "<|im_start|>system\nBe brief.<|im_end|>\n" + tok.chat_template
    own = PromptBuilder(tok, fam, 60)
    ids, cut = own.build("x" * 100)
    assert cut and len(ids) == 60
    assert tok.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nxxx")
    assert tok.decode(ids).endswith("xx<|im_end|>\n<|im_start|>assistant\n")


def test_sentence_transformers_teacher_equals_hf_mean_pooling(tmp_path):
    """A sentence-transformers folder runs through sentence-transformers; the same encoder as a plain HF
    folder with mean pooling gives the same vectors."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from embedtrain.config.schema import TeacherConfig
    from embedtrain.st_modules import st_models as models

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path / "hf"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(str(tmp_path / "hf"))
    st = SentenceTransformer(modules=[models.Transformer(str(tmp_path / "hf")), models.Pooling(32, "mean")])
    st.save(str(tmp_path / "st"))
    texts = ["a cat", "the dog sat on a mat", ""]
    via_st = Teacher(TeacherConfig(path=str(tmp_path / "st")), torch.device("cpu"))
    via_hf = Teacher(TeacherConfig(path=str(tmp_path / "hf"), pooling="mean"), torch.device("cpu"))
    assert via_st.kind == "sentence_transformers" and via_hf.kind == "hf"
    assert (via_st.encode(texts) - via_hf.encode(texts)).abs().max() <= 1e-5
    cls = Teacher(TeacherConfig(path=str(tmp_path / "hf"), pooling="cls"), torch.device("cpu")).encode(texts)
    assert (cls - via_hf.encode(texts)).abs().max() > 1e-3


def test_decoder_teacher_reads_bidirectionally(tmp_path):
    """A decoder LLM as an hf teacher (LLM2Vec style): padded batches equal each text alone through stock HF
    with a full 4D mask (every token sees every token), mean-pooled; teacher.attention: causal equals the
    plain causal model, and the two differ."""
    from transformers import AutoModel, AutoTokenizer

    from embedtrain.config.schema import TeacherConfig
    from embedtrain.tiny import make_tiny_model

    path = make_tiny_model("llama3", tmp_path / "llm")
    texts = ["a cat", "the dog sat on the mat by the door", "x"]
    tok, ref = AutoTokenizer.from_pretrained(str(path)), AutoModel.from_pretrained(str(path)).eval()

    def alone(text, bidirectional):
        ids = tok(text, return_tensors="pt")["input_ids"]
        mask = torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool) if bidirectional else None
        with torch.no_grad():
            return ref(input_ids=ids, attention_mask=mask).last_hidden_state[0].mean(0)

    bi = Teacher(TeacherConfig(path=str(path), pooling="mean"), torch.device("cpu"))
    causal = Teacher(TeacherConfig(path=str(path), pooling="mean", attention="causal"), torch.device("cpu"))
    assert bi.bidirectional and not causal.bidirectional
    got_bi, got_causal = bi.encode(texts), causal.encode(texts)
    assert (got_bi - torch.stack([alone(t, True) for t in texts])).abs().max() <= 1e-5
    assert (got_causal - torch.stack([alone(t, False) for t in texts])).abs().max() <= 1e-5
    assert (got_bi - got_causal).abs().max() > 1e-3


def test_bad_query_line_names_file_and_line(tiny, tmp_path):
    root, model = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "fine"}\n\n{"question": "wrong key"}\n')
    cfg = _cfg(root, model, tmp_path / "out", f"generate.queries=[{bad}]")
    with pytest.raises(DataError, match=rf"{bad}:3: unknown field\(s\) \['question'\]"):
        generate(cfg)
