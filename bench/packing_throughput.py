#!/usr/bin/env python3
"""Packed vs padded InfoNCE training throughput on a realistic length mix (CPU, fp32).

Both trainers start from the same random weights and see the same batches (same token ids):
  packed - the texts of a batch packed into streams of --max-tokens and run through embedtrain's
           EmbeddingModel (attention only within each text);
  padded - the reference-implementation style: one right-padded (B, L) tensor + 2D attention mask
           through a stock HF model (attn_implementation="sdpa"), pooled at each row's last real token.
Steps are interleaved, their order alternated, so background load hits both modes alike.
See bench/README.md; results go to bench/results/.
"""
from __future__ import annotations

import argparse, ast, ctypes, json, os, random, sys, sysconfig, tempfile, threading, time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from embedtrain.config.schema import ModelConfig
from embedtrain.data.packing import TextTokenizer, pack_texts
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.infonce import infonce_loss
from embedtrain.tiny import make_tiny_model
from report_io import environment

REPO = Path(__file__).resolve().parents[1]
SHORT_DATA = REPO / "recipes/quickstart/data/train.jsonl"
INSTRUCTIONS = {  # the first two as in recipes/quickstart/smollm2_wordnet.yaml
    "wordnet_def2lemma": "Given a dictionary definition, retrieve the word it defines",
    "wordnet_lemma2def": "Given a word, retrieve its dictionary definition",
    "stdlib_doc": "Given a one-line summary of a Python API, retrieve its documentation"}
TARGET_RATIO, TARGET_EFFICIENCY, LOSS_TOL = 1.8, 0.95, 1e-4


def stdlib_docs() -> tuple[Path, list[list[tuple[str, str]]]]:
    """Long real English text on any Python install: stdlib docstrings per file, read with ast
    (parsing, not importing: no side effects, and identical text wherever this Python version runs)."""
    root, files = Path(sysconfig.get_paths()["stdlib"]), []
    for f in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        docs = [(f.stem if isinstance(n, ast.Module) else f"{f.stem}.{n.name}", ast.get_docstring(n)) for n in
                ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        if docs := [(name, d) for name, d in docs if d]:
            files.append(docs)
    return root, files


def build_batches(args, tok) -> tuple[list[list[tuple]], dict]:
    """Batches of (instruction, query, positive, negative); --long-frac of every batch has long passages."""
    rng = random.Random(args.seed)
    short = [json.loads(line) for line in SHORT_DATA.read_text().splitlines()]
    rng.shuffle(short)
    root, files = stdlib_docs()
    starts = [(f, i) for f, docs in enumerate(files) for i, (_, d) in enumerate(docs)
              if "\n" in d and len(d.split("\n", 1)[1].strip()) >= 128]

    def token_ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    def passage(f: int, i: int, skip_summary: bool) -> str:
        # A docstring continued by the following ones of its file (contiguous real text), cut to 256-512 tokens.
        target, parts = rng.randint(256, 512), []
        for j in range(i, len(files[f])):
            doc = files[f][j][1]
            parts.append(doc.split("\n", 1)[1].strip() if (j == i and skip_summary) else doc)
            if len(token_ids("\n\n".join(parts))) >= target:
                break
        return tok.decode(token_ids("\n\n".join(parts))[:target])

    n_long, batches, k = round(args.batch_size * args.long_frac), [], 0
    for _ in range(args.warmup + args.steps):
        batch = []
        for ex in (short[(k + j) % len(short)] for j in range(args.batch_size - n_long)):
            batch.append((INSTRUCTIONS[ex["task"]], ex["query"], ex["positive"], ex["negative"][0]))
        k += args.batch_size - n_long
        for _ in range(n_long):
            (f, i), (g, j) = rng.choice(starts), rng.choice(starts)
            name, doc = files[f][i]
            batch.append((INSTRUCTIONS["stdlib_doc"], f"{name}: {doc.splitlines()[0]}", passage(f, i, True),
                          passage(g, j, False)))
        rng.shuffle(batch)
        batches.append(batch)
    return batches, {"short": f"{SHORT_DATA.relative_to(REPO)} ({len(short)} WordNet pairs)",
                     "long": f"docstrings of {root}/*.py ({sum(map(len, files))} in {len(files)} files)"}


class RssSampler(threading.Thread):
    """Peak resident memory while `mode` is set; polled, because both trainers share one process."""

    def __init__(self):
        super().__init__(daemon=True)
        self.mode, self.peak_MiB, self.page = None, {}, os.sysconf("SC_PAGE_SIZE")

    def run(self):
        while True:
            if mode := self.mode:
                with open("/proc/self/statm") as f:
                    rss = int(f.read().split()[1]) * self.page / 2**20
                self.peak_MiB[mode] = max(self.peak_MiB.get(mode, 0.0), rss)
            time.sleep(0.005)


def packed_embed(model, encoded, args, pad_id):
    streams = pack_texts(encoded, args.max_tokens, pad_id, pad_to_multiple_of=args.pad_multiple)
    emb_ND = torch.cat([model(s) for s in streams])
    order_N = torch.argsort(torch.tensor([i for s in streams for i in s.text_ids]))
    real, computed = sum(s.num_real_tokens for s in streams), sum(s.num_tokens for s in streams)
    return emb_ND[order_N], real, computed, len(streams) * args.max_tokens, f"{len(streams)} streams"


def padded_embed(decoder, encoded, args, pad_id):
    lengths_B = torch.tensor([len(t.ids) for t in encoded])
    B, L = len(encoded), int(lengths_B.max())
    ids_BL = torch.full((B, L), pad_id, dtype=torch.long)
    for b, t in enumerate(encoded):
        ids_BL[b, :len(t.ids)] = torch.tensor(t.ids)
    mask_BL = (torch.arange(L)[None, :] < lengths_B[:, None]).long()
    hidden_BLH = decoder(input_ids=ids_BL, attention_mask=mask_BL, use_cache=False).last_hidden_state
    return hidden_BLH[torch.arange(B), lengths_B - 1], int(lengths_B.sum()), B * L, B * L, f"{B}x{L}"


def train_step(m: dict, encoded, args, pad_id) -> dict:
    """One optimizer step; batch collation (packing or padding) is inside the timed region for both."""
    t0, c0 = time.perf_counter(), time.process_time()
    emb_ND, real, computed, budget, shape = m["embed"](m["module"], encoded, args, pad_id)
    loss, _ = infonce_loss(emb_ND, args.batch_size, args.temperature)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m["params"], 1.0)
    m["opt"].step()
    m["opt"].zero_grad(set_to_none=True)
    return dict(loss=loss.item(), real=real, computed=computed, budget=budget, shape=shape,
                time=time.perf_counter() - t0, cpu=time.process_time() - c0)


