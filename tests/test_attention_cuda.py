"""Packed varlen attention on CUDA (flash-attn or PyTorch's varlen kernel) against an fp32 reference.

Runs only where a GPU is present (the device machine; CI has none and skips it). Errors are measured
as ||out - ref|| / ||ref|| against fp32 attention computed text by text from the same bf16 inputs, and
bounded by bf16's own rounding: at most twice the error of PyTorch's bf16 SDPA on each text alone,
plus a small absolute floor. Gradients (dQ, dK, dV) likewise. Then the whole model: bf16 on the GPU
kernel vs fp32 with the exact sdpa backend, pooled embeddings of packed texts.
"""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from embedtrain.model.attention import PackedAttention, packed_attention_forward, pick_backend

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BACKENDS = [b for b, ok in (("flash_attn", importlib.util.find_spec("flash_attn") is not None),
                            ("torch_varlen", importlib.util.find_spec("torch.nn.attention.varlen") is not None)) if ok]
LENGTHS = [1, 17, 128, 300, 555, 64]  # ragged, a 1-token text, T = 1065


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _reference(q_HTD, k_HTD, v_HTD, cu, causal, scale):
    """fp32 math attention text by text; k/v heads repeated for GQA."""
    rep = q_HTD.shape[0] // k_HTD.shape[0]
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        q, k, v = (x[:, a:b].float() for x in (q_HTD, k_HTD, v_HTD))
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        s = q @ k.transpose(1, 2) * scale
        if causal:
            s = s.masked_fill(torch.ones(b - a, b - a, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
        outs.append((s.softmax(-1) @ v).transpose(0, 1))  # (L, H, D)
    return torch.cat(outs)


def _bf16_sdpa(q_HTD, k_HTD, v_HTD, cu, causal, scale):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o = F.scaled_dot_product_attention(q_HTD[None, :, a:b], k_HTD[None, :, a:b], v_HTD[None, :, a:b],
                                           is_causal=causal and b - a > 1, scale=scale, enable_gqa=True)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


@cuda
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", BACKENDS or ["none"])
def test_varlen_kernel_matches_fp32_reference(backend, causal):
    if backend == "none":
        pytest.skip("neither flash-attn nor torch.nn.attention.varlen is available")
    torch.manual_seed(0)
    dev, hq, hkv, d = torch.device("cuda"), 8, 2, 64
    cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), device=dev, dtype=torch.int32)
    t, scale = int(cu[-1]), d ** -0.5
    q, k, v = (torch.randn(h, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for h in (hq, hkv, hkv))
    packed = PackedAttention.build(cu, causal, backend)
    out_THD, _ = packed_attention_forward(None, q[None], k[None], v[None], None, scaling=scale, packed=packed)
    out_THD = out_THD[0]
    ref_THD = _reference(q, k, v, cu, causal, scale)
    base_THD = _bf16_sdpa(q, k, v, cu, causal, scale)
    err, bound = _rel(out_THD, ref_THD), 2 * _rel(base_THD, ref_THD) + 1e-3
    assert err <= bound, f"{backend} causal={causal}: rel error {err:.2e} > bf16 bound {bound:.2e}"

    g_THD = torch.randn_like(ref_THD)
    grads = torch.autograd.grad(out_THD, (q, k, v), g_THD.to(out_THD.dtype))
    ref_grads = torch.autograd.grad(ref_THD, (q, k, v), g_THD)
    base_grads = torch.autograd.grad(base_THD, (q, k, v), g_THD.to(base_THD.dtype))
    for name, g, r, b in zip("qkv", grads, ref_grads, base_grads):
        err, bound = _rel(g, r), 2 * _rel(b, r) + 1e-3
        assert err <= bound, f"{backend} causal={causal} d{name}: rel error {err:.2e} > bf16 bound {bound:.2e}"


@cuda
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@torch.no_grad()
def test_model_on_gpu_kernel_matches_fp32(tiny_models, attention):
    from embedtrain.config.schema import ModelConfig
    from embedtrain.data.packing import TextTokenizer, pack_texts
    from embedtrain.model.embedder import build_model, load_tokenizer

    dev = torch.device("cuda")
    backend = pick_backend("auto", dev, torch.bfloat16)
    if backend == "sdpa":
        pytest.skip("no varlen kernel on this GPU install")
    path = str(tiny_models["llama3"])
    tok = load_tokenizer(path)
    texts = ["a short text", "x", "packed attention keeps every text to itself " * 20, "another one"]
    emb = {}
    for dtype, be in (("bfloat16", "auto"), ("float32", "sdpa")):
        model = build_model(ModelConfig(path=path, family="llama3", attention=attention, dtype=dtype,
                                        attn_backend=be), tok, dev).eval()
        text_tok = TextTokenizer(tok, model.family, 512, "Instruct: {instruction}\nQuery: ")
        (stream,) = pack_texts(text_tok.encode(texts), 4096, text_tok.pad_id, pad_to_multiple_of=64)
        emb[dtype] = model(stream.to(dev)).float()
        assert model.backend == (backend if dtype == "bfloat16" else "sdpa")
    cos = F.cosine_similarity(emb["bfloat16"], emb["float32"], dim=-1)
    assert cos.min().item() > 0.99, cos
