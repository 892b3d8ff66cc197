"""The book's decoders that d2l's package does not ship, for side-by-side comparisons.

Dive into Deep Learning defines its RNN decoder (``Seq2SeqDecoder``) and its Transformer decoder
(``TransformerDecoderBlock``, ``TransformerDecoder``) only in the book's notebooks; ``d2l.torch``
1.0.3 has the encoders (``Seq2SeqEncoder``, ``TransformerEncoder``) but not these. They are
written here from the book's description, using d2l's own building blocks, so that the
benchmarks (and the tests that compare against them) can run "d2l's model" as a reader of the
book would. They are references, not the course's models: see ``course_lib.models`` for those,
and so they live beside the benchmarks rather than in the student library.

Two behaviours of the book's Transformer decoder matter when comparing:

- At prediction time it caches each block's *inputs* and re-projects every earlier position's
  keys and values at every step, and ``predict_step`` always runs all ``num_steps`` steps.
- Its positional encoding adds ``P[:, :T]`` to whatever it is given, so when decoding one
  token at a time every step gets position 0's encoding. ``make_transformer_decoder(...,
  fix_positions=True)`` corrects that (used for quality comparisons); the default keeps the
  book's behaviour (used for speed comparisons). The switch is the decoder's attribute
  ``fix_positions``; it changes prediction only, never training, so one trained model can be
  decoded both ways.

Notation: B batch · T time · H num_hiddens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.compat import load_d2l

__all__ = ["book_loss", "book_train_step", "d2l_seq2seq_gru", "d2l_transformer",
           "make_seq2seq_decoder", "make_transformer_decoder"]


def book_loss(logits: torch.Tensor, tgt: torch.Tensor, pad: int) -> torch.Tensor:
    """The book's ``Seq2Seq.loss`` (section 10.7): cross entropy of logits (B, T, V) against
    tgt (B, T), averaged over the positions whose target is not ``pad``. (The d2l 1.0.3
    package's ``Seq2Seq.loss`` lacks the mask: it averages over padding too.)"""
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                reduction="none")
    mask = (tgt.reshape(-1) != pad).float()
    return (per_token * mask).sum() / mask.sum()


def book_train_step(model: nn.Module, batch, optimizer: torch.optim.Optimizer, pad: int,
                    clip: float = 1.0) -> torch.Tensor:
    """One step of the book's ``Trainer`` on a course ``Batch``: the full-width logits, the
    book's masked loss, gradient clipping at ``clip``, an optimizer step; returns the loss."""
    logits = model(batch.src, batch.dec_input, batch.src_valid_len)
    loss = book_loss(logits, batch.tgt, pad)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach()


def make_seq2seq_decoder(vocab_size: int, embed_size: int, num_hiddens: int, num_layers: int,
                         dropout: float = 0.0) -> nn.Module:
    """The book's GRU decoder: input = embedding concatenated with the encoder's last state."""
    d2l = load_d2l()

    class Seq2SeqDecoder(d2l.Decoder):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embed_size)
            self.rnn = d2l.GRU(embed_size + num_hiddens, num_hiddens, num_layers, dropout)
            self.dense = nn.LazyLinear(vocab_size)
            self.apply(d2l.init_seq2seq)

        def init_state(self, enc_all_outputs, *args):
            return enc_all_outputs

        def forward(self, X, state):
            embs = self.embedding(X.t().long())  # (T, B, E): d2l is time-major
            enc_output, hidden_state = state
            context = enc_output[-1]  # (B, H): top layer's output at the last step
            context = context.repeat(embs.shape[0], 1, 1)  # (T, B, H)
            outputs, hidden_state = self.rnn(torch.cat((embs, context), -1), hidden_state)
            outputs = self.dense(outputs).swapaxes(0, 1)  # (B, T, V)
            return outputs, [enc_output, hidden_state]

    return Seq2SeqDecoder()


