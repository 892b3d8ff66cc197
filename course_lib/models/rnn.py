"""RNN encoder-decoders: a GRU seq2seq model and its Bahdanau-attention variant.

# B batch · T time (T_src source, T_tgt target) · E embed_size · H num_hiddens
# H_enc encoder output width (H, or 2H when bidirectional) · L num_layers · V vocabulary size

Design, in short:

- The encoder reads the source with padding packed away (``pack_padded_sequence``), so its final
  state is the state at each sequence's last *real* token, and padding never changes a result.
- The decoder's input at every step is the previous token's embedding **concatenated** with a
  context vector: the encoder's final top-layer state ``c`` (``Seq2SeqGRU``) or an attention
  average of the encoder outputs (``Seq2SeqBahdanau``). Concatenated, not added: the embedding
  (E) and the context (H or 2H) need not have the same width, and they mean different things.
- Bidirectional is an option for the encoder only: it sees the whole source at once. A decoder
  must not see the tokens it has yet to produce. The two directions' final states are joined
  per layer and projected back to H (``bridge``), so the decoder always starts from (L, B, H).
- Both models implement ``course_lib.models.base.EncoderDecoder``: ``encode`` once, then
  ``decode`` any number of tokens at a time with a ``DecoderState`` that beam search can reorder.

    from course_lib.models.rnn import Seq2SeqBahdanau
    model = Seq2SeqBahdanau(len(src_vocab), len(tgt_vocab))
    logits = model(batch.src, batch.src_valid_len, batch.dec_input)  # (B, T_tgt, V)
    model.attention_weights                                          # (B, T_tgt, T_src)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from course_lib.attention import AdditiveAttention
from course_lib.models.base import DecoderState, EncoderDecoder, check_source

__all__ = ["GRUEncoder", "GRUState", "Seq2SeqGRU", "BahdanauState", "Seq2SeqBahdanau"]


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform weights for Linear and GRU layers (d2l's seq2seq initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
    elif isinstance(module, nn.GRU):
        for name, param in module.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(param)


def _check_dec_input(dec_input: torch.Tensor, batch_size: int) -> None:
    """ValueError unless dec_input is (B, T_tgt) with the state's batch size B."""
    if dec_input.dim() != 2 or dec_input.shape[0] != batch_size:
        raise ValueError(f"dec_input must be (B, T_tgt) with B = {batch_size} (the state's "
                         f"batch size), got shape {tuple(dec_input.shape)}")


