"""What the offline evaluation suite holds: its sources (with licences), its tasks and their sizes.

embedtrain.evaluation.suite_tasks_data builds each task's rows from the sources that
embedtrain.evaluation.suite_sources reads; embedtrain.evaluation.suite_build writes them.
"""
from __future__ import annotations

# Sizes: a 135M-parameter model embeds a few hundred tokens per second on 2 CPU cores, so each task stays near
# 10-25k tokens (instructions included), about a minute; documents are clipped to DOC_WORDS words.
N_QUERIES = 200
N_CORPUS = {"debian": 400, "foldoc": 400, "gcide": 1000}
DOC_WORDS = 30
DEBIAN_TRAIN_FRACTION = 0.3  # of Debian source packages; only these may feed a train split

SOURCES = {
    "debian": {"title": "Debian 12 (bookworm) main: package short and long descriptions (Packages, Translation-en)",
               "reference": "https://packages.debian.org/bookworm/", "license": "multiple",
               "licence": "Each description is part of its package and is distributed under that package's licence "
                          "(see /usr/share/doc/<package>/copyright in the package); the index files come from the "
                          "Debian archive."},
    "wordnet": {"title": "WordNet 3.0 (Debian package wordnet-base)", "reference": "https://wordnet.princeton.edu/",
                "license": "https://wordnet.princeton.edu/license-and-commercial-use",
                "licence": "WordNet 3.0 licence: WordNet 3.0 Copyright 2006 by Princeton University. All rights "
                           "reserved. Use, copy, modify and distribute for any purpose without fee, provided the "
                           "copyright notice and disclaimer appear on all copies (full text in LICENSES/)."},
    "gcide": {"title": "GCIDE 0.48, GNU Collaborative International Dictionary of English (Debian dict-gcide); "
                       "senses taken from Webster's Revised Unabridged Dictionary (1913)",
              "reference": "https://www.gnu.org/software/gcide/",
              "license": "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html",
              "licence": "GNU GPL version 2 or (at your option) any later version (full notice in LICENSES/)."},
    "foldoc": {"title": "FOLDOC, the Free On-line Dictionary of Computing, editor Denis Howe (Debian dict-foldoc)",
               "reference": "https://foldoc.org/", "license": "https://www.gnu.org/licenses/old-licenses/fdl-1.1.html",
               "licence": "Copyright 1993 by Denis Howe; GNU Free Documentation License 1.1 or later, no invariant "
                          "sections, no cover texts. Debian's Dictionary.debian additions: copyright Joey Hess and "
                          "Robert D. Hilliard, verbatim copies and derived works under identical terms."},
    "lee": {"title": "Lee document-similarity corpus: 50 news articles with averaged human pairwise similarity "
                     "ratings (lee.cor, similarities0-1.txt from gensim's test data)",
            "reference": "https://radimrehurek.com/gensim/", "license": "lgpl",
            "licence": "Shipped in gensim, which is distributed under the GNU LGPL 2.1 (License: LGPL-2.1-only; "
                       "COPYING in LICENSES/). The corpus and ratings are by Michael D. Lee and colleagues.",
            "bibtex": "@inproceedings{lee2005empirical,\n  title={An empirical evaluation of models of text document "
                      "similarity},\n  author={Lee, Michael D. and Pincombe, Brandon and Welsh, Matthew},\n  "
                      "booktitle={Proceedings of the 27th Annual Conference of the Cognitive Science Society},\n  "
                      "year={2005}\n}"},
}

# Static description of every task; the builders below produce the data.
TASKS = {
    "EmbedtrainDebianRetrieval": dict(
        kind="retrieval", source="debian", domains=["Programming", "Written"],
        instruction="Given the one-line summary of a Debian software package, retrieve the package's full "
                    "description",
        description="Debian package short description -> its long description (first 30 words), among 400 "
                    "(one package per source package, library and language-ecosystem sections left out)."),
    "EmbedtrainFoldocRetrieval": dict(
        kind="retrieval", source="foldoc", domains=["Engineering", "Written"],
        instruction="Given a computing term, retrieve its dictionary definition",
        description="FOLDOC headword -> its definition (first 30 words; category tag, dates, links and a leading "
                    "alias removed), among 400 definitions."),
    "EmbedtrainGcideRetrieval": dict(
        kind="retrieval", source="gcide", domains=["Written"],
        instruction="Given a dictionary definition, retrieve the word it defines",
        description="Reverse dictionary: a Webster 1913 definition (GCIDE, first sense) -> its headword, among 1000 "
                    "headwords that are also WordNet lemmas; definitions containing the word's stem are left out."),
    "EmbedtrainWordNetReranking": dict(
        kind="reranking", source="wordnet", domains=["Written"],
        instruction="Given a definition, find the word it defines among related words",
        description="WordNet 3.0 definition -> its lemma, reranking the lemmas of up to 8 co-hyponyms (synsets "
                    "sharing a hypernym) of noun and verb synsets; definitions naming their own lemma are left out."),
    "EmbedtrainLeeSTS": dict(
        kind="sts", source="lee", domains=["News", "Written"], annotations="human-annotated",
        instruction="Retrieve news articles that are semantically similar to the given news article",
        description="All 1225 pairs of the 50 Lee corpus news articles with their averaged human similarity "
                    "ratings (0-1); each article is encoded once."),
    "EmbedtrainDebianSectionClassification": dict(
        kind="classification", source="debian", domains=["Programming", "Written"], subtypes=["Topic classification"],
        instruction="Classify the Debian archive section of a software package from its description",
        description="Debian long description (first 30 words) -> archive section (10 sections, 24 train and 30 "
                    "test descriptions each); train and test come from disjoint source packages."),
    "EmbedtrainWordNetClustering": dict(
        kind="clustering", source="wordnet", domains=["Written"], subtypes=["Thematic clustering"],
        instruction="Identify the semantic category of a concept from its dictionary definition",
        description="WordNet 3.0 noun definitions clustered by lexicographer file (animal, artifact, body, ...: 10 "
                    "categories, 60 definitions each)."),
    "EmbedtrainFoldocClustering": dict(
        kind="clustering", source="foldoc", domains=["Engineering", "Written"], subtypes=["Thematic clustering"],
        instruction="Identify the topic category of a computing term from its dictionary definition",
        description="FOLDOC definitions (first 30 words) clustered by their first category tag (language, "
                    "networking, hardware, ...: 10 categories, 50 definitions each)."),
}

