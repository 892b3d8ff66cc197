"""hw3's tests against typical mistakes: each mutant of the solution loses points, each honest
rewrite keeps them all, graded through the real `course grade` (harness: tests/mutants.py).

Mutants: a padding mask off by one, a sequence_mask that writes into X, a softmax over the
queries, masked scores filled with 0, -inf or d2l's -1e6, a mask dropped when valid_lens come
too, scores scaled by nothing, by d or by the values' width, keys transposed for 3-D inputs
only, additive attention without tanh or with its dropout missing, misplaced or always on, and
a Bahdanau decoder with one context for all steps, no source mask or no dropout. Rewrites: a
hand-written softmax, -inf then zeros, einsum, functional dropout, a decoder that fills
preallocated tensors.
"""

from __future__ import annotations

import pytest
from mutants import mutant_suite

pytestmark = pytest.mark.slow

# The solution's lines that the mutants edit (each must occur once in its cell).
FILL = "    scores = X.masked_fill(~mask, torch.finfo(X.dtype).min)\n"
SOFTMAX = "    return F.softmax(scores, dim=-1).masked_fill(~mask, 0.0)\n"
SCORES = "    scores = queries @ keys.transpose(-2, -1) / math.sqrt(d)  # (..., T_q, T_k)\n"
FEATURES = ("        features = torch.tanh(self.W_q(queries).unsqueeze(2) + "
            "self.W_k(keys).unsqueeze(1))\n")
WEIGHTS = "        self.attention_weights = masked_softmax(scores, valid_lens)\n"
MIX = "        return self.dropout(self.attention_weights) @ values  # (B, T_q, D_v)\n"
QUERY = "            query = hidden[-1].unsqueeze(1)  # (B, H) -> (B, 1, H)\n"
CONTEXT = ("            context = self.attention(query, enc_outputs, enc_outputs, src_valid_len)"
           "  # (B, 1, H)\n")

MUTANTS = {
    "padding_mask_off_by_one": ("padding_mask", [
        ("positions < valid_lens", "positions <= valid_lens")]),
    "sequence_mask_writes_into_X": ("sequence_mask", [
        ("X.masked_fill(~keep, value)", "X.masked_fill_(~keep, value)")]),
    "softmax_over_queries": ("masked_softmax", [
        ("return F.softmax(X, dim=-1)", "return F.softmax(X, dim=1)"),
        (SOFTMAX, SOFTMAX.replace("dim=-1", "dim=1"))]),
    "masked_with_zero": ("masked_softmax", [(FILL, FILL.replace("torch.finfo(X.dtype).min",
                                                                "0.0"))]),
    "masked_with_minus_inf": ("masked_softmax", [  # a fully masked row: NaN
        (FILL, FILL.replace("torch.finfo(X.dtype).min", 'float("-inf")')),
        (SOFTMAX, "    return F.softmax(scores, dim=-1)\n")]),
    "d2l_minus_1e6_fill": ("masked_softmax", [
        (FILL, FILL.replace("torch.finfo(X.dtype).min", "-1e6")),
        (SOFTMAX, "    return F.softmax(scores, dim=-1)\n")]),
    "mask_dropped_with_valid_lens": ("masked_softmax", [
        ("mask = keep if mask is None else mask & keep", "mask = keep")]),
    "sdpa_not_scaled": ("scaled_dot_product_attention", [
        (SCORES, SCORES.replace(" / math.sqrt(d)", ""))]),
    "sdpa_scaled_by_d": ("scaled_dot_product_attention", [
        (SCORES, SCORES.replace("math.sqrt(d)", "d"))]),
    "sdpa_scaled_by_value_width": ("scaled_dot_product_attention", [
        ("    d = queries.shape[-1]\n", "    d = values.shape[-1]\n")]),
    "sdpa_transpose_for_3d_only": ("scaled_dot_product_attention", [
        (SCORES, SCORES.replace("transpose(-2, -1)", "transpose(1, 2)"))]),
    "additive_without_tanh": ("additive_attention", [
        (FEATURES, FEATURES.replace("torch.tanh(", "(", 1))]),
    "additive_dropout_never_applied": ("additive_attention", [
        (MIX, "        return self.attention_weights @ values\n")]),
    "additive_weights_kept_after_dropout": ("additive_attention", [
        (WEIGHTS, "        self.attention_weights = self.dropout(masked_softmax(scores, "
                  "valid_lens))\n"),
        (MIX, "        return self.attention_weights @ values\n")]),
    "additive_dropout_on_scores": ("additive_attention", [
        (WEIGHTS, WEIGHTS.replace("(scores,", "(self.dropout(scores),")),
        (MIX, "        return self.attention_weights @ values\n")]),
    "additive_dropout_in_eval_mode": ("additive_attention", [
        (MIX, "        return F.dropout(self.attention_weights, self.dropout.p) @ values\n")]),
    "bahdanau_one_context_for_all_steps": ("bahdanau_decoder", [
        ("        X = self.embedding(dec_input)  # (B, T, E)\n",
         "        X = self.embedding(dec_input)  # (B, T, E)\n"
         "        first_query = hidden[-1].unsqueeze(1)\n"),
        (QUERY, "            query = first_query\n")]),
    "bahdanau_no_source_mask": ("bahdanau_decoder", [
        (CONTEXT, CONTEXT.replace(", src_valid_len)", ")"))]),
    "bahdanau_dropout_not_passed": ("bahdanau_decoder", [
        ("self.attention = AdditiveAttention(num_hiddens, num_hiddens, num_hiddens, dropout)",
         "self.attention = AdditiveAttention(num_hiddens, num_hiddens, num_hiddens)")]),
}

