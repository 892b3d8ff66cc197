"""Positional encodings: attention alone ignores word order, so add where each token sits.

# B batch · T time · D model width

    from course_lib.positional import SinusoidalPositionalEncoding
    positional = SinusoidalPositionalEncoding(d_model=32, dropout=0.1, max_len=100)
    X = positional(embeddings)             # (B, T, 32): embeddings + P[0..T-1]
    X = positional(new_embeddings, offset=7)  # decoding with a cache: positions 7..
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["sinusoidal_table", "SinusoidalPositionalEncoding", "LearnedPositionalEncoding"]


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table P[pos, 2i] = sin(pos / 10000^(2i/D)), P[pos, 2i+1] = cos."""
    if max_len <= 0 or d_model <= 0:
        raise ValueError(f"max_len and d_model must be > 0, got max_len={max_len}, "
                         f"d_model={d_model}")
    positions = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    wavelengths = torch.pow(10000, torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = positions / wavelengths  # (max_len, ceil(D/2))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])  # odd D: the last sine has no cosine
    return table


def _check_positions(X: torch.Tensor, offset: int, d_model: int, max_len: int) -> None:
    """Reject inputs that are not (B, T, d_model) or that run past the encoding's max_len."""
    if X.dim() != 3 or X.shape[-1] != d_model:
        raise ValueError(f"X must have shape (B, T, d_model) with d_model={d_model}, "
                         f"got {tuple(X.shape)}")
    if offset < 0 or offset + X.shape[1] > max_len:
        raise ValueError(f"positions offset..offset+T = {offset}..{offset + X.shape[1]} must lie "
                         f"in 0..max_len = 0..{max_len} (X is {tuple(X.shape)})")


class SinusoidalPositionalEncoding(nn.Module):
    """Add fixed sines and cosines of the position to each token (Vaswani et al., 2017)."""

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 1000):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.dropout = nn.Dropout(dropout)
        # Not persistent: it is a function of the shape, so checkpoints need not carry it.
        self.register_buffer("P", sinusoidal_table(max_len, d_model).unsqueeze(0),
                             persistent=False)  # (1, max_len, D)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Return dropout(X + P) for positions offset..offset+T-1 (offset: incremental decoding).

        Args:
            X: (B, T, D) token embeddings.
        """
        _check_positions(X, offset, self.d_model, self.max_len)
        return self.dropout(X + self.P[:, offset:offset + X.shape[1]])  # (B, T, D)


class LearnedPositionalEncoding(nn.Module):
    """Add a trained embedding of each position to each token (as in BERT and GPT)."""

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 512):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.embedding = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Return dropout(X + E[positions]) for positions offset..offset+T-1.

        Args:
            X: (B, T, D) token embeddings.
        """
        _check_positions(X, offset, self.d_model, self.max_len)
        positions = torch.arange(offset, offset + X.shape[1], device=X.device)  # (T,)
        return self.dropout(X + self.embedding(positions))  # (B, T, D) + (T, D)
