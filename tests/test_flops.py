"""The FLOP formula against a small case worked out by hand."""
from types import SimpleNamespace

from embedtrain.flops import forward_flops, train_flops

CFG = SimpleNamespace(hidden_size=4, num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                      intermediate_size=8, num_hidden_layers=1, vocab_size=10)


def test_hand_computed_small_case():
    # Two packed texts of 3 and 2 tokens (T = 5), causal, logits at all 5 positions.
    #   q/k/v projections: 2 * 5 * 4 * (4 + 2 * 2)     = 320
    #   output projection: 2 * 5 * 4 * 4              = 160
    #   MLP, 3 matrices:   3 * 2 * 5 * 4 * 8          = 960
    #   attention: causal pairs 3*4/2 + 2*3/2 = 9; 4 * 9 * head_dim 2 * heads 2 = 144
    #   LM head:           2 * 5 * 4 * 10             = 400
    assert forward_flops(CFG, [3, 2], causal=True, logit_positions=5) == 320 + 160 + 960 + 144 + 400
    assert train_flops(CFG, [3, 2], causal=True, logit_positions=5) == 3 * 1984
    # Frozen weights (LoRA base, compression backbone): weight matmuls and the head backward only for
    # the input gradient (x2 in all), attention still needs dQ, dK, dV (x3): 2 * (1440 + 400) + 3 * 144.
    assert train_flops(CFG, [3, 2], causal=True, logit_positions=5, weights_train=False) == 3680 + 432
    # Bidirectional: 3*3 + 2*2 = 13 pairs -> 4 * 13 * 2 * 2 = 208 instead of 144; no logits.
    assert forward_flops(CFG, [3, 2], causal=False) == 320 + 160 + 960 + 208
    # Packing never counts pairs across texts: one 5-token text has more attention work.
    assert forward_flops(CFG, [5]) - forward_flops(CFG, [3, 2]) == 4 * (15 - 9) * 2 * 2


def test_layers_scale_and_real_config_shape():
    from transformers import LlamaConfig

    two = SimpleNamespace(**{**vars(CFG), "num_hidden_layers": 2})
    assert forward_flops(two, [3, 2]) == 2 * forward_flops(CFG, [3, 2])
    # Llama-3.2-1B shape: about 2 * 1.24e9 non-embedding+head params per token, order-of-magnitude check.
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, head_dim=64)
    per_token = forward_flops(cfg, [1]) / 1
    assert 1.9e9 < per_token < 2.0e9  # 2 x 0.97e9 decoder weights (no embeddings, no head)


def test_infonce_reports_the_same_flops_with_and_without_grad_cache(tiny_models):
    """The objective's per-micro-batch count equals the formula over the texts' own lengths (pads and
    pairs across packed texts excluded), and gradient caching's extra no-grad pass is not counted."""
    import torch

    from embedtrain.config.schema import LoraConfig
    from embedtrain.objectives.base import FlopSpec, StepContext
    from embedtrain.objectives.infonce import InfoNCE, InfoNCEOptions
    from test_objective import _setup

    model, builder = _setup(tiny_models["chatml"], max_tokens=128, lora=LoraConfig(enabled=True, r=4))
    batch = builder.build(list(range(12)))
    assert len(batch.streams) >= 3 and batch.computed_tokens == batch.real_tokens  # pad_multiple 1
    expected = train_flops(model.decoder().config, [len(t.ids) for t in batch.texts], True, 0, weights_train=False)
    for grad_cache in (False, True):
        objective = InfoNCE(InfoNCEOptions(grad_cache=grad_cache), torch.device("cpu"))
        step = StepContext(flops=FlopSpec(model.decoder().config, False, True))
        metrics = objective.forward_backward(model, batch, lambda loss, final: loss.backward(), step)
        assert metrics["flops"] == expected > 0