# name -> {answer cell: whole new source}: the same functions written differently.
REWRITES = {
    "own_softmax": {"masked_softmax": '''\
def masked_softmax(X, valid_lens=None, *, mask=None):
    """Softmax over the last axis that gives exactly zero weight to masked keys."""
    keep = torch.ones_like(X, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask
    if valid_lens is not None:
        lens = valid_lens if valid_lens.dim() == 2 else valid_lens[:, None]  # (B, T_q or 1)
        keep = keep & padding_mask(lens, X.shape[-1])  # (B, T_q or 1, T_k)
    scores = torch.where(keep, X, torch.finfo(X.dtype).min)
    exp = torch.exp(scores - scores.amax(dim=-1, keepdim=True)) * keep
    return exp / exp.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
'''},
    # -inf is fine when the masked weights are set to 0 after the softmax: a fully masked row's
    # NaN is overwritten, and masked_fill passes no gradient to the positions it fills.
    "minus_inf_then_zero": {"masked_softmax": '''\
def masked_softmax(X, valid_lens=None, *, mask=None):
    """Softmax over the last axis that gives exactly zero weight to masked keys."""
    if valid_lens is not None:
        if valid_lens.dim() == 1:
            valid_lens = valid_lens[:, None].expand(X.shape[:2])  # (B,) -> (B, T_q)
        keep = padding_mask(valid_lens, X.shape[-1])  # (B, T_q, T_k)
        mask = keep if mask is None else mask & keep
    if mask is None:
        return X.softmax(dim=-1)
    weights = X.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # a fully masked row: NaN
    return weights.masked_fill(~mask, 0.0)
'''},
    "einsum_and_functional_dropout": {"scaled_dot_product_attention": '''\
def scaled_dot_product_attention(queries, keys, values, valid_lens=None, *, mask=None):
    """softmax(Q K^T / sqrt(d)) V with masking; returns (output, weights)."""
    if queries.shape[-1] != keys.shape[-1] or keys.shape[-2] != values.shape[-2]:
        raise ValueError(f"shapes do not fit: queries {tuple(queries.shape)}, keys "
                         f"{tuple(keys.shape)}, values {tuple(values.shape)}")
    scores = torch.einsum("...qd,...kd->...qk", queries * queries.shape[-1] ** -0.5, keys)
    weights = masked_softmax(scores, valid_lens, mask=mask)
    return torch.einsum("...qk,...kv->...qv", weights, values), weights
''', "additive_attention": '''\
class AdditiveAttention(nn.Module):
    """Bahdanau's attention: a one-hidden-layer MLP scores each (query, key) pair."""

    def __init__(self, num_hiddens, query_size, key_size, dropout=0.0):
        super().__init__()
        self.attention_weights = None
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, keys, values, valid_lens=None):
        q = self.W_q(queries)[:, :, None, :]  # (B, T_q, 1, h)
        k = self.W_k(keys)[:, None, :, :]  # (B, 1, T_k, h)
        scores = torch.einsum("bqkh,h->bqk", torch.tanh(q + k), self.w_v.weight[0])
        self.attention_weights = masked_softmax(scores, valid_lens)
        mixing = F.dropout(self.attention_weights, self.dropout.p, training=self.training)
        return torch.einsum("bqk,bkv->bqv", mixing, values)
'''},
    "decoder_fills_preallocated_tensors": {"bahdanau_decoder": '''\
class BahdanauDecoder(nn.Module):
    """GRU decoder whose context is recomputed at every step by additive attention."""

    def __init__(self, vocab_size, embed_size, num_hiddens, dropout=0.0):
        super().__init__()
        self.attention_weights = None
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.attention = AdditiveAttention(num_hiddens, num_hiddens, num_hiddens,
                                           dropout=dropout)
        self.rnn = nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers=1,
                          batch_first=True)
        self.output = nn.Linear(num_hiddens, vocab_size)

    def forward(self, dec_input, enc_outputs, hidden, src_valid_len):
        B, T = dec_input.shape
        outputs = enc_outputs.new_zeros(B, T, hidden.shape[-1])
        self.attention_weights = enc_outputs.new_zeros(B, T, enc_outputs.shape[1])
        for t, embedded in enumerate(self.embedding(dec_input).unbind(dim=1)):  # (B, E) each
            context = self.attention(hidden[0][:, None], enc_outputs, enc_outputs,
                                     src_valid_len)[:, 0]  # (B, H)
            step_input = torch.cat([embedded, context], dim=-1)[:, None]  # (B, 1, E + H)
            output, hidden = self.rnn(step_input, hidden)
            outputs[:, t] = output[:, 0]
            self.attention_weights[:, t] = self.attention.attention_weights[:, 0]
        return self.output(outputs), hidden
'''},
}

