"""Issue 3 tests 1-3: the packed, chunked reconstruction loss and its gradients equal a plain
reference (full logits, one pair at a time), and the anchor really conditions the decoding."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from embedtrain.config.schema import ModelConfig
from embedtrain.data.batches import MicroBatchBuilder
from embedtrain.data.jsonl import build_index
from embedtrain.data.packing import TextTokenizer
from embedtrain.model.embedder import build_model, load_tokenizer
from embedtrain.objectives.reconstruction import Reconstruction, ReconstructionOptions

from test_distributed import DATA

N_PAIRS = 6


def _batch(path, family, max_tokens=200):
    tok = load_tokenizer(str(path))
    model = build_model(ModelConfig(path=str(path), family=family), tok, torch.device("cpu"))
    text_tok = TextTokenizer(tok, model.family, 72, "Instruct: {instruction}\nQuery: ")
    builder = MicroBatchBuilder(build_index([str(DATA)]), text_tok, max_tokens, 1, {}, "Retrieve the word",
                                max_negatives=0)
    return model, builder.build(list(range(N_PAIRS)))


def _reference(path, batch, alpha):
    """Stock HF model, eager attention, one text per forward, full (n, V) logits."""
    ref = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager")
    q_ids = [t.ids for t in batch.texts[:N_PAIRS]]
    d_ids = [t.ids for t in batch.texts[N_PAIRS:2 * N_PAIRS]]

    def anchor(ids):
        return ref.model(input_ids=torch.tensor(ids)[None]).last_hidden_state[0, -1]

    def decode_ce(anchor_H, ids):
        tokens = ref.model.embed_tokens(torch.tensor(ids[:-2], dtype=torch.long))
        embeds = torch.cat([anchor_H[None], tokens])[None]
        logits = ref(inputs_embeds=embeds).logits[0]  # (n-1, V): every position, full vocabulary
        return F.cross_entropy(logits, torch.tensor(ids[:-1]), reduction="sum"), len(ids) - 1

    q2d = [decode_ce(anchor(q), d) for q, d in zip(q_ids, d_ids)]
    d2q = [decode_ce(anchor(d), q) for q, d in zip(q_ids, d_ids)]
    l_q2d = sum(c for c, _ in q2d) / sum(n for _, n in q2d)
    l_d2q = sum(c for c, _ in d2q) / sum(n for _, n in d2q)
    loss = alpha * l_q2d + (1 - alpha) * l_d2q
    loss.backward()
    return loss.item(), {f"lm.{n}": p.grad for n, p in ref.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["chatml", "qwen3"])
@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
def test_packed_chunked_loss_and_grads_equal_reference(tiny_models, family, alpha):
    model, batch = _batch(tiny_models[family], family)
    assert len(batch.streams) > 1  # the anchor pass spans several packed streams
    objective = Reconstruction(ReconstructionOptions(alpha=alpha, logits_chunk=7), torch.device("cpu"))
    loss, metrics = objective.loss(model, batch)
    loss.backward()
    ref_loss, ref_grads = _reference(tiny_models[family], batch, alpha)
    assert abs(loss.item() - ref_loss) <= 1e-5 and abs(metrics["loss"] - ref_loss) <= 1e-5
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(ref_grads)  # LM head and embeddings included
    worst = max((got[n] - ref_grads[n]).abs().max().item() for n in got)
    assert worst <= 1e-5, f"max gradient difference {worst}"


def test_direction_switches_equal_alpha_extremes(tiny_models):
    model, batch = _batch(tiny_models["chatml"], "chatml")
    run = lambda **kw: Reconstruction(ReconstructionOptions(**kw), torch.device("cpu")).loss(model, batch)[0].item()
    assert run(alpha=0.2, d2q=False) == pytest.approx(run(alpha=1.0), abs=1e-6)
    assert run(alpha=0.2, q2d=False) == pytest.approx(run(alpha=0.0), abs=1e-6)


@torch.no_grad()
def test_anchor_conditions_the_decoding(tiny_models):
    model, batch = _batch(tiny_models["chatml"], "chatml")
    objective = Reconstruction(ReconstructionOptions(alpha=1.0), torch.device("cpu"))
    q = N_PAIRS
    from embedtrain.objectives.base import embed_batch

    anchors = embed_batch(model, batch, torch.device("cpu"))[:q]
    targets = batch.texts[q:2 * q]
    base, _, _ = objective._direction(model, batch, anchors, targets)
    perturbed, _, _ = objective._direction(model, batch, anchors + 0.5 * torch.randn_like(anchors), targets)
    zeros, _, _ = objective._direction(model, batch, torch.zeros_like(anchors), targets)
    assert abs(base - perturbed) > 1e-3 and abs(base - zeros) > 1e-3


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_fused_and_checkpointed_chunking_equal_full_logits(chunk):
    """Both chunked paths (fused for plain weights, checkpointed module calls for ZeRO-3) == full logits."""
    from embedtrain.objectives import reconstruction as R

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(23, 16, requires_grad=True)
    y = torch.randint(0, 50, (23,))
    results = []
    for mode in ("full", "fused", "checkpointed"):
        h.grad = head.weight.grad = None
        if mode == "full":
            loss = F.cross_entropy(head(h), y, reduction="sum")
        elif mode == "fused":
            loss = R.chunked_ce_sum(h, y, head, chunk, n_chunks=0)
        else:
            head.weight.ds_id = 0  # looks ZeRO-3 partitioned: the module-call path
            loss = R.chunked_ce_sum(h, y, head, chunk, n_chunks=-(-23 // chunk) + 1)  # one empty chunk too
            del head.weight.ds_id
        (2.5 * loss).backward()
        results.append((loss.detach(), h.grad.clone(), head.weight.grad.clone()))
    for loss, gh, gw in results[1:]:
        assert torch.allclose(loss, results[0][0], atol=1e-4)
        assert (gh - results[0][1]).abs().max() <= 1e-5 and (gw - results[0][2]).abs().max() <= 1e-5


def test_truncated_text_keeps_eos_as_anchor_and_decoding_target(tiny_models):
    from embedtrain.data.jsonl import Example

    path = tiny_models["llama3"]
    tok = load_tokenizer(str(path))
    model = build_model(ModelConfig(path=str(path), family="llama3"), tok, torch.device("cpu"))
    text_tok = TextTokenizer(tok, model.family, 48, "Instruct: {instruction}\nQuery: ")
    builder = MicroBatchBuilder(build_index([str(DATA)]), text_tok, 512, 1, {}, "Find", max_negatives=0)
    long_text = "a very long passage " * 100
    batch = builder.from_examples([Example(long_text, long_text, [], "t", None), Example("q", "d", [], "t", None)])
    eos = tok.convert_tokens_to_ids("<|eot_id|>")
    assert batch.truncated == 2 and all(len(t.ids) <= 48 and t.ids[-1] == eos for t in batch.texts)
    for s in batch.streams:  # the anchor (last-token pooling) reads exactly the EOS position
        assert (s.input_ids[s.last_index] == eos).all()
    from embedtrain.objectives.reconstruction import decoding_inputs

    inputs, labels = decoding_inputs(batch.texts)
    for t, i, y in zip(batch.texts, inputs, labels):  # EOS is neither decoded input nor label
        assert y == t.ids[:-1] and i.ids[1:] == t.ids[:-2] and len(i.ids) == len(y)
