"""Model families: the one place that knows each family's chat template, EOS and LoRA targets.

A text to embed is wrapped as one user turn of the family's chat template and ends with the family's
end-of-turn token, whose final hidden state is the "last token" embedding. Everything that differs
between families lives here; nothing else in embedtrain branches on the family.
"""
from __future__ import annotations

from dataclasses import dataclass

_ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF config.model_type values this family can run on
    prefix: str  # template text before the user content
    suffix: str  # template text after the content, up to (not including) the EOS token
    eos_token: str  # end-of-turn token; the anchor/last-token embedding is read here
    bos_token: str | None = None  # prepended when the family's tokenizer expects it
    lora_targets: tuple[str, ...] = tuple(_ALL_PROJ)
    special_tokens: tuple[str, ...] = ()  # template tokens that must be single tokens
    # Generation (compression data step): text after prefix + query + suffix that closes the user turn
    # and opens the assistant's. Used when the tokenizer carries no chat template of its own.
    assistant_open: str = ""
    chat_template_kwargs: tuple[tuple[str, object], ...] = ()  # extra apply_chat_template arguments

    def all_special(self) -> list[str]:
        return sorted({self.eos_token, *self.special_tokens} | ({self.bos_token} if self.bos_token else set()))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama3", ("llama",), "<|start_header_id|>user<|end_header_id|>\n\n", "", "<|eot_id|>",
               bos_token="<|begin_of_text|>", special_tokens=("<|start_header_id|>", "<|end_header_id|>"),
               assistant_open="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        # ChatML: SmolLM2 (a llama architecture), Qwen2/2.5.
        Family("chatml", ("llama", "qwen2", "mistral"), "<|im_start|>user\n", "", "<|im_end|>",
               special_tokens=("<|im_start|>",), assistant_open="<|im_end|>\n<|im_start|>assistant\n"),
        Family("qwen2", ("qwen2",), "<|im_start|>user\n", "", "<|im_end|>", special_tokens=("<|im_start|>",),
               assistant_open="<|im_end|>\n<|im_start|>assistant\n"),
        # Qwen3 answers in non-thinking mode: an empty think block opens the assistant turn.
        Family("qwen3", ("qwen3",), "<|im_start|>user\n", "", "<|im_end|>", special_tokens=("<|im_start|>",),
               assistant_open="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
               chat_template_kwargs=(("enable_thinking", False),)),
        # Mistral instruct: the turn ends with the tokenizer's </s>.
        Family("mistral", ("mistral",), "[INST] ", " [/INST]", "</s>", bos_token="<s>",
               special_tokens=("[INST]", "[/INST]")),  # the answer follows [/INST] directly
        Family("gemma", ("gemma", "gemma2"), "<start_of_turn>user\n", "", "<end_of_turn>", bos_token="<bos>",
               special_tokens=("<start_of_turn>",), assistant_open="<end_of_turn>\n<start_of_turn>model\n"),
    ]
}


def detect_family(model_type: str, vocab: dict[str, int]) -> Family:
    """Pick the family whose model type and template tokens both match the checkpoint."""
    matches = [f for f in FAMILIES.values()
               if model_type in f.model_types and all(t in vocab for t in f.all_special())]
    # Several ChatML-style families can match (chatml, qwen2): prefer the model-type-named one.
    named = [f for f in matches if f.name == model_type]
    if named:
        return named[0]
    if matches:
        return matches[0]
    raise ValueError(
        f"cannot detect the model family for model_type={model_type!r}: none of "
        f"{', '.join(FAMILIES)} has all its template tokens in this tokenizer; set model.family")


def resolve_family(name: str, model_type: str, vocab: dict[str, int]) -> Family:
    if name == "auto":
        return detect_family(model_type, vocab)
    family = FAMILIES[name]
    if model_type not in family.model_types:
        raise ValueError(f"model.family={name!r} is for model types {family.model_types}, "
                         f"but the checkpoint's model_type is {model_type!r}")
    missing = [t for t in family.all_special() if t not in vocab]
    if missing:
        raise ValueError(f"model.family={name!r}: the tokenizer lacks the template tokens {missing}; "
                         "is this the instruct model's tokenizer?")
    return family