class GRUEncoder(nn.Module):
    """Embedding + multi-layer GRU over the source; padding does not reach the final state."""

    def __init__(self, vocab_size: int, embed_size: int, num_hiddens: int, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False):
        super().__init__()
        self.num_hiddens, self.num_layers = num_hiddens, num_layers
        self.bidirectional = bidirectional
        self.output_size = 2 * num_hiddens if bidirectional else num_hiddens  # H_enc
        self.embedding = nn.Embedding(vocab_size, embed_size)
        # nn.GRU applies dropout between layers only, so it means nothing with one layer.
        self.rnn = nn.GRU(embed_size, num_hiddens, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        # Both directions' final states (2H) -> one H-wide initial state for the decoder.
        self.bridge = nn.Linear(2 * num_hiddens, num_hiddens) if bidirectional else None
        self.apply(init_weights)

    def forward(self, src: torch.Tensor, src_valid_len: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch; returns outputs (B, T_src, H_enc) and state (L, B, H).

        Args:
            src: (B, T_src) token ids. src_valid_len: (B,) real lengths; outputs past them are 0.
        A length of 0 is read as 1 (the state after the first, padding, token) so nothing breaks.
        """
        check_source(src, src_valid_len)
        B, T = src.shape
        X = self.embedding(src)  # (B, T, E)
        # Packing makes the GRU stop at each sequence's last real token (both directions).
        lengths = src_valid_len.clamp(min=1).to("cpu", torch.int64)  # pack wants CPU lengths
        packed = nn.utils.rnn.pack_padded_sequence(X, lengths, batch_first=True,
                                                   enforce_sorted=False)
        packed_outputs, state = self.rnn(packed)  # state: (L * directions, B, H), batch order
        outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_outputs, batch_first=True,
                                                      total_length=T)  # (B, T, H_enc)
        if self.bridge is not None:
            L, H = self.num_layers, self.num_hiddens
            state = state.view(L, 2, B, H)  # (L, direction, B, H): forward, backward
            state = state.permute(0, 2, 1, 3).reshape(L, B, 2 * H)  # (L, B, 2H)
            state = torch.tanh(self.bridge(state))  # (L, B, H)
        return outputs, state


@dataclasses.dataclass
class GRUState(DecoderState):
    """Decoder state of ``Seq2SeqGRU``: GRU hidden state and the fixed context c."""

    hidden: torch.Tensor  # (L, B, H)
    context: torch.Tensor  # (B, H): the encoder's final top-layer state
    batch_dims: ClassVar[dict[str, int]] = {"hidden": 1}


class Seq2SeqGRU(EncoderDecoder):
    """GRU encoder-decoder: every decoder step reads [previous token embedding; context c]."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 32,
                 num_hiddens: int = 64, num_layers: int = 1, dropout: float = 0.0,
                 bidirectional_encoder: bool = False):
        """embed_size: token embedding width E; num_hiddens: GRU state width H; num_layers:
        stacked GRU layers (dropout between them); bidirectional_encoder: the encoder also reads
        right to left."""
        super().__init__()
        self.encoder = GRUEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout,
                                  bidirectional=bidirectional_encoder)
        self.embedding = nn.Embedding(tgt_vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.output = nn.Linear(num_hiddens, tgt_vocab_size)
        self.apply(init_weights)

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> GRUState:
        """Run the encoder; the decoder starts from its final state, c is its top layer."""
        _, state = self.encoder(src, src_valid_len)  # (L, B, H)
        return GRUState(hidden=state, context=state[-1])

    def decode_features(self, dec_input: torch.Tensor, state: GRUState
                        ) -> tuple[torch.Tensor, GRUState]:
        """GRU outputs (B, T_tgt, H) for dec_input (B, T_tgt), and the state after it."""
        _check_dec_input(dec_input, state.context.shape[0])
        T = dec_input.shape[1]
        X = self.embedding(dec_input)  # (B, T, E)
        context = state.context.unsqueeze(1).expand(-1, T, -1)  # (B, H) -> (B, T, H)
        outputs, hidden = self.rnn(torch.cat([X, context], dim=-1), state.hidden)  # (B, T, H)
        return outputs, GRUState(hidden=hidden, context=state.context)


@dataclasses.dataclass
class BahdanauState(DecoderState):
    """Decoder state of ``Seq2SeqBahdanau``: what attention reads, and the GRU hidden state."""

    batch_dims: ClassVar[dict[str, int]] = {"hidden": 1}  # (L, B, H): the batch is dim 1
    enc_outputs: torch.Tensor  # (B, T_src, H_enc)
    src_valid_len: torch.Tensor  # (B,)
    hidden: torch.Tensor  # (L, B, H)


class Seq2SeqBahdanau(EncoderDecoder):
    """GRU encoder-decoder whose context is recomputed at every step by additive attention."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 32,
                 num_hiddens: int = 64, num_layers: int = 1, dropout: float = 0.0,
                 bidirectional_encoder: bool = False):
        """Sizes as in ``Seq2SeqGRU``; the attention's MLP has num_hiddens units."""
        super().__init__()
        self.encoder = GRUEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout,
                                  bidirectional=bidirectional_encoder)
        enc_size = self.encoder.output_size  # H_enc
        self.attention = AdditiveAttention(num_hiddens, dropout, query_size=num_hiddens,
                                           key_size=enc_size)
        self.embedding = nn.Embedding(tgt_vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + enc_size, num_hiddens, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.output = nn.Linear(num_hiddens, tgt_vocab_size)
        self.attention_weights: torch.Tensor | None = None  # (B, T_tgt, T_src), last decode
        self.apply(init_weights)

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> BahdanauState:
        """Run the encoder; keep its outputs to attend over and start from its final state."""
        enc_outputs, state = self.encoder(src, src_valid_len)  # (B, T_src, H_enc), (L, B, H)
        return BahdanauState(enc_outputs=enc_outputs, src_valid_len=src_valid_len, hidden=state)

    def decode_features(self, dec_input: torch.Tensor, state: BahdanauState
                        ) -> tuple[torch.Tensor, BahdanauState]:
        """GRU outputs (B, T_tgt, H) for dec_input (B, T_tgt), one attention step per token."""
        _check_dec_input(dec_input, state.hidden.shape[1])
        X = self.embedding(dec_input)  # (B, T, E)
        enc_outputs, hidden = state.enc_outputs, state.hidden
        outputs, weights = [], []
        for t in range(dec_input.shape[1]):  # the query depends on the previous step: a loop
            query = hidden[-1].unsqueeze(1)  # (B, H) -> (B, 1, H): top layer, previous step
            context = self.attention(query, enc_outputs, enc_outputs,
                                     state.src_valid_len)  # (B, 1, H_enc)
            step_input = torch.cat([X[:, t:t + 1], context], dim=-1)  # (B, 1, E + H_enc)
            output, hidden = self.rnn(step_input, hidden)  # (B, 1, H), (L, B, H)
            outputs.append(output)
            weights.append(self.attention.attention_weights)  # (B, 1, T_src)
        B, T_src = enc_outputs.shape[:2]
        outputs = torch.cat(outputs, dim=1) if outputs else X.new_zeros(B, 0, hidden.shape[-1])
        self.attention_weights = (torch.cat(weights, dim=1) if weights
                                  else X.new_zeros(B, 0, T_src))  # (B, T_tgt, T_src)
        new_state = dataclasses.replace(state, hidden=hidden)
        return outputs, new_state  # (B, T_tgt, H)
