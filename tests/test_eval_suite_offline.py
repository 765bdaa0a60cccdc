"""The offline evaluation suite with no network: hand-written miniature tasks of every type go through the same
writer as the real build (suite_build.write_task_files), load with suite_tasks and run in mteb.evaluate with a
bag-of-characters encoder, whose scores on these data are known exactly. The source parsers run on a few
hand-written lines in each source's format."""
import gzip
import json
import math

import numpy as np
import pytest

from embedtrain.evaluation import suite_build as sb

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _docs(*texts, prefix="d"):
    return [{"id": f"{prefix}{i}", "text": t} for i, t in enumerate(texts)]


def _write_mini_suite(root):
    """One task per type; a query equals its document, and labels differ in their letters, so a
    bag-of-characters encoder is perfect on every task but STS, whose scores follow its cosine order."""
    corpus = _docs("apple pie", "banana split", "cherry tart", "zucchini bread")
    queries = _docs("banana split", "zucchini bread", prefix="q")
    qrels = [{"query-id": "q0", "corpus-id": "d1", "score": 1}, {"query-id": "q1", "corpus-id": "d3", "score": 1}]
    top_ranked = [{"query-id": "q0", "corpus-ids": ["d0", "d1", "d2"]}, {"query-id": "q1", "corpus-ids": ["d2", "d3"]}]
    sts = [("aaaa", "aaaa", 1.0), ("aaaa", "aaab", 0.8), ("aaaa", "aabb", 0.5), ("aaaa", "bbbb", 0.0)]
    xy = lambda letter, n: [{"text": letter * 6, "label": f"only-{letter}", "key": f"{letter}{i}"} for i in range(n)]
    specs = {
        "MiniRetrieval": ("retrieval", {"test": {"corpus": corpus, "queries": queries, "qrels": qrels}}),
        "MiniReranking": ("reranking", {"test": {"corpus": corpus, "queries": queries, "qrels": qrels,
                                                 "top_ranked": top_ranked}}),
        "MiniSTS": ("sts", {"test": {"pairs": [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in sts]}}),
        "MiniClassification": ("classification", {"train": {"examples": xy("x", 3) + xy("y", 3)},
                                                  "test": {"examples": xy("x", 5)[3:] + xy("y", 5)[3:]}}),
        "MiniClustering": ("clustering", {"test": {"examples": xy("x", 4) + xy("y", 4) + xy("q", 4)}}),
    }
    entries = [sb.write_task_files(root, name, kind, splits, instruction=f"Do the {kind} task",
                                   description=f"A miniature {kind} task.", source="hand")
               for name, (kind, splits) in specs.items()]
    sources = {"hand": {"title": "hand-written lines", "license": "cc0-1.0", "reference": "https://example.org/"}}
    return sb.write_manifest(root, entries, sources=sources, seed=0)


def _bag_of_chars_encoder():
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta

    class BagOfChars(AbsEncoder):
        def __init__(self):
            self.n_encoded = 0
            self.mteb_model_meta = ModelMeta(
                loader=None, name="embedtrain-test/bag-of-chars", revision="1", release_date=None,
                languages=["eng-Latn"], n_parameters=0, memory_usage_mb=None, max_tokens=None, embed_dim=27,
                license=None, open_weights=False, public_training_code=None, public_training_data=None,
                similarity_fn_name="cosine", framework=["NumPy"], reference=None, use_instructions=False,
                training_datasets=None, model_type=["dense"])

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            self.n_encoded += len(texts)
            # the constant last column keeps every vector non-zero
            return np.array([[t.count(c) for c in LETTERS] + [1e-3] for t in texts], dtype=np.float32)

    return BagOfChars()


