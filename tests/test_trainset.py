"""The training-set builder (embedtrain build-train-set) on hand-written sources: no network, no Debian."""
from __future__ import annotations

import gzip
import json

import pytest

from embedtrain.data import trainset_build as tb
from embedtrain.data import trainset_tasks as T
from embedtrain.data.jsonl import build_index, parse_example
from embedtrain.data.trainset_docs import devil_entry, read_debian_faq, read_sphinx_page
from embedtrain.data.trainset_holdout import (Holdout, LeakError, add_test_splits, apply_holdout, check_disjoint,
                                              norm_word, read_suite_tests)
from embedtrain.data.trainset_sources import fetch_train_sources, pod_items, pod_sections, read_pod, refuse_reserved
from embedtrain.evaluation import suite_build as sb
from embedtrain.evaluation.suite_sources import SourceError

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    out = B64[n % 64]
    while n >= 64:
        n //= 64
        out = B64[n % 64] + out
    return out


def write_dictd(folder, name, entries):
    folder.mkdir(parents=True, exist_ok=True)
    data, index = b"", ""
    for words, text in entries:
        index += "".join(f"{w}\t{_b64(len(data))}\t{_b64(len(text.encode()))}\n" for w in words)
        data += text.encode()
    (folder / f"{name}.index").write_text(index)
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))


POD = """=head1 NAME

perlfoo - a made-up page

=head1 DESCRIPTION

Perl has B<bold> and C<< code >> and L<perlsyn/"Compound Statements"> links.

    my $x = 1;   # verbatim code: left out

=head2 Functions

=over 4

=item abs VALUE
X<abs>

Returns the absolute value of its argument E<lt>here E<gt>.

=item * nested

=back

=begin html

<p>ignored</p>

=end html

=cut
"""

HTML = """<html><body><div class="body" role="main">
<section id="json-mod"><h1>json \u2014 JSON encoder<a class="headerlink" href="#">\u00b6</a></h1>
<p>The json module encodes Python objects.</p>
<dl class="py function"><dt class="sig sig-object py" id="json.dumps"><span class="pre">json.</span>
<span class="pre">dumps</span>(<em>obj</em>, <em>*</em>, <em>indent=None</em>)<a class="headerlink">\u00b6</a></dt>
<dd><p>Serialize <em>obj</em> to a string.</p><pre>json.dumps([1])</pre></dd></dl>
<section id="basic"><h2>9.1. Basic Usage</h2><p>Call dumps on any value.</p></section>
</section></div></body></html>"""

FAQ = """Table of Contents

1. Definitions
    1.1. What is this FAQ?

Chapter\u00a01.\u00a0Definitions

1.1.\u00a0What is this FAQ? And
why read it?

    It answers questions (https://example.org/faq) about
\u00a0 \u00a0 \u00a0 Debian.

      * It is short.

1.2.\u00a0Who wrote it?

    Many people.

Chapter\u00a02.\u00a0Next
"""

DEVIL = ("ABDICATION, n.  An act whereby a sovereign attests his sense of the\nhigh temperature of the throne.\n\n"
         "    Poor Isabella's Dead, whose abdication\n    Set all tongues wagging.\n"
         "                                                G.J.\n\n")


# ------------------------------------------------------------------ (b) parsers on hand-written snippets

def test_pod_parser_sections_and_items():
    blocks = read_pod(POD)
    assert ("para", 'Perl has bold and code and Compound Statements in perlsyn links.') in blocks
    assert all("my $x" not in text and "ignored" not in text for _, text in blocks)
    sections = pod_sections(blocks)
    assert [(lvl, head) for lvl, head, _ in sections] == [(1, "NAME"), (1, "DESCRIPTION"), (2, "Functions")]
    assert sections[2][2] == "abs VALUE Returns the absolute value of its argument <here >. nested"
    assert pod_items(blocks) == [("abs VALUE", "Returns the absolute value of its argument <here >."),
                                 ("* nested", "")]
    rows = T.perl_rows([("perlfoo", sections, pod_items(blocks))])
    assert [(r["task"], r["query"]) for r in rows] == [
        ("perl_doc_section", "perlfoo: DESCRIPTION"), ("perl_doc_section", "perlfoo: Functions"),
        ("perl_doc_item", "perlfoo: abs VALUE")]  # NAME is left out, "* nested" has no text


