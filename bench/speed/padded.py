"""Padded baselines in the style of the reference implementations, one per objective.

Every text of a batch is right-padded to the batch's longest ("dynamic padding") and run through the
stock Hugging Face model with a 2D attention mask (its own SDPA attention); decoding objectives take
logits at EVERY position of the padded batch and score them with cross-entropy (ignore_index -100).
Same weights, same LoRA init, same formatting and token ids, same loss definitions, same optimizer,
schedule and DeepSpeed config as the packed path: only packing, attention and the LM head differ.
At fp32 the first step's loss equals the packed path's (tests/test_train_speed.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedtrain.objectives.infonce import infonce_loss
from embedtrain.objectives.reconstruction import decoding_inputs


class PaddedModel(nn.Module):
    """A stock HF causal LM on (B, L) right-padded batches; `lm` and `family` as EmbeddingModel has them,
    so objectives' setup (compression: frozen backbone + new rows) works on it unchanged."""

    def __init__(self, lm: nn.Module, family):
        super().__init__()
        self.lm, self.family = lm, family

    def forward(self, ids_BL, mask_BL, inject=None, logits: bool = False) -> torch.Tensor:
        """(B, L, H) last-layer states, or (B, L, V) logits at every position. inject=(rows_P, cols_P,
        vectors_PH) replaces those input embeddings (soft prefixes, special tokens)."""
        embeds_BLH = self.lm.get_input_embeddings()(ids_BL)
        if inject is not None:
            rows_P, cols_P, vectors_PH = inject
            embeds_BLH = embeds_BLH.index_put((rows_P, cols_P), vectors_PH.to(embeds_BLH.dtype))
        hidden_BLH = self.lm.get_decoder()(inputs_embeds=embeds_BLH, attention_mask=mask_BL,
                                           use_cache=False).last_hidden_state
        return self.lm.get_output_embeddings()(hidden_BLH) if logits else hidden_BLH


def pad(seqs: list[list[int]], value: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L) ids right-padded to the longest, the (B, L) mask and the (B,) lengths."""
    lengths_B = torch.tensor([len(x) for x in seqs])
    out_BL = torch.full((len(seqs), int(lengths_B.max())), value, dtype=torch.long)
    for b, x in enumerate(seqs):
        out_BL[b, :len(x)] = torch.tensor(x, dtype=torch.long)
    mask_BL = (torch.arange(out_BL.shape[1])[None] < lengths_B[:, None]).long()
    return out_BL.to(device), mask_BL.to(device), lengths_B.to(device)


def build_padded_session(cfg, origin, device):
    """The trainer's session around the stock-attention model: same weights, LoRA init, optimizer, data."""
    from embedtrain.engine.session import build_session

    return build_session(cfg, origin, device, hf_attention="sdpa", wrap=lambda em: PaddedModel(em.lm, em.family))


def _queries(s, examples) -> tuple[list[str], list[str | None]]:
    """Query texts and their instructions; `s` is the Session of build_padded_session."""
    return [e.query for e in examples], [s.builder.instruction_for(e) for e in examples]


def _full_logits_ce_sum(logits_BLV: torch.Tensor, labels: list[list[int]], start: int, device) -> torch.Tensor:
    y_BL = torch.full(logits_BLV.shape[:2], -100, dtype=torch.long)
    for b, y in enumerate(labels):
        y_BL[b, start:start + len(y)] = torch.tensor(y)
    return F.cross_entropy(logits_BLV.float().flatten(0, 1), y_BL.flatten().to(device), reduction="sum")


def infonce_step(s, examples) -> tuple[torch.Tensor, dict, list[int]]:
    t = s.text_tok
    texts = t.encode(*_queries(s, examples)) + \
        t.encode([e.positive for e in examples] + [n for e in examples for n in e.negatives])
    ids, mask, lens = pad([x.ids for x in texts], t.pad_id, s.device)
    hidden_BLH = s.engine(ids, mask)
    emb_BH = hidden_BLH[torch.arange(len(texts), device=s.device), lens - 1]
    loss, metrics = infonce_loss(emb_BH, len(examples), s.options.temperature, s.options.symmetric)
    return loss, metrics, [ids.numel()]


