"""Held-out scores during training (eval.every_steps) and the best step's weights (run.keep_best).

Every rank runs the same evaluation forwards in lockstep: under ZeRO-3 each forward gathers parameter shards
from all ranks, so one rank cannot encode alone; under ZeRO 0-2 the duplicate work costs no wall time. Rank 0
logs and writes. Scores are plain floats keyed "retrieval/<metric>" (eval.retrieval pairs: recall@1,
recall@10, mrr) and "suite/<task>" (main score of an offline-suite task) plus "suite/mean".
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from embedtrain.config.schema import RecipeConfig
from embedtrain.config.validate import best_metric
from embedtrain.data.jsonl import build_index
from embedtrain.distributed import rank
from embedtrain.encode import encode_texts, retrieval_scores
from embedtrain.evaluation.mteb_encoder import evaluate_encoder, load_instructions, make_encoder, resolve_tasks
from embedtrain.files import atomic_write_text
from embedtrain.model.folder import trained_context

log = logging.getLogger("embedtrain")
BEST = "best.json"


class Evaluator:
    """eval.retrieval and eval.tasks on the training model; keeps run_dir/best/ when run.keep_best is set.

    text_tok: how the objective formats a text (objective.text_format); policy: its instruction policy for
    the suite (objective.eval_instruction_policy), None for the suite's per-task instructions."""

    def __init__(self, cfg: RecipeConfig, model, text_tok, builder, device, run_dir: Path, save_best=None,
                 policy=None):
        self.cfg, self.model, self.text_tok, self.builder, self.device = cfg, model, text_tok, builder, device
        self.run_dir, self.save_best, self.policy = run_dir, save_best, policy
        self.metric = best_metric(cfg)
        self.best = None
        if (run_dir / BEST).is_file():  # a resumed run keeps competing with its best
            self.best = json.loads((run_dir / BEST).read_text())
        self._examples = None
        self._tasks = None
        self._suite_encoder = None  # built once: its dimension probe is a forward, its instructions a file read
        self.last_retrieval: tuple[int, dict | None] | None = None  # (step, held-out scores) of the latest step()

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every_steps
        return bool(every) and (step % every == 0 or step == self.cfg.train.steps)

    # -------------------------------------------------------------- held-out retrieval pairs
    def retrieval(self, label: str) -> dict | None:
        ev = self.cfg.eval
        if not ev.retrieval:
            return None
        if self._examples is None:
            idx = build_index([ev.retrieval])
            self._examples = [idx.read(i) for i in range(min(len(idx), ev.max_examples))]
        ex = self._examples
        q = encode_texts(self.model, self.text_tok, [e.query for e in ex], [self.builder.instruction_for(e) for e in ex],
                         ev.batch_tokens, self.device)
        doc_inst = [ev.document_instruction] * len(ex) if ev.document_instruction else None
        d = encode_texts(self.model, self.text_tok, [e.positive for e in ex], doc_inst, ev.batch_tokens, self.device)
        scores = retrieval_scores(q, d)
        log.info("held-out retrieval %s (%s, %d queries): R@1 %.3f  R@10 %.3f  MRR %.3f", label, ev.retrieval,
                 len(ex), scores["recall@1"], scores["recall@10"], scores["mrr"])
        return scores

    # -------------------------------------------------------------- offline-suite tasks through mteb
    def _encoder(self):
        # documents at the length `embedtrain eval` uses on the exported model, not the training data.max_length
        fmt = copy.copy(self.text_tok)
        fmt.max_length = trained_context(self.model.lm.config) - fmt.reserved_positions
        batch_tokens = max(self.cfg.eval.batch_tokens, fmt.max_length)

        def encode_fn(texts, instruction):
            inst = [instruction] * len(texts) if instruction else None
            return encode_texts(self.model, fmt, texts, inst, batch_tokens, self.device).cpu()

        dim = int(encode_fn(["dimension probe"], None).shape[1])
        return make_encoder(encode_fn, "training", dim, load_instructions(None, self.cfg.eval.suite),
                            policy=self.policy)

    def suite(self) -> dict[str, float]:
        if not self.cfg.eval.tasks:
            return {}
        if self._tasks is None:
            self._tasks = resolve_tasks(self.cfg.eval.tasks, self.cfg.eval.suite)
            self._suite_encoder = self._encoder()
        out = Path(tempfile.mkdtemp(prefix=f"embedtrain-eval-rank{rank()}-"))
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the per-task table; the step's log line says it
                scores = evaluate_encoder(self._suite_encoder, self._tasks, out, "training")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        row = {f"suite/{name}": value for name, value in scores.items()}
        row["suite/mean"] = sum(scores.values()) / max(1, len(scores))
        return row

    # -------------------------------------------------------------- one evaluation step
    def step(self, step: int) -> dict:
        """Scores at this step as metrics.jsonl keys (eval/...), eval_time_s, and the best one kept."""
        t0 = time.perf_counter()
        scores = {}
        got = self.retrieval(f"at step {step}")
        self.last_retrieval = (step, got)
        if got is not None:
            scores.update({f"retrieval/{k}": v for k, v in got.items() if k != "n"})
        scores.update(self.suite())
        value = scores[self.metric]
        improved = self.best is None or value > self.best["value"]
        if improved:
            self.best = {"step": step, "metric": self.metric, "value": value, "scores": scores}
            if self.save_best is not None:
                self.save_best(self.run_dir / "best")  # every rank: ZeRO-3 gathers the weights
                if rank() == 0:
                    atomic_write_text(self.run_dir / BEST, json.dumps(self.best, indent=1))
        dt = time.perf_counter() - t0
        shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        kept = " (best so far: kept in best/)" if improved and self.save_best is not None else ""
        log.info("eval at step %d (%.1f s): %s%s", step, dt, shown, kept)
        return {**{f"eval/{k}": v for k, v in scores.items()}, "eval_time_s": dt}
