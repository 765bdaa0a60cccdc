"""Tests 1-2: packed streams give each text exactly the states it gets alone, in both directions."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from embedtrain.config.schema import ModelConfig
from embedtrain.data.packing import TextTokenizer, pack_texts
from embedtrain.model.attention import PackedAttention
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.tiny import make_tiny_model

from conftest import FAMILIES

TEXTS = ["short one", "a considerably longer text about packed attention in transformers", "x",
         "equal len A", "equal len B", "the quick brown fox jumps over the lazy dog"]
INSTRUCTIONS = ["Retrieve the word", None, None, "Retrieve the word", None, None]


def _packed_and_reference(path, family, attention):
    tok = load_tokenizer(str(path))
    model = build_model(ModelConfig(path=str(path), family=family, attention=attention), tok, torch.device("cpu"))
    model.eval()
    text_tok = TextTokenizer(tok, model.family, 128, "Instruct: {instruction}\nQuery: ")
    encoded = text_tok.encode(TEXTS, INSTRUCTIONS)
    (stream,) = pack_texts(encoded, 4096, text_tok.pad_id, pad_to_multiple_of=16)
    ref = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    return model, text_tok, encoded, stream, ref


def _reference_states(ref, ids, attention):
    ids = torch.tensor(ids)[None]
    mask = None
    if attention == "bidirectional":  # a full (all-true) 4D mask: every token sees every token
        mask = torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool)
    return ref.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[0]


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_packed_equals_one_text_at_a_time(tiny_models, family, attention):
    model, _, encoded, stream, ref = _packed_and_reference(tiny_models[family], family, attention)
    assert stream.num_tokens > stream.num_real_tokens  # the padding segment is exercised too
    hidden = model.hidden_states(stream)
    emb = model(stream)
    for seg, text_id in enumerate(stream.text_ids):
        a, b = int(stream.cu_seqlens[seg]), int(stream.cu_seqlens[seg + 1])
        alone = _reference_states(ref, encoded[text_id].ids, attention)
        assert (hidden[a:b] - alone).abs().max().item() <= 1e-5, (family, attention, text_id)
        assert (emb[seg] - alone[-1]).abs().max().item() <= 1e-5  # last-token (EOS) embedding


@pytest.mark.parametrize("family", ["chatml", "gemma"])
@torch.no_grad()
def test_mean_pooling_excludes_instruction(tiny_models, family):
    tok = load_tokenizer(str(tiny_models[family]))
    model = build_model(ModelConfig(path=str(tiny_models[family]), family=family, pooling="mean"), tok,
                        torch.device("cpu")).eval()
    text_tok = TextTokenizer(tok, model.family, 128, "Instruct: {instruction}\nQuery: ")
    enc = text_tok.encode(["what is a dog"], ["Retrieve the word"])[0]
    (stream,) = pack_texts([enc], 4096, text_tok.pad_id)
    hidden = model.hidden_states(stream)
    inst_len = len(text_tok.encode(["z"], ["Retrieve the word"])[0].ids) - len(text_tok.encode(["z"])[0].ids)
    assert inst_len > 0 and enc.pool_from == len(text_tok.prefix_ids) + inst_len
    expected = hidden[enc.pool_from:].mean(0)
    assert torch.allclose(model(stream)[0], expected, atol=1e-6)
    assert not torch.allclose(hidden.mean(0), expected, atol=1e-3)


@torch.no_grad()
def test_isolation_and_direction(tmp_path):
    path = make_tiny_model("chatml", tmp_path / "m")
    tok = load_tokenizer(str(path))
    results = {}
    for attention in ("causal", "bidirectional"):
        model = build_model(ModelConfig(path=str(path), family="chatml", attention=attention), tok,
                            torch.device("cpu")).eval()
        text_tok = TextTokenizer(tok, model.family, 128, "{instruction}")
        a, b, b2 = text_tok.encode(["first text stays put", "second text", "second text, now different!"])
        s1 = pack_texts([a, b], 4096, 0)[0]
        s2 = pack_texts([a, b2], 4096, 0)[0]
        # First-fit-decreasing puts the longest first; find text 0's segment in each stream.
        def states_of(stream, text_id):
            seg = stream.text_ids.index(text_id)
            return model.hidden_states(stream)[int(stream.cu_seqlens[seg]):int(stream.cu_seqlens[seg + 1])]
        # Isolation: changing text 2 leaves text 1 untouched (bit for bit is too strict across kernels).
        assert (states_of(s1, 0) - states_of(s2, 0)).abs().max() <= 1e-6
        # Direction: change the LAST content token of a text and look at earlier positions.
        ids = list(a.ids)
        changed = ids.copy()
        changed[-3] = (changed[-3] + 1) % 200
        h = model.hidden_states(pack_texts([type(a)(ids, 0, False)], 4096, 0)[0])
        h2 = model.hidden_states(pack_texts([type(a)(changed, 0, False)], 4096, 0)[0])
        results[attention] = (h[:-3] - h2[:-3]).abs().max().item()
    assert results["causal"] == 0.0  # a later token never changes an earlier state
    assert results["bidirectional"] > 1e-4  # in bidirectional mode it does


def _segment_attention(q, k, v, cu, causal, scale):
    """(T, H, D) attention within each segment, the semantics every varlen kernel shares."""
    out = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=causal, scale=scale)
        out.append(o.transpose(0, 1))
    return torch.cat(out)


# torch's varlen_attn as three releases spell it: 2.9 (is_causal, no scale), 2.10/2.11 (window_size,
# scale, no GQA), 2.12+ (window_size, scale, enable_gqa). Each stand-in computes with the semantics
# its arguments state, so a wrongly adapted call gives a wrong result.
def _varlen_2_9(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
    assert k.shape[1] == q.shape[1], "no GQA in this release"
    return _segment_attention(q, k, v, cu_q, is_causal, None)


def _varlen_2_10(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
    assert k.shape[1] == q.shape[1], "no GQA in this release"
    assert window_size in ((-1, -1), (-1, 0))
    return _segment_attention(q, k, v, cu_q, window_size == (-1, 0), scale)


def _varlen_2_12(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1),
                 enable_gqa=False):
    if enable_gqa:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return _segment_attention(q, k, v, cu_q, window_size == (-1, 0), scale)


@pytest.mark.parametrize("kernel", [_varlen_2_9, _varlen_2_10, _varlen_2_12])
@pytest.mark.parametrize("causal", [True, False])
def test_torch_varlen_adapts_to_each_release_signature(monkeypatch, kernel, causal):
    import torch.nn.attention.varlen as varlen
    from embedtrain.model import attention as A

    monkeypatch.setattr(varlen, "varlen_attn", kernel)
    torch.manual_seed(0)
    cu = torch.tensor([0, 3, 10, 11, 16], dtype=torch.int32)
    q, k, v = torch.randn(4, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 16, 8)  # (H, T, D), GQA 4 / 2
    exact = PackedAttention.build(cu, causal, "sdpa")
    ref, _ = A.packed_attention_forward(None, q[None], k[None], v[None], None, scaling=8 ** -0.5, packed=exact)
    packed = PackedAttention.build(cu, causal, "torch_varlen")
    out, _ = A.packed_attention_forward(None, q[None], k[None], v[None], None, scaling=8 ** -0.5, packed=packed)
    assert (out - ref).abs().max().item() < 1e-5
    if kernel is _varlen_2_9:  # no scale argument: a non-default scale must be refused, not ignored
        with pytest.raises(NotImplementedError, match="scale"):
            A.packed_attention_forward(None, q[None], k[None], v[None], None, scaling=0.5, packed=packed)
