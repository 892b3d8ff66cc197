"""hw5's tests against typical mistakes: each mutant of the solution loses points, each honest
rewrite keeps them all, graded through the real `course grade`.

A mutant is the solution with one small edit of its DecoderBlock or Seq2SeqTransformer cell (a
shared LayerNorm, a missing residual, pre-LN, a misplaced dropout, a wrong mask, no √d_model).
A rewrite is different code for the same function (a sublayer helper, a hand-built causal mask,
functional dropout, einsum). All are graded as students of one `course grade` run (sandbox,
integrity checks, verdicts judged outside the notebook) on a copy of hw5 cut before part 3:
parts 1 and 2 (55 of the 100 points) hold every architecture test, and part 3 trains for about
30 s per notebook only to score BLEU tiers, which architecture bugs reach anyway (issue 21). The
full notebook, BLEU included, is graded by test_grading_assignments.py.
"""

from __future__ import annotations

import pytest
from mutants import mutant_suite

NAME = "hw5_transformer"
FIRST_CUT = "part3_intro"  # the first cell not graded here: part 3 (training, BLEU tiers)

pytestmark = pytest.mark.slow

# The solution's lines that the mutants edit (each must occur once in its cell).
SELF = "        X = self.norm1(X + self.dropout(self.self_attention(X, X, X, mask=keep)))\n"
CROSS = ("        X = self.norm2(X + self.dropout(self.cross_attention(X, memory, memory, "
         "src_valid_len)))\n")
FFN = "        return self.norm3(X + self.dropout(self.ffn(X)))  # (B, T, D)\n"
KEEP = "        keep = causal_mask(X.shape[1], device=X.device)  # (T, T): position t sees 0..t\n"
SRC_SCALE = "X = self.src_embedding(src) * math.sqrt(self.config.d_model)"
TGT_SCALE = "X = self.tgt_embedding(tokens) * math.sqrt(self.config.d_model)"

# name -> (cell, [(old, new), ...]): one typical mistake each.
MUTANTS = {
    "shared_norm": ("decoder_block", [
        (CROSS, CROSS.replace("self.norm2(", "self.norm1(")),
        (FFN, FFN.replace("self.norm3(", "self.norm1("))]),
    "no_residual_self_attention": ("decoder_block", [
        (SELF, SELF.replace("self.norm1(X + ", "self.norm1("))]),
    "no_residual_cross_attention": ("decoder_block", [
        (CROSS, CROSS.replace("self.norm2(X + ", "self.norm2("))]),
    "no_residual_ffn": ("decoder_block", [(FFN, FFN.replace("self.norm3(X + ", "self.norm3("))]),
    "no_residual_dropout": ("decoder_block", [
        (SELF, "        X = self.norm1(X + self.self_attention(X, X, X, mask=keep))\n"),
        (CROSS, "        X = self.norm2(X + self.cross_attention(X, memory, memory, "
                "src_valid_len))\n"),
        (FFN, "        return self.norm3(X + self.ffn(X))\n")]),
    "residual_dropout_after_norm": ("decoder_block", [
        (SELF, "        X = self.dropout(self.norm1(X + self.self_attention(X, X, X, "
               "mask=keep)))\n"),
        (CROSS, "        X = self.dropout(self.norm2(X + self.cross_attention(X, memory, "
                "memory, src_valid_len)))\n"),
        (FFN, "        return self.dropout(self.norm3(X + self.ffn(X)))\n")]),
    "dropout_on_sublayer_input": ("decoder_block", [
        (FFN, "        return self.norm3(X + self.ffn(self.dropout(X)))\n")]),
    "pre_ln": ("decoder_block", [
        (SELF, "        h = self.norm1(X)\n"
               "        X = X + self.dropout(self.self_attention(h, h, h, mask=keep))\n"),
        (CROSS, "        h = self.norm2(X)\n"
                "        X = X + self.dropout(self.cross_attention(h, memory, memory, "
                "src_valid_len))\n"),
        (FFN, "        return X + self.dropout(self.ffn(self.norm3(X)))\n")]),
    "no_source_mask_in_cross_attention": ("decoder_block", [
        (CROSS, CROSS.replace(", src_valid_len)", ")"))]),
    "no_causal_mask": ("decoder_block", [(SELF, SELF.replace(", mask=keep", ""))]),
    "mask_sees_one_future_token": ("decoder_block", [
        (KEEP, "        T = X.shape[1]\n"
               "        keep = torch.ones(T, T, dtype=torch.bool, device=X.device).tril(1)\n")]),
    "no_sqrt_d_model_scaling": ("seq2seq_transformer", [
        (SRC_SCALE, "X = self.src_embedding(src)"),
        (TGT_SCALE, "X = self.tgt_embedding(tokens)")]),
    "no_sqrt_d_model_scaling_target_only": ("seq2seq_transformer", [
        (TGT_SCALE, "X = self.tgt_embedding(tokens)")]),
    "no_source_mask_in_encoder": ("seq2seq_transformer", [
        ("            X = block(X, src_valid_len)\n", "            X = block(X)\n")]),
}