def make_transformer_decoder(vocab_size: int, num_hiddens: int, ffn_num_hiddens: int,
                             num_heads: int, num_blks: int, dropout: float,
                             fix_positions: bool = False) -> nn.Module:
    """The book's Transformer decoder (post-LN blocks with d2l's attention and AddNorm)."""
    d2l = load_d2l()

    class TransformerDecoderBlock(nn.Module):
        def __init__(self, i: int):
            super().__init__()
            self.i = i
            self.attention1 = d2l.MultiHeadAttention(num_hiddens, num_heads, dropout)
            self.addnorm1 = d2l.AddNorm(num_hiddens, dropout)
            self.attention2 = d2l.MultiHeadAttention(num_hiddens, num_heads, dropout)
            self.addnorm2 = d2l.AddNorm(num_hiddens, dropout)
            self.ffn = d2l.PositionWiseFFN(ffn_num_hiddens, num_hiddens)
            self.addnorm3 = d2l.AddNorm(num_hiddens, dropout)

        def forward(self, X, state):
            enc_outputs, enc_valid_lens = state[0], state[1]
            # Training sees the whole target at once; prediction appends each new token's
            # block input to what this block has seen so far (state[2][i]).
            key_values = X if state[2][self.i] is None else torch.cat((state[2][self.i], X), 1)
            state[2][self.i] = key_values
            if self.training:
                B, T, _ = X.shape
                dec_valid_lens = torch.arange(1, T + 1, device=X.device).repeat(B, 1)  # (B, T)
            else:
                dec_valid_lens = None
            Y = self.addnorm1(X, self.attention1(X, key_values, key_values, dec_valid_lens))
            Z = self.addnorm2(Y, self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens))
            return self.addnorm3(Z, self.ffn(Z)), state

    class TransformerDecoder(d2l.AttentionDecoder):
        def __init__(self):
            super().__init__()
            self.num_hiddens = num_hiddens
            self.num_blks = num_blks
            self.fix_positions = fix_positions
            self.embedding = nn.Embedding(vocab_size, num_hiddens)
            self.pos_encoding = d2l.PositionalEncoding(num_hiddens, dropout)
            self.blks = nn.Sequential(*[TransformerDecoderBlock(i) for i in range(num_blks)])
            self.dense = nn.LazyLinear(vocab_size)

        def init_state(self, enc_outputs, enc_valid_lens):
            return [enc_outputs, enc_valid_lens, [None] * self.num_blks]

        def forward(self, X, state):
            X = self.embedding(X) * math.sqrt(self.num_hiddens)
            if self.fix_positions and state[2][0] is not None:
                offset = state[2][0].shape[1]  # tokens already decoded
                X = self.pos_encoding.dropout(
                    X + self.pos_encoding.P[:, offset:offset + X.shape[1]].to(X.device))
            else:
                X = self.pos_encoding(X)  # the book: always positions 0..T-1
            self._attention_weights = [[None] * len(self.blks) for _ in range(2)]
            for i, blk in enumerate(self.blks):
                X, state = blk(X, state)
                self._attention_weights[0][i] = blk.attention1.attention.attention_weights
                self._attention_weights[1][i] = blk.attention2.attention.attention_weights
            return self.dense(X), state

        @property
        def attention_weights(self):
            return self._attention_weights

    return TransformerDecoder()


def _materialise(model: nn.Module, src_vocab_size: int, tgt_vocab_size: int) -> nn.Module:
    """Run one tiny batch so d2l's LazyLinear layers get their weights."""
    src = torch.zeros(2, 3, dtype=torch.long)
    with torch.no_grad():
        model(src, torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 2]))
    return model


def d2l_seq2seq_gru(src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 256,
                    num_hiddens: int = 256, num_layers: int = 2,
                    dropout: float = 0.2) -> nn.Module:
    """The book's GRU seq2seq (``d2l.EncoderDecoder`` with its encoder and the book's decoder);
    call as ``model(src, dec_input, src_valid_len)``; ``model.predict_step`` decodes greedily."""
    d2l = load_d2l()
    encoder = d2l.Seq2SeqEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout)
    decoder = make_seq2seq_decoder(tgt_vocab_size, embed_size, num_hiddens, num_layers, dropout)
    return _materialise(d2l.EncoderDecoder(encoder, decoder), src_vocab_size, tgt_vocab_size)


def d2l_transformer(src_vocab_size: int, tgt_vocab_size: int, num_hiddens: int = 256,
                    ffn_num_hiddens: int = 64, num_heads: int = 4, num_blks: int = 2,
                    dropout: float = 0.2, fix_positions: bool = False) -> nn.Module:
    """The book's Transformer (d2l's ``TransformerEncoder``, the book's decoder, the book's
    hyperparameters by default); call as ``model(src, dec_input, src_valid_len)``."""
    d2l = load_d2l()
    encoder = d2l.TransformerEncoder(src_vocab_size, num_hiddens, ffn_num_hiddens, num_heads,
                                     num_blks, dropout)
    decoder = make_transformer_decoder(tgt_vocab_size, num_hiddens, ffn_num_hiddens, num_heads,
                                       num_blks, dropout, fix_positions)
    return _materialise(d2l.EncoderDecoder(encoder, decoder), src_vocab_size, tgt_vocab_size)