def test_sphinx_html_parser_and_python_rows():
    page = read_sphinx_page(HTML)
    assert page.title == "json \u2014 JSON encoder"
    assert page.api == [("function", "json.dumps", "json. dumps(obj, *, indent=None)", "Serialize obj to a string.")]
    assert page.sections == [("basic", "9.1. Basic Usage", "Call dumps on any value."),
                             ("json-mod", "json \u2014 JSON encoder", "The json module encodes Python objects.")]
    rows = T.python_rows([("library/json.html", page)])
    assert [(r["task"], r["query"], r["positive"]) for r in rows] == [
        ("python_api_doc", "function json.dumps(obj, *, indent=None)", "Serialize obj to a string.")]
    page.sections[0] = ("basic", "9.1. Basic Usage", "Call dumps on any value you like, then print it.")
    rows = T.python_rows([("library/json.html", page)])
    assert rows[-1]["query"] == "json \u2014 JSON encoder: Basic Usage"  # numbering dropped, page named


def test_debian_faq_and_devil_parsers(tmp_path):
    assert read_debian_faq(FAQ) == [
        ("1.1", "What is this FAQ? And why read it?", "It answers questions about Debian. * It is short."),
        ("1.2", "Who wrote it?", "Many people.")]
    rows = T.faq_rows(read_debian_faq(FAQ))
    assert [(r["query"], r["positive"]) for r in rows] == [
        ("What is this FAQ? And why read it?", "It answers questions about Debian. It is short.")]
    write_dictd(tmp_path, "devil", [(["00databaseshort"], "00-database-short\n"), (["abdication"], DEVIL)])
    entries = [devil_entry(t) for _, t in sb.read_dictd(tmp_path, "devil")]
    assert entries == [("", ""), ("abdication", "An act whereby a sovereign attests his sense of the high "
                                                "temperature of the throne.")]
    assert [r["query"] for r in T.devil_rows(entries)] == ["abdication"]


# ------------------------------------------------------------------ (a) disjointness from the suite's test splits

def _suite_tests():
    """Test splits shaped as the suite writes them: Debian, WordNet reranking, FOLDOC and GCIDE rows."""
    foldoc_doc = " ".join(f"word{i}" for i in range(30)) + " ..."  # the suite's 30-word clip of a longer definition
    return {
        "EmbedtrainDebianRetrieval": {
            "corpus": [{"id": "d-foo-tools", "text": "Foo is a game with many levels to play through."}],
            "queries": [{"id": "q-foo-tools", "text": "play foo"}],
            "qrels": [{"query-id": "q-foo-tools", "corpus-id": "d-foo-tools", "score": 1}]},
        "EmbedtrainWordNetReranking": {
            "corpus": [{"id": "n10000000", "text": "lion"}, {"id": "n10000001", "text": "tiger"}],
            "queries": [{"id": "qn10000000", "text": "a big cat with a mane"}],
            "qrels": [{"query-id": "qn10000000", "corpus-id": "n10000000", "score": 1}],
            "top_ranked": [{"query-id": "qn10000000", "corpus-ids": ["n10000000", "n10000001"]}]},
        "EmbedtrainFoldocRetrieval": {"corpus": [{"id": "d-3", "text": foldoc_doc}],
                                      "queries": [{"id": "q-3", "text": "Quux"}], "qrels": []},
        "EmbedtrainDebianSectionClassification": {"examples": [{"text": "A text editor.", "label": "editors",
                                                                "key": "vimish"}]},
    }


def _holdout():
    h = Holdout(package_source={"foo-tools": "foo", "bar": "bar"})
    add_test_splits(h, _suite_tests(), "test")
    return h