# name -> {cell: whole new source}: the same functions written differently.
REWRITES = {
    "sublayer_helper_and_triu_mask": {"decoder_block": '''\
class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then a feed-forward net."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.self_attention = MultiHeadAttention(config.d_model, config.num_heads, config.dropout)
        self.cross_attention = MultiHeadAttention(config.d_model, config.num_heads,
                                                  config.dropout)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.dropout)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.norm3 = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def sublayer(self, X, f, norm):
        """Add & norm around f (post-LN)."""
        return norm(X + self.dropout(f(X)))

    def forward(self, X, memory, src_valid_len):
        T = X.shape[1]
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=X.device), diagonal=1)
        X = self.sublayer(X, lambda h: self.self_attention(h, h, h, mask=~future), self.norm1)
        X = self.sublayer(X, lambda h: self.cross_attention(h, memory, memory, src_valid_len),
                          self.norm2)
        return self.sublayer(X, self.ffn, self.norm3)
'''},
    "loop_functional_dropout_arange_mask": {"decoder_block": '''\
class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then a feed-forward net."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d = config.d_model
        self.self_attention, self.cross_attention = (
            MultiHeadAttention(d, config.num_heads, config.dropout) for _ in range(2))
        self.ffn = FeedForward(d, config.d_ff, config.dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, X, memory, src_valid_len):
        positions = torch.arange(X.shape[1], device=X.device)
        keep = positions[None, :] <= positions[:, None]  # key <= query
        sublayers = [(lambda h: self.self_attention(h, h, h, mask=keep), self.norm1),
                     (lambda h: self.cross_attention(h, memory, memory, src_valid_len),
                      self.norm2),
                     (self.ffn, self.norm3)]
        for f, norm in sublayers:
            dropped = nn.functional.dropout(f(X), p=self.dropout.p, training=self.training)
            X = norm(X + dropped)
        return X
'''},
    "einsum_embeddings": {"seq2seq_transformer": '''\
class Seq2SeqTransformer(EncoderDecoder):
    """Transformer encoder-decoder (post-LN, sinusoidal positions) behind the course's interface."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        c = config
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.src_positional = SinusoidalPositionalEncoding(c.d_model, c.dropout, c.max_len)
        self.tgt_positional = SinusoidalPositionalEncoding(c.d_model, c.dropout, c.max_len)
        self.encoder_blocks = nn.ModuleList([EncoderBlock(c) for _ in range(c.num_layers)])
        self.decoder_blocks = nn.ModuleList([DecoderBlock(c) for _ in range(c.num_layers)])
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size)

    def embed(self, embedding, positional, tokens):
        """One-hot tokens times the embedding table, scaled by sqrt(d_model), plus positions."""
        one_hot = nn.functional.one_hot(tokens, embedding.num_embeddings).float()
        X = torch.einsum("btv,vd->btd", one_hot, embedding.weight)
        return positional(X * self.config.d_model ** 0.5)

    def encode(self, src, src_valid_len):
        X = self.embed(self.src_embedding, self.src_positional, src)
        for block in self.encoder_blocks:
            X = block(X, src_valid_len)
        return Seq2SeqState(X, src_valid_len, src[:, :0])

    def decode_features(self, dec_input, state):
        T_past = state.past_tokens.shape[1]
        tokens = torch.cat([state.past_tokens, dec_input], dim=1)
        X = self.embed(self.tgt_embedding, self.tgt_positional, tokens)
        for block in self.decoder_blocks:
            X = block(X, state.memory, state.src_valid_len)
        return X[:, T_past:], dataclasses.replace(state, past_tokens=tokens)
'''},
}
# mutant -> the targeted test that must catch it (others may fail too).
CAUGHT_BY = {
    "shared_norm": "test_decoder_block_structure",
    "no_residual_self_attention": "test_decoder_block_structure",
    "no_residual_cross_attention": "test_decoder_block_structure",
    "no_residual_ffn": "test_decoder_block_structure",
    "no_residual_dropout": "test_decoder_block_dropout",
    "residual_dropout_after_norm": "test_decoder_block_dropout",
    "dropout_on_sublayer_input": "test_decoder_block_dropout",
    "pre_ln": "test_decoder_block_structure",
    "no_source_mask_in_cross_attention": "test_model_structure",
    "no_causal_mask": "test_decoder_block_causal",
    "mask_sees_one_future_token": "test_decoder_block_causal",
    "no_sqrt_d_model_scaling": "test_model_structure",
    "no_sqrt_d_model_scaling_target_only": "test_model_structure",
    "no_source_mask_in_encoder": "test_model_structure",
}

TestHw5Mutants = mutant_suite(NAME, MUTANTS, REWRITES, CAUGHT_BY, FIRST_CUT)