def test_mini_suite_loads_and_scores_every_task_type(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    mteb = pytest.importorskip("mteb")
    from embedtrain.evaluation.suite_tasks import suite_tasks

    manifest = _write_mini_suite(tmp_path)
    assert json.loads((tmp_path / "suite.json").read_text())["instructions"]["MiniSTS"] == "Do the sts task"
    assert manifest["tasks"]["MiniClassification"]["splits"] == {"test": {"examples": 4}, "train": {"examples": 6}}

    tasks = suite_tasks(str(tmp_path))
    assert [t.metadata.type for t in tasks] == ["Retrieval", "Reranking", "STS", "Classification", "Clustering"]
    assert tasks[0].metadata.prompt == {"query": "Do the retrieval task"}
    assert all(t.metadata.eval_langs == ["eng-Latn"] and t.metadata.eval_splits == ["test"] for t in tasks)

    encoder = _bag_of_chars_encoder()
    result = mteb.evaluate(encoder, tasks, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 4})
    assert not result.exceptions
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}
    expected = {"MiniRetrieval": ("ndcg_at_10", 1.0), "MiniReranking": ("map_at_1000", 1.0),
                "MiniSTS": ("cosine_spearman", 1.0), "MiniClassification": ("accuracy", 1.0),
                "MiniClustering": ("v_measure", 1.0)}
    for name, (main_score, value) in expected.items():
        assert scores[name]["main_score"] == pytest.approx(scores[name][main_score])
        assert math.isclose(scores[name]["main_score"], value, abs_tol=1e-6), (name, scores[name]["main_score"])
    # STS encodes each distinct text once: "aaaa" and three partners
    n_before = encoder.n_encoded
    mteb.evaluate(encoder, suite_tasks(str(tmp_path), ["MiniSTS"]), cache=None, show_progress_bar=False)
    assert encoder.n_encoded - n_before == 4