# mutant -> the targeted test that must catch it (others may fail too).
CAUGHT_BY = {
    "padding_mask_off_by_one": "test_padding_mask",
    "sequence_mask_writes_into_X": "test_sequence_mask",
    "softmax_over_queries": "test_masked_softmax_values",
    "masked_with_zero": "test_masked_softmax_values",
    "masked_with_minus_inf": "test_masked_softmax_edge",
    "d2l_minus_1e6_fill": "test_masked_softmax_edge",
    "mask_dropped_with_valid_lens": "test_masked_softmax_values",
    "sdpa_not_scaled": "test_sdpa_torch",
    "sdpa_scaled_by_d": "test_sdpa_torch",
    "sdpa_scaled_by_value_width": "test_sdpa_torch",
    "sdpa_transpose_for_3d_only": "test_sdpa_torch",
    "additive_without_tanh": "test_additive_reference",
    "additive_dropout_never_applied": "test_additive_dropout",
    "additive_weights_kept_after_dropout": "test_additive_dropout",
    "additive_dropout_on_scores": "test_additive_dropout",
    "additive_dropout_in_eval_mode": "test_additive_dropout",
    "bahdanau_one_context_for_all_steps": "test_bahdanau_reference",
    "bahdanau_no_source_mask": "test_bahdanau_properties",
    "bahdanau_dropout_not_passed": "test_bahdanau_dropout",
}

TestHw3Mutants = mutant_suite("hw3_attention", MUTANTS, REWRITES, CAUGHT_BY)
