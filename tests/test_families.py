"""The family registry: auto detection, and mismatches caught before training."""
import pytest

from embedtrain.families import FAMILIES, detect_family, resolve_family
from embedtrain.tiny import FAMILY_MODEL_TYPE, byte_tokenizer


@pytest.mark.parametrize("family", ["llama3", "chatml", "qwen2", "qwen3", "mistral", "gemma"])
def test_auto_detects_each_family_from_its_tokenizer(family):
    vocab = byte_tokenizer(family).get_vocab()
    assert detect_family(FAMILY_MODEL_TYPE[family], vocab).name == family
    assert resolve_family("auto", FAMILY_MODEL_TYPE[family], vocab).name == family


def test_mismatches_fail_loudly():
    with pytest.raises(ValueError, match="is for model types"):
        resolve_family("qwen3", "llama", byte_tokenizer("qwen3").get_vocab())
    with pytest.raises(ValueError, match=r"lacks the template tokens .*<\|eot_id\|>"):
        resolve_family("llama3", "llama", byte_tokenizer("chatml").get_vocab())
    with pytest.raises(ValueError, match="cannot detect the model family"):
        detect_family("llama", {"a": 0})


def test_every_family_has_template_eos_and_lora_targets():
    for f in FAMILIES.values():
        assert f.eos_token and f.prefix and f.lora_targets and f.model_types