def test_holdout_collects_every_kind_of_test_item():
    h = _holdout()
    assert h.counts() == {"debian-package": 1, "debian-source": 2, "synset": 2, "text": 3, "word": 5}
    assert h.key_hit("debian-source", "foo") == "EmbedtrainDebianRetrieval (test)"
    assert h.key_hit("synset", "n10000001") and h.key_hit("word", "Lion") and h.key_hit("debian-source", "vimish")
    assert h.text_hit("LION!")[:2] == ("word", "lion") and h.text_hit("lioness") is None
    assert norm_word("Double-bogey!") == norm_word("double  bogey") == "double bogey"
    assert h.text_hit("A big  cat with a mane.") == ("text", "a big cat with a mane",
                                                     "EmbedtrainWordNetReranking (test)")
    longer = " ".join(f"word{i}" for i in range(90))  # shown whole in training, clipped to 30 words in the suite
    assert h.text_hit(longer)[0] == "text" and h.text_hit("word0 word1 word2 word3 other words") is None


def test_builders_leave_out_suite_items_and_the_check_names_a_leak():
    pkgs = [{"package": "foo-tools", "source": "foo", "section": "games", "short": "play foo",
             "long": "Foo is a game with many levels to play through."},
            {"package": "bar", "source": "bar", "section": "net", "short": "talk bar",
             "long": "Bar is a chat program for the terminal with themes."}]
    syn = {("n", "00000001"): {"lex": 5, "words": ["feline"], "hyper": [], "definition": "any of the cats"}}
    for i, (word, definition) in enumerate([("lion", "a big cat with a mane"), ("tiger", "a big striped cat"),
                                            ("ocelot", "a spotted wildcat of the Americas")]):
        syn[("n", f"1000000{i}")] = {"lex": 5, "words": [word], "hyper": [("n", "00000001")], "definition": definition}
    foldoc = [(["quux"], "Quux\n\n   <language> " + " ".join(f"word{i}" for i in range(40)) + "\n\n"),
              (["zot"], "Zot\n\n   <language> A language with just eight words in it.\n\n")]
    rows = (T.debian_rows(pkgs) + T.wordnet_rows(syn, 0, n_negatives=3) + T.foldoc_rows(foldoc))
    kept, dropped = apply_holdout(rows, _holdout())
    assert [(r["task"], r["query"], r["positive"], r.get("negative")) for r in kept] == [
        ("debian_summary_description", "talk bar", "Bar is a chat program for the terminal with themes.", None),
        ("wordnet_definition_lemma", "any of the cats", "feline", None),
        ("wordnet_definition_lemma", "a spotted wildcat of the Americas", "ocelot", []),  # lion, tiger dropped
        ("foldoc_term_definition", "Zot", "A language with just eight words in it.", None)]
    assert dropped == {"debian_summary_description": 1, "wordnet_definition_lemma": 2, "foldoc_term_definition": 1}
    assert check_disjoint(kept, _holdout()) == 4

    leak = {"query": "talk foo", "positive": "a new text", "task": "debian_summary_description",
            "keys": [("debian-source", "foo")]}
    with pytest.raises(LeakError, match=r"row 2 .*debian-source 'foo' is tested by EmbedtrainDebianRetrieval"):
        check_disjoint([kept[0], leak], _holdout())
    with pytest.raises(LeakError, match=r"negative word 'tiger' is tested by EmbedtrainWordNetReranking"):
        check_disjoint([{**kept[2], "negative": ["tiger"]}], _holdout())
    with pytest.raises(LeakError, match=r"positive text 'word0 word1"):
        check_disjoint([{"query": "Q", "positive": " ".join(f"word{i}" for i in range(60)), "task": "t"}], _holdout())