@pytest.mark.parametrize("kind", ["default", "compression"])
def test_instruction_policy_per_task_type(tmp_path, monkeypatch, kind):
    """Which instruction each mteb call hands the model: the task's own for queries and symmetric texts and
    none for documents; for a compression run, METHODS.md section 3's generation requests instead
    (passage for retrieval/reranking queries, summary for documents, the STS request elsewhere)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mteb = pytest.importorskip("mteb")
    from embedtrain.evaluation.mteb_run import GENERATION_REQUESTS, generation_request, make_encoder
    from embedtrain.evaluation.suite_tasks import suite_tasks

    _write_mini_suite(tmp_path)
    seen = []

    def encode_fn(texts, instruction):
        seen.append(instruction)
        return np.array([[t.count(c) for c in LETTERS] + [1e-3] for t in texts], dtype=np.float32)

    instructions = json.loads((tmp_path / "suite.json").read_text())["instructions"]
    policy = generation_request if kind == "compression" else None
    encoder = make_encoder(encode_fn, "probe", 27, dict(instructions), policy=policy)
    passage, summary, similar = (GENERATION_REQUESTS[k] for k in ("query", "document", "symmetric"))
    for task in suite_tasks(str(tmp_path)):
        seen.clear()
        result = mteb.evaluate(encoder, task, cache=None, show_progress_bar=False)
        assert not result.exceptions
        own = instructions[task.metadata.name]
        if kind == "default":
            expect = {own, None} if task.metadata.type in ("Retrieval", "Reranking") else {own}
        else:
            expect = {passage, summary} if task.metadata.type in ("Retrieval", "Reranking") else {similar}
        assert set(seen) == expect, (task.metadata.name, seen)


def test_writer_rejects_broken_tasks(tmp_path):
    ok = {"examples": [{"text": "a", "label": "x", "key": "k1"}, {"text": "b", "label": "y", "key": "k2"}]}
    leak = {"examples": [{"text": "c", "label": "x", "key": "k1"}, {"text": "d", "label": "y", "key": "k3"}]}
    with pytest.raises(ValueError, match="share source items"):
        sb.write_task_files(tmp_path, "T", "classification", {"train": ok, "test": leak}, instruction="i",
                            description="d", source="s")
    with pytest.raises(ValueError, match="train split"):
        sb.write_task_files(tmp_path, "T", "classification", {"test": ok}, instruction="i", description="d", source="s")
    bad_qrels = {"corpus": _docs("a"), "queries": _docs("b", prefix="q"),
                 "qrels": [{"query-id": "q0", "corpus-id": "nope", "score": 1}]}
    with pytest.raises(ValueError, match="unknown query or document"):
        sb.write_task_files(tmp_path, "T", "retrieval", {"test": bad_qrels}, instruction="i", description="d",
                            source="s")
    (tmp_path / "notes.txt").write_text("not a suite")
    with pytest.raises(sb.SourceError, match="not a suite folder"):
        sb.build_suite(str(tmp_path), verbose=False)


def _dictd(folder, name, entries):
    """A dictd database in its real layout: base64 offsets into gzip data."""
    def b64(n):
        digits = ""
        while True:
            digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[n % 64] + digits
            n //= 64
            if not n:
                return digits
    data, index = b"", []
    for words, text in entries:
        raw = text.encode()
        index += [f"{word}\t{b64(len(data))}\t{b64(len(raw))}\n" for word in words]
        data += raw
    (folder / f"{name}.index").write_text("".join(index))
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))


def test_source_parsers_on_hand_written_lines(tmp_path):
    foldoc = ("Dialled Number Identification Service\nDNIS\n\n   <communications> (DNIS) A service that tells the "
              "recipient of a\n   telephone call the {telephone number} dialled.\n   {(http://example.org/)}.\n\n"
              "   [\"A citation\", 1999].\n\n   (2003-01-02)\n\n")
    gcide = ("Retreat \\Re*treat\"\\, v. i. [imp. & p. p. {Retreated}; p. pr. &\n   vb. n. {Retreating}.]\n   To "
             "withdraw from any position or place; as, the army\n   fell back. --Milton.\n   [1913 Webster]\n\n")
    _dictd(tmp_path, "foldoc", [(["dnis", "dialled number identification service"], foldoc)])
    [(words, text)] = sb.read_dictd(tmp_path, "foldoc")
    assert words == ["dnis", "dialled number identification service"]
    title, tags, body = sb._foldoc_entry(text)
    assert (title, tags) == ("Dialled Number Identification Service", ["communications"])
    assert body == "A service that tells the recipient of a telephone call the telephone number dialled."
    assert sb._gcide_sense("Retreat", gcide) == "To withdraw from any position or place; as, the army fell back."
    assert sb._gcide_sense("Retreating", gcide) is None  # an inflection pointing at another headword's entry
    (tmp_path / "gcide.index").write_text("broken line without tabs\n")
    (tmp_path / "gcide.dict.dz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(sb.SourceError, match=r"gcide.index:1"):
        sb.read_dictd(tmp_path, "gcide")

    wn = tmp_path / "wordnet"
    wn.mkdir()
    (wn / "data.noun").write_text(
        "  1 This software and database is being provided to you\n"
        "02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a member of the genus Canis; \"the dog "
        "barked\"\n")
    (wn / "data.verb").write_text("01835496 38 v 01 travel 0 001 @i 01831531 v 0000 01 + 02 00 | change location\n")
    (wn / "data.adj").write_text("00001740 00 a 01 able(a) 0 000 | having the means to do something\n")
    syn = sb.read_wordnet(wn)
    assert syn[("n", "02084071")] == {"lex": 5, "words": ["dog", "domestic dog"], "hyper": [("n", "02083346")],
                                      "definition": "a member of the genus Canis"}
    assert syn[("v", "01835496")]["hyper"] == [("v", "01831531")] and syn[("a", "00001740")]["words"] == ["able"]

    (tmp_path / "Packages").write_text(
        "Package: foo-tools\nSource: foo (1.2-1)\nSection: contrib/games\nDescription: play foo\n"
        "Description-md5: abc\n\nPackage: bar\nSection: net\nDescription: bar\nDescription-md5: def\n")
    (tmp_path / "Translation-en").write_text(
        "Package: foo-tools\nDescription-md5: abc\nDescription-en: play foo\n Foo is a game.\n .\n It has levels.\n")
    foo, bar = sb.read_debian(tmp_path / "Packages", tmp_path / "Translation-en")
    assert foo == {"package": "foo-tools", "source": "foo", "section": "games", "short": "play foo",
                   "long": "Foo is a game.\nIt has levels."}
    assert bar["long"] == "" and bar["source"] == "bar"


def test_quickstart_training_data_is_excluded(tmp_path, monkeypatch):
    from embedtrain.evaluation import suite_tasks_data as td

    lines = [json.dumps({"query": "a large wild cat of Africa", "positive": "lion", "negative": ["tiger", "Puma"],
                         "task": "wordnet_def2lemma"}),
             "",
             json.dumps({"query": "salmon", "positive": "a fish that swims upstream to spawn",
                         "negative": ["a small silvery fish, e.g."], "task": "wordnet_lemma2def"})]
    ex = sb.exclusion_from_lines(lines, "train.jsonl")
    assert ex.lemmas == {"lion", "tiger", "puma", "salmon"} and ex.lines == 3
    assert ex.definitions == {"a large wild cat of africa", "a fish that swims upstream to spawn",
                              "a small silvery fish"}
    assert ex.has_lemma("Lion") and not ex.has_lemma("lioness")
    assert ex.has_definition('a small  silvery fish; "sprats are small"') and not ex.has_definition("a small fish")
    with pytest.raises(sb.SourceError, match=r"train.jsonl:2"):
        sb.exclusion_from_lines([lines[0], '{"query": "x", "task": "other"}'], "train.jsonl")
    assert sb.read_exclusion(tmp_path / "missing.jsonl") is None  # an installed wheel: "excluded": null
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert sb.read_exclusion(tmp_path / "train.jsonl").definitions == ex.definitions
    repo = sb.read_exclusion()  # the quickstart's own file, found from the package
    assert repo.file == "recipes/quickstart/data/train.jsonl" and repo.lemmas and repo.definitions

    # WordNet: lion and tiger can be no candidate, the cat defined as in train no query, the fish no example
    syn = {("n", "00000001"): {"lex": 6, "words": ["feline"], "hyper": [], "definition": "any of the cats"}}
    cats = {"lion": "a big cat with a mane", "tiger": "a big striped cat", "ocelot": "a large wild cat of Africa",
            "lynx": "a short-tailed wildcat with tufted ears", "cheetah": "the fastest animal on land",
            "jaguar": "a big spotted cat of the Americas", "serval": "a slender African wildcat",
            "caracal": "a desert wildcat with black ears", "margay": "a small spotted wildcat of the forest"}
    for i, (word, definition) in enumerate(cats.items()):
        syn[("n", f"1{i:07}")] = {"lex": 6, "words": [word], "hyper": [("n", "00000001")], "definition": definition}
    fish = ["a fish that swims upstream to spawn", "A small silvery fish, e.g."]
    for i, definition in enumerate([f"an animal of kind {i} with fur" for i in range(60)] + fish):
        syn[("n", f"2{i:07}")] = {"lex": 5, "words": [f"beast{i}"], "hyper": [], "definition": definition}
    monkeypatch.setattr(td, "WORDNET_CLUSTERS", {5: "animal"})
    data, counts = td.build_wordnet(syn, 0, ex)
    assert counts == {"EmbedtrainWordNetReranking": {"synsets": 9, "lemmas": 2, "definitions": 1},
                      "EmbedtrainWordNetClustering": {"synsets": 62, "definitions": 2}}
    rerank = data["EmbedtrainWordNetReranking"]["test"]
    corpus_words = {syn[("n", d["id"][1:])]["words"][0] for d in rerank["corpus"]}
    assert rerank["queries"] and not corpus_words & {"lion", "tiger"}
    assert "a large wild cat of Africa" not in {q["text"] for q in rerank["queries"]}
    assert not {e["text"] for e in data["EmbedtrainWordNetClustering"]["test"]["examples"]} & set(fish)
    sb.check_excluded(data, ex)
    plain, plain_counts = td.build_wordnet(syn, 0)
    assert plain_counts["EmbedtrainWordNetReranking"] == {"synsets": 9, "lemmas": 0, "definitions": 0}
    assert {d["text"] for d in plain["EmbedtrainWordNetReranking"]["test"]["corpus"]} & {"lion", "tiger"}
    with pytest.raises(AssertionError, match=r"EmbedtrainWordNetReranking: \d lemmas of train.jsonl left in"):
        sb.check_excluded(plain, ex)

    # GCIDE: salmon is a lemma of the training file, so only retreat and lantern are left to retrieve
    monkeypatch.setitem(td.N_CORPUS, "gcide", 2)
    monkeypatch.setattr(td, "N_QUERIES", 1)
    entries = [(["Salmon"], "Salmon \\Sal\"mon\\, n. [F. saumon.]\n   A fish of the genus Oncorhynchus, living "
                            "in the sea and spawning in rivers.\n   [1913 Webster]\n\n"),
               (["Retreat"], "Retreat \\Re*treat\"\\, v. i.\n   To withdraw from any position or place; as, the "
                             "army fell back.\n   [1913 Webster]\n\n"),
               (["Lantern"], "Lantern \\Lan\"tern\\, n.\n   Something inclosing a light, and protecting it from "
                             "wind, rain, etc.\n   [1913 Webster]\n\n")]
    data, counts = td.build_gcide(entries, {"salmon", "retreat", "lantern"}, 0, ex)
    assert counts == {"EmbedtrainGcideRetrieval": {"words": 1, "usable": 3}}
    assert {d["text"] for d in data["EmbedtrainGcideRetrieval"]["test"]["corpus"]} == {"retreat", "lantern"}
    assert td.build_gcide(entries, {"salmon", "retreat", "lantern"}, 0)[1]["EmbedtrainGcideRetrieval"]["words"] == 0
    assert ex.record(counts)["tasks"] == counts and ex.record(counts)["file"] == "train.jsonl"