def write_atomic(path: Path, text: str):
    (tmp := path.with_name(path.name + ".tmp")).write_text(text)
    os.replace(tmp, path)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--steps", type=int, default=12, help="measured steps per mode")
    add("--warmup", type=int, default=2, help="unmeasured steps per mode (>= 1: loss check and peak RSS use them)")
    add("--batch-size", type=int, default=32, help="examples per step, each query + positive + 1 negative")
    add("--max-tokens", type=int, default=4096, help="token budget of one packed stream")
    add("--pad-multiple", type=int, default=1, help="pad packed streams to a multiple (GPU recipes use 64)")
    add("--max-length", type=int, default=512, help="tokens per text, template and EOS included")
    add("--long-frac", type=float, default=0.3, help="share of examples whose positive/negative are long passages")
    for flag, default in (("--hidden", 256), ("--layers", 4), ("--heads", 8), ("--kv-heads", 4)):
        add(flag, type=int, default=default, help="model shape (random chatml/llama model)")
    for flag, kind, default in (("--lr", float, 1e-4), ("--temperature", float, 0.02), ("--seed", int, 0)):
        add(flag, type=kind, default=default)
    add("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    add("--out-dir", type=Path, default=REPO / "bench/results")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1:
        p.error("need --warmup >= 1 and --steps >= 1")
    return args


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_model("chatml", Path(tmp) / "model", hidden=args.hidden, layers=args.layers,
                                   heads=args.heads, kv_heads=args.kv_heads, seed=args.seed))
        tok = load_tokenizer(path)
        packed_model = build_model(ModelConfig(path=path, family="chatml", pooling="last", attn_backend="sdpa"),
                                   tok, torch.device("cpu")).train()
        packed_model.freeze_unused_lm_head()
        # Decoder stack only: an embedder never uses the LM head, so neither trainer optimises it.
        decoder = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).model.train()
    text_tok = TextTokenizer(tok, packed_model.family, args.max_length, "Instruct: {instruction}\nQuery: ")
    batches, source = build_batches(args, tok)
    encoded = []  # rows: queries, positives, negatives - the order infonce_loss expects
    for batch in batches:
        inst, q, pos, neg = (list(x) for x in zip(*batch))
        encoded.append(text_tok.encode(q, inst) + text_tok.encode(pos) + text_tok.encode(neg))
    n_params = sum(p.numel() for p in decoder.parameters())
    model_desc = (f"random chatml/llama, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
                  f"{args.kv_heads} kv heads ({n_params / 1e6:.2f}M decoder params), fp32")
    host = (f"{env['cpu']}, {env['cores']} cores, torch threads {env['torch_threads']}, 1-min load at start "
            f"{env['load_avg_1min_at_start']:.2f}; torch {env['torch']}, transformers {env['transformers']}, "
            f"embedtrain {env['embedtrain']}; commit {env['commit']}; {env['date']}")
    print(f"model: {model_desc}\ndata: short = {source['short']}; long = {source['long']}\nhost: {host}")

    modes = {}
    for name, embed, module in (("packed", packed_embed, packed_model), ("padded", padded_embed, decoder)):
        params = [q for q in module.parameters() if q.requires_grad]
        modes[name] = dict(embed=embed, module=module, params=params, opt=torch.optim.AdamW(params, lr=args.lr),
                           losses=[], totals=dict.fromkeys(("time", "cpu", "real", "computed", "budget"), 0))
    sampler = RssSampler()
    sampler.start()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", lambda _: 0)  # glibc only
    for step in tqdm(range(args.warmup + args.steps), desc="steps (packed+padded)", unit="step"):
        for name in (("packed", "padded") if step % 2 == 0 else ("padded", "packed")):
            m = modes[name]
            if step < args.warmup:  # memory only here: trimming costs page faults we must not time
                trim(0)  # hand freed memory back so this mode's peak is its own, not the other's leftovers
                sampler.mode = name
            r = train_step(m, encoded[step], args, text_tok.pad_id)
            sampler.mode = None
            m["losses"].append(r["loss"])
            m["shape"] = r["shape"]
            if step >= args.warmup:
                for key in m["totals"]:
                    m["totals"][key] += r[key]
        if step == 0:
            first = {n: modes[n]["losses"][0] for n in modes}
            if abs(first["packed"] - first["padded"]) > LOSS_TOL:
                sys.exit(f"FAIL: first-batch loss differs: packed {first['packed']:.6f} vs padded "
                         f"{first['padded']:.6f} (tolerance {LOSS_TOL}); the packed path is wrong")

    res = {}
    for name, m in modes.items():
        t = m["totals"]
        res[name] = {"real_tok_s": t["real"] / t["time"], "computed_tok_s": t["computed"] / t["time"],
                     "efficiency": t["real"] / t["computed"], "fill": t["real"] / t["budget"],
                     "step_s": t["time"] / args.steps, "cpu_s_per_step": t["cpu"] / args.steps,
                     "peak_rss_MiB": round(sampler.peak_MiB.get(name, 0.0)), "last_batch": m["shape"],
                     **{k: t[k] for k in ("real", "computed", "budget")}, "losses": m["losses"]}
    ratio, eff = res["packed"]["real_tok_s"] / res["padded"]["real_tok_s"], res["packed"]["efficiency"]
    checks = {"ratio": ratio, "ratio_ok": ratio >= TARGET_RATIO, "efficiency": eff,
              "efficiency_ok": eff >= TARGET_EFFICIENCY, "first_loss": first,
              "first_loss_abs_diff": abs(first["packed"] - first["padded"])}
    rows = ["| mode | real tok/s | computed tok/s | efficiency | step (s) | CPU s/step | peak RSS (MiB) | last batch |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {n} | {r['real_tok_s']:.0f} | {r['computed_tok_s']:.0f} | {r['efficiency']:.3f} | {r['step_s']:.2f} "
             f"| {r['cpu_s_per_step']:.2f} | {r['peak_rss_MiB']} | {r['last_batch']} |" for n, r in res.items()]
    verdict = [f"packed/padded real tokens/s: **{ratio:.2f}x** (target >= {TARGET_RATIO}x: "
               f"{'PASS' if checks['ratio_ok'] else 'FAIL'})",
               f"packing efficiency (real / computed tokens): **{eff:.3f}** (target >= {TARGET_EFFICIENCY}: "
               f"{'PASS' if checks['efficiency_ok'] else 'FAIL'}); stream fill (real / streams x max_tokens): "
               f"{res['packed']['fill']:.3f}",
               f"first-batch loss: packed {first['packed']:.6f}, padded {first['padded']:.6f} "
               f"(|diff| {checks['first_loss_abs_diff']:.1e} <= {LOSS_TOL})"]
    if env["load_avg_1min_at_start"] > 0.5:
        verdict.append(f"WARNING: host not idle (1-min load {env['load_avg_1min_at_start']:.2f}): timings are noisy")
    setup = (f"{args.steps} measured + {args.warmup} warmup steps per mode, interleaved; batch {args.batch_size} "
             f"examples x 3 texts, {args.long_frac:.0%} with 256-512-token passages; max_length {args.max_length}, "
             f"max_tokens {args.max_tokens}, pad_multiple {args.pad_multiple}, seed {args.seed}; model: {model_desc}")
    md = "\n".join(["# Packed vs padded training throughput", "", setup, "", f"Host: {host}", "",
                    f"Data: short = {source['short']}; long = {source['long']}", "", *rows, "",
                    *[f"- {v}" for v in verdict], ""])
    print("\n" + "\n".join(rows + [""] + verdict))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"packing_throughput_{env['date'][:10].replace('-', '')}"
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "env": env,
              "data": source, "results": res, "checks": checks,
              "targets": {"ratio": TARGET_RATIO, "efficiency": TARGET_EFFICIENCY, "loss_tol": LOSS_TOL}}
    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), md)
    print(f"saved {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