def test_held_out_items_are_read_from_a_built_suite_folder(tmp_path):
    tests = _suite_tests()
    entry = sb.write_task_files(tmp_path, "EmbedtrainDebianRetrieval", "retrieval",
                                {"test": tests["EmbedtrainDebianRetrieval"]}, instruction="i", description="d",
                                source="debian")
    sb.write_manifest(tmp_path, [entry], seed=7)
    read, seed = read_suite_tests(tmp_path)
    assert seed == 7 and read == {"EmbedtrainDebianRetrieval": tests["EmbedtrainDebianRetrieval"]}
    h = Holdout(package_source={"foo-tools": "foo"})
    add_test_splits(h, read, str(tmp_path))
    assert h.key_hit("debian-source", "foo") and h.key_hit("debian-package", "foo-tools")
    with pytest.raises(SourceError, match="not a readable suite folder"):
        read_suite_tests(tmp_path / "nowhere")


# ------------------------------------------------------------------ (d) reserved packages

@pytest.mark.parametrize("pkg", ["manpages", "manpages-dev", "manpages-fr", "fortunes", "fortunes-min",
                                 "fortune-mod", "dict-vera", "dict-jargon"])
def test_reserved_packages_are_refused_before_any_download(tmp_path, monkeypatch, pkg):
    monkeypatch.setattr("embedtrain.data.trainset_sources.fetch_sources",
                        lambda *a, **k: pytest.fail("fetched despite a reserved package"))
    with pytest.raises(SourceError, match=f"{pkg}: reserved for independent evaluation"):
        fetch_train_sources(tmp_path, debs={"x": pkg})
    refuse_reserved("perl-doc")  # an ordinary package passes
    refuse_reserved("dict-devil")


# ------------------------------------------------------------------ (c) the whole build, and its lines parse

def _fake_root(root):
    share = root / "usr" / "share"
    wn = share / "wordnet"
    wn.mkdir(parents=True)
    (wn / "data.noun").write_text(
        "00000001 05 n 01 feline 0 000 | any of the cats\n"
        "10000000 05 n 01 lion 0 001 @ 00000001 n 0000 | a big cat with a mane\n"
        "10000002 05 n 01 ocelot 0 001 @ 00000001 n 0000 | a spotted wildcat of the Americas\n")
    (wn / "data.verb").write_text("20000000 30 v 01 taper 0 000 | narrow gradually toward a point\n")
    (wn / "data.adj").write_text("")
    write_dictd(share / "dictd", "foldoc", [
        (["zot"], "Zot\n\n   <language> A language with just eight words in it.\n\n"),
        (["hack"], "hack\n\n   /hak/ Jargon-style entry text of enough words.\n\n")])
    write_dictd(share / "dictd", "gcide", [(["taper"], "Taper \\Ta\"per\\, n.\n   A small wax candle; a small "
                                                       "light.\n   [1913 Webster]\n\n")])
    write_dictd(share / "dictd", "devil", [(["abdication"], DEVIL)])
    html = share / "doc" / "python3.11" / "html"
    (html / "library").mkdir(parents=True)
    (html / "library" / "json.html").write_text(HTML)
    (html / "whatsnew").mkdir()
    (html / "whatsnew" / "3.11.html").write_text(HTML.replace("json.dumps", "json.whatsnew"))
    pod = share / "perl" / "5.36.0" / "pod"
    pod.mkdir(parents=True)
    (pod / "perlfoo.pod").write_text(POD)
    (pod / "perl5360delta.pod").write_text(POD.replace("perlfoo", "perldelta"))
    faq = share / "doc" / "debian" / "FAQ"
    faq.mkdir(parents=True)
    questions = "".join(f"1.{i}.\u00a0Question number {i}?\n\n    Answer number {i} has five words.\n\n"
                        for i in range(1, 51))
    (faq / "debian-faq.txt.gz").write_bytes(gzip.compress(f"Chapter 1. One\n\n{questions}".encode()))
    for pkg in ("wordnet-base", "dict-gcide", "dict-foldoc", "python3.11-doc", "perl-doc", "debian-faq", "dict-devil"):
        (share / "doc" / pkg).mkdir(parents=True, exist_ok=True)
        (share / "doc" / pkg / "copyright").write_text(f"copyright of {pkg}\n")
    (root / "Packages").write_text(
        "Package: foo-tools\nSource: foo\nSection: games\nDescription: play foo\nDescription-md5: a\n\n"
        "Package: bar\nSection: net\nDescription: talk bar\nDescription-md5: b\n\n"
        "Package: talkd\nSection: net\nDescription: talk daemon\nDescription-md5: c\n")
    (root / "Translation-en").write_text(
        "Package: foo-tools\nDescription-md5: a\nDescription-en: play foo\n Foo is a game with many levels to play "
        "through.\n\nPackage: bar\nDescription-md5: b\nDescription-en: talk bar\n Bar is a chat program for the "
        "terminal with themes.\n\nPackage: talkd\nDescription-md5: c\nDescription-en: talk daemon\n Talkd lets "
        "users on one machine chat with each other.\n")
    keys = ("wordnet", "gcide", "foldoc", "python-doc", "perl-doc", "debian-faq", "devil")
    return {"root": root, "packages": root / "Packages", "translation": root / "Translation-en", "release": {},
            "debs": {k: root / f"{k}_1.0_all.deb" for k in keys}}


