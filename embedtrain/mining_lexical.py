"""Lexical scorers for `embedtrain mine DATA tfidf|bm25 OUT`: no model, sparse matrices only.

Both fit their vocabulary on one task's candidate pool (the documents being ranked), so IDF reflects
the texts a query competes against. Queries are scored as plain text: instructions are for models.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

BM25_K1, BM25_B = 1.2, 0.75


def tfidf_matrices(docs: list[str], queries: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(Q, V) and (P, V) l2-normalised TF-IDF rows: their dot product is the cosine."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer().fit(docs)
    return vec.transform(queries).tocsr(), vec.transform(docs).tocsr()


def bm25_matrices(docs: list[str], queries: list[str], k1: float = BM25_K1,
                  b: float = BM25_B) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(Q, V) query term counts and (P, V) per-document BM25 term weights; their product is Okapi BM25
    sum_t qtf(t) * idf(t) * tf(t,d) (k1 + 1) / (tf(t,d) + k1 (1 - b + b |d| / avgdl)), where
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) (the non-negative Lucene form)."""
    from sklearn.feature_extraction.text import CountVectorizer

    cv = CountVectorizer().fit(docs)
    tf_PV = cv.transform(docs).tocsr().astype(np.float64)
    n_docs = tf_PV.shape[0]
    doc_len_P = np.asarray(tf_PV.sum(axis=1)).ravel()
    avgdl = max(doc_len_P.mean(), 1e-12)  # guards a pool whose texts have no tokens at all
    df_V = np.bincount(tf_PV.indices, minlength=tf_PV.shape[1])
    idf_V = np.log(1.0 + (n_docs - df_V + 0.5) / (df_V + 0.5))
    row_of_nz = np.repeat(np.arange(n_docs), np.diff(tf_PV.indptr))
    tf = tf_PV.data
    weight = idf_V[tf_PV.indices] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len_P[row_of_nz] / avgdl))
    w_PV = sp.csr_matrix((weight, tf_PV.indices.copy(), tf_PV.indptr.copy()), shape=tf_PV.shape)
    return cv.transform(queries).tocsr().astype(np.float64), w_PV


class LexicalScorer:
    """scores(rows) -> (C, P) for one task at a time; `kind` is "tfidf" or "bm25"."""

    def __init__(self, kind: str, examples):
        self.kind, self.examples = kind, examples
        self.q_QV = self.d_VP = None
        self.row_pos: dict[int, int] = {}

    def begin(self, pool) -> None:
        queries = [self.examples[i].query for i in pool.rows]
        make = tfidf_matrices if self.kind == "tfidf" else bm25_matrices
        try:
            self.q_QV, d_PV = make(pool.texts, queries)
        except ValueError as exc:  # sklearn: "empty vocabulary; perhaps the documents only contain stop words"
            raise ValueError(f"task {pool.task!r}: {self.kind} cannot index its candidate texts ({exc}); "
                             "use a model instead") from None
        self.d_VP = d_PV.T.tocsc()
        self.row_pos = {r: j for j, r in enumerate(pool.rows)}

    def scores(self, rows: list[int]) -> torch.Tensor:
        q_CV = self.q_QV[[self.row_pos[r] for r in rows]]
        return torch.from_numpy((q_CV @ self.d_VP).toarray().astype(np.float32))