def reconstruction_step(s, examples) -> tuple[torch.Tensor, dict, list[int]]:
    t, q = s.text_tok, len(examples)
    texts = t.encode(*_queries(s, examples)) + t.encode([e.positive for e in examples])
    ids, mask, lens = pad([x.ids for x in texts], t.pad_id, s.device)
    anchors_NH = s.engine(ids, mask)[torch.arange(len(texts), device=s.device), lens - 1]
    computed = [ids.numel()]
    w_q2d, w_d2q = s.options.weights()
    loss, metrics = anchors_NH.new_zeros((), dtype=torch.float32), {}
    for name, w, src, targets in (("q2d", w_q2d, anchors_NH[:q], texts[q:]), ("d2q", w_d2q, anchors_NH[q:], texts[:q])):
        if not w:
            continue
        inputs, labels = decoding_inputs(targets)
        ids, mask, _ = pad([x.ids for x in inputs], t.pad_id, s.device)
        rows = torch.arange(q, device=s.device)
        logits_BLV = s.engine(ids, mask, inject=(rows, torch.zeros_like(rows), src), logits=True)
        count = sum(len(y) for y in labels)
        part = _full_logits_ce_sum(logits_BLV, labels, 0, s.device) / count
        loss = loss + w * part
        metrics[f"loss_{name}"] = part.item()
        computed.append(ids.numel())
    metrics["loss"] = loss.item()
    return loss, metrics, computed


def compression_step(s, examples) -> tuple[torch.Tensor, dict, list[int]]:
    text, o, dev = s.objective.text, s.options, s.device
    head = s.engine.module.compression
    k, n, q = head.num_special, head.compression, len(examples)
    queries = text.queries(*_queries(s, examples))
    ids, mask, lens = pad([x.ids for x in queries], text.pad_id, dev)
    rows_QK = torch.arange(q, device=dev)[:, None].expand(q, k)
    cols_QK = lens[:, None] - k + torch.arange(k, device=dev)
    special_QKH = head.special(q).view(q, k, -1)
    hidden_BLH = s.engine(ids, mask, inject=(rows_QK.reshape(-1), cols_QK.reshape(-1), special_QKH.reshape(q * k, -1)))
    h_QnH = hidden_BLH[rows_QK[:, -n:], cols_QK[:, -n:]]
    p_QnH, z_QnD = head(h_QnH)
    e_QD = z_QnD.float().mean(1)
    targets_QD = torch.stack([e.target for e in examples]).float().to(dev)
    align = ((e_QD - targets_QD) ** 2).mean(-1).sum() / q
    inputs, labels = text.responses([e.positive for e in examples])
    ids2, mask2, _ = pad([x.ids for x in inputs], text.pad_id, dev)
    rows_Qn = torch.arange(q, device=dev)[:, None].expand(q, n)
    cols_Qn = torch.arange(n, device=dev)[None].expand(q, n)
    logits_BLV = s.engine(ids2, mask2, inject=(rows_Qn.reshape(-1), cols_Qn.reshape(-1), p_QnH.reshape(q * n, -1)),
                          logits=True)
    recon = _full_logits_ce_sum(logits_BLV, labels, n - 1, dev) / sum(len(y) for y in labels)
    loss = o.w_recon * recon + o.w_align * align
    metrics = {"loss_recon": recon.item(), "loss_align": align.item(), "loss": loss.item()}
    return loss, metrics, [ids.numel(), ids2.numel()]


STEPS = {"infonce": infonce_step, "reconstruction": reconstruction_step, "compression": compression_step}


def padded_train_step(s, step: int) -> dict:
    """One optimizer step over the same examples the packed trainer uses at this step."""
    acc, computed = {}, 0
    for m in range(s.gas):
        ids = s.order.global_batch_ids(step)[m * s.micro_global:(m + 1) * s.micro_global]
        loss, metrics, sizes = STEPS[s.cfg.train.objective](s, s.builder.read(ids))
        s.engine.backward(loss)
        computed += sum(sizes)
        for key, v in metrics.items():
            acc[key] = acc.get(key, 0.0) + v / s.gas
    s.engine.step()
    acc["computed_tokens"] = computed
    return acc