def test_whole_build_writes_checked_lines_manifest_and_licences(tmp_path, monkeypatch):
    got = _fake_root(tmp_path / "work")
    monkeypatch.setattr(tb, "fetch_train_sources", lambda work, say: got)
    monkeypatch.setattr(sb, "_build_all", lambda got, seed, say, exclusion: (
        {name: {"test": test} for name, test in _suite_tests().items()}, b"", None))
    out = tmp_path / "trainset"
    manifest = tb.build_train_set(str(out), str(tmp_path / "work"), seed=0, verbose=False)
    pairs = {t: e["pairs"] for t, e in manifest["tasks"].items() if e["pairs"]}
    assert pairs == {"debian_summary_description": 1, "foldoc_term_definition": 1, "gcide_definition_word": 1,
                     "wordnet_definition_lemma": 3, "python_api_doc": 1, "perl_doc_item": 1, "perl_doc_section": 2,
                     "debian_faq_answer": 45, "devil_word_definition": 1}
    assert manifest["total"] == 56 and manifest["holdout"]["leaks"] == 0
    # held-out pairs: at most a tenth of a task (5 of the FAQ's 50), none of them in train.jsonl
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 5 == manifest["heldout"]["total"] and {r["task"] for r in held} == {"debian_faq_answer"}
    assert not {r["query"] for r in held} & {json.loads(line)["query"] for line in (out / "train.jsonl").open()}
    assert manifest["tasks"]["wordnet_definition_lemma"]["held_out"] == 1  # lion
    assert manifest["sources"]["perl-doc"]["licence_file"] == "LICENSES/perl-doc.copyright"
    assert (out / "LICENSES" / "dict-devil.copyright").read_text() == "copyright of dict-devil\n"
    lines = (out / "train.jsonl").read_text().splitlines()
    for n, line in enumerate(lines, 1):
        ex = parse_example(line, f"train.jsonl:{n}", "train")
        assert ex.task in T.TASKS and ex.instruction == T.TASKS[ex.task][1]
    text = "\n".join(lines)
    # bar is used by no suite split, but its source package is on the suite's test side (DEBIAN_TRAIN_FRACTION)
    assert "talk daemon" in text and "talk bar" not in text
    assert "lion" not in text and "play foo" not in text and "whatsnew" not in text and "perldelta" not in text
    assert "Jargon-style" not in text  # FOLDOC's Jargon File entries are left to dict-jargon's evaluation
    index = build_index([str(out / "train.jsonl")])  # what data.train does with the file
    assert len(index) == 56 and set(index.tasks) == set(pairs)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(SourceError, match="not a training-set folder"):
        tb.build_train_set(str(tmp_path / "other"), verbose=False)


def test_cli_wiring_reports_a_bad_suite_folder_before_fetching(tmp_path, capsys):
    from embedtrain import cli

    assert cli.main(["build-train-set", str(tmp_path / "out"), "--suite", str(tmp_path / "nosuite")]) == 2
    assert "nosuite: not a readable suite folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
