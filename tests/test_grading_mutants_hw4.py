"""hw4's tests against typical mistakes: each mutant of the solution loses points, each honest
rewrite keeps them all, graded through the real `course grade` (harness: tests/mutants.py).

Mutants: heads split or merged in the wrong order, projections created in another order than
asked, scores scaled by nothing, by d_head or by √d_model, keys transposed on the wrong axes,
values projected from the keys, no W_o, a softmax over the queries, a mask ignored, inverted
(torch's True = ignore) or filled with 0 or -inf, sines and cosines swapped, the exponent i
instead of 2i, positions counted from 1, the table a parameter or a plain attribute, LayerNorm
with the unbiased variance, ε outside the root, statistics over the whole tensor, γ and β
swapped or never applied. Rewrites: unflatten and permute, einsum with a hand-written masked
softmax, frequencies through exp and log with interleaved sines and cosines, torch.var and
rsqrt.
"""

from __future__ import annotations

import pytest
from mutants import mutant_suite

pytestmark = pytest.mark.slow

# The solution's lines that the mutants edit (each must occur once in its cell).
SPLIT = "    return X.view(B, T, num_heads, D // num_heads).transpose(1, 2)  # (B, H, T, d_head)\n"
MERGE = "    return X.transpose(1, 2).reshape(B, T, H * d_head)  # (B, T, H, d_head) -> (B, T, D)\n"
SCORES = ("        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  "
          "# (B, H, T_q, T_k)\n")
SOFTMAX = ("        self.attention_weights = masked_softmax(scores, mask=mask)  "
           "# masked keys: exactly 0\n")
MIX = "        return self.W_o(merge_heads(self.attention_weights @ v))  # (B, T_q, D)\n"
BUFFER = ('        self.register_buffer("P", sinusoidal_encoding(max_len, d_model), '
          'persistent=False)\n')
LAST_LAYER = ("        self.W_o = nn.Linear(d_model, d_model, bias=bias)\n"
              "        self.attention_weights")
NORMALISE = ("        return (X - mean) / torch.sqrt(variance + self.eps) * self.weight + "
             "self.bias\n")


def softmax_filled(fill: str, dim: int = -1) -> str:
    """The attention weights as a plain softmax over dim of the scores with masked ones = fill."""
    return (f"        filled = scores if mask is None else scores.masked_fill(~mask, {fill})\n"
            f"        self.attention_weights = F.softmax(filled, dim={dim})\n")


MUTANTS = {
    "split_heads_without_transpose": ("split_merge_heads", [
        (SPLIT, "    return X.reshape(B, num_heads, T, D // num_heads)\n")]),
    "split_heads_strided": ("split_merge_heads", [  # head h gets features h, h + H, ...
        (SPLIT, "    return X.view(B, T, D // num_heads, num_heads).permute(0, 3, 1, 2)\n")]),
    "merge_heads_without_transpose": ("split_merge_heads", [
        (MERGE, "    return X.reshape(B, T, H * d_head)\n")]),
    "mha_layers_out_of_order": ("multihead_attention", [
        ("        self.W_q = nn.Linear(d_model, d_model, bias=bias)\n",
         "        self.W_o = nn.Linear(d_model, d_model, bias=bias)\n"
         "        self.W_q = nn.Linear(d_model, d_model, bias=bias)\n"),
        (LAST_LAYER, "        self.attention_weights")]),
    "mha_not_scaled": ("multihead_attention", [
        (SCORES, SCORES.replace(" / math.sqrt(q.shape[-1])", ""))]),
    "mha_scaled_by_d_head": ("multihead_attention", [
        (SCORES, SCORES.replace("math.sqrt(q.shape[-1])", "q.shape[-1]"))]),
    "mha_scaled_by_sqrt_d_model": ("multihead_attention", [
        (SCORES, SCORES.replace("q.shape[-1]", "self.d_model"))]),
    "mha_keys_transposed_wrong": ("multihead_attention", [
        (SCORES, SCORES.replace("k.transpose(-2, -1)", "k.transpose(1, 2)"))]),
    "mha_values_from_keys": ("multihead_attention", [
        ("split_heads(self.W_v(values), self.num_heads)", "split_heads(self.W_v(keys), "
                                                          "self.num_heads)")]),
    "mha_no_output_projection": ("multihead_attention", [
        (MIX, "        return merge_heads(self.attention_weights @ v)\n")]),
    "mha_softmax_over_queries": ("multihead_attention", [
        (SOFTMAX, softmax_filled("torch.finfo(scores.dtype).min", dim=-2))]),
    "mha_mask_ignored": ("multihead_attention", [
        (SOFTMAX, SOFTMAX.replace("masked_softmax(scores, mask=mask)", "masked_softmax(scores)"))]),
    "mha_mask_inverted": ("multihead_attention", [  # torch's convention: True = ignore
        (SOFTMAX, SOFTMAX.replace("mask=mask", "mask=None if mask is None else ~mask"))]),
    "mha_masked_with_zero": ("multihead_attention", [(SOFTMAX, softmax_filled("0.0"))]),
    "mha_masked_with_minus_inf": ("multihead_attention", [  # a fully masked query: NaN
        (SOFTMAX, softmax_filled('float("-inf")'))]),
    "sin_cos_swapped": ("positional_encoding", [
        ("    P[:, 0::2] = torch.sin(angles)\n    P[:, 1::2] = torch.cos(angles)\n",
         "    P[:, 0::2] = torch.cos(angles)\n    P[:, 1::2] = torch.sin(angles)\n")]),
    "exponent_i_not_2i": ("positional_encoding", [
        ("-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model",
         "-torch.arange(d_model // 2, dtype=torch.float32) / d_model")]),
    "positions_from_one": ("positional_encoding", [
        ("torch.arange(max_len, dtype=torch.float32)",
         "torch.arange(1, max_len + 1, dtype=torch.float32)")]),
    "table_is_a_parameter": ("positional_encoding", [
        (BUFFER, "        self.P = nn.Parameter(sinusoidal_encoding(max_len, d_model))\n")]),
    "table_is_a_plain_attribute": ("positional_encoding", [
        (BUFFER, "        self.P = sinusoidal_encoding(max_len, d_model)\n")]),
    "layernorm_unbiased_variance": ("layer_norm", [
        ("((X - mean) ** 2).mean(dim=-1, keepdim=True)", "X.var(dim=-1, keepdim=True)")]),
    "layernorm_eps_outside_sqrt": ("layer_norm", [
        (NORMALISE, NORMALISE.replace("torch.sqrt(variance + self.eps)",
                                      "(torch.sqrt(variance) + self.eps)"))]),
    "layernorm_statistics_over_everything": ("layer_norm", [
        ("mean = X.mean(dim=-1, keepdim=True)", "mean = X.mean()"),
        ("((X - mean) ** 2).mean(dim=-1, keepdim=True)", "((X - mean) ** 2).mean()")]),
    "layernorm_gamma_beta_swapped": ("layer_norm", [
        (NORMALISE, NORMALISE.replace("* self.weight + self.bias", "* self.bias + self.weight"))]),
    "layernorm_without_gamma_beta": ("layer_norm", [
        (NORMALISE, NORMALISE.replace(" * self.weight + self.bias", ""))]),
}

# name -> {answer cell: whole new source}: the same functions written differently.
REWRITES = {
    "unflatten_and_permute": {"split_merge_heads": '''\
def split_heads(X: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Give each head its slice of the features: (B, T, D) -> (B, H, T, D / H)."""
    if X.dim() != 3 or num_heads < 1 or X.shape[-1] % num_heads:
        raise ValueError(f"expected (B, T, D) with D divisible by num_heads={num_heads}, got "
                         f"{tuple(X.shape)}")
    return X.unflatten(-1, (num_heads, -1)).permute(0, 2, 1, 3)


def merge_heads(X: torch.Tensor) -> torch.Tensor:
    """Concatenate the heads again: (B, H, T, d_head) -> (B, T, H * d_head)."""
    if X.dim() != 4:
        raise ValueError(f"expected (B, H, T, d_head), got {tuple(X.shape)}")
    return X.permute(0, 2, 1, 3).contiguous().flatten(2)
'''},
    "einsum_own_masked_softmax": {"multihead_attention": '''\
class MultiHeadAttention(nn.Module):
    """H scaled dot-product attention heads side by side, each on its own D/H-wide slice."""

    def __init__(self, d_model: int, num_heads: int, bias: bool = True):
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model, self.num_heads = d_model, num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model, bias=bias)
                                                  for _ in range(4))
        self.attention_weights = None

    def forward(self, queries, keys, values, mask=None):
        for t in (queries, keys, values):
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"expected (B, T, {self.d_model}), got {tuple(t.shape)}")
        H, d_head = self.num_heads, self.d_model // self.num_heads
        q = self.W_q(queries).unflatten(-1, (H, d_head))  # (B, T_q, H, d_head)
        k = self.W_k(keys).unflatten(-1, (H, d_head))
        v = self.W_v(values).unflatten(-1, (H, d_head))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d_head ** 0.5  # (B, H, T_q, T_k)
        keep = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
        scores = torch.where(keep, scores, torch.finfo(scores.dtype).min)
        exp = torch.exp(scores - scores.amax(dim=-1, keepdim=True)) * keep
        self.attention_weights = exp / exp.sum(dim=-1, keepdim=True).clamp_min(1e-30)
        mixed = torch.einsum("bhqk,bkhd->bqhd", self.attention_weights, v)
        return self.W_o(mixed.flatten(2))
'''},
    "exp_log_frequencies_interleaved": {"positional_encoding": '''\
def sinusoidal_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table P: sines in even columns, cosines in odd ones."""
    if max_len < 1 or d_model < 2 or d_model % 2:
        raise ValueError(f"bad max_len={max_len} or d_model={d_model}")
    i = torch.arange(d_model // 2, dtype=torch.float32)
    frequencies = torch.exp(-2 * i * math.log(10000.0) / d_model)  # (d_model / 2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), frequencies)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # sin, cos, sin, ...


class PositionalEncoding(nn.Module):
    """Add the sinusoidal encoding of each position to token embeddings X (B, T, d_model)."""

    def __init__(self, d_model: int, max_len: int = 1000):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("P", sinusoidal_encoding(max_len, d_model).unsqueeze(0),
                             persistent=False)  # (1, max_len, d_model)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.dim() != 3 or X.shape[-1] != self.d_model or X.shape[1] > self.max_len:
            raise ValueError(f"expected (B, T <= {self.max_len}, {self.d_model}), got "
                             f"{tuple(X.shape)}")
        return X + self.P[:, :X.shape[1]]
'''},
    "var_and_rsqrt": {"layer_norm": '''\
class LayerNorm(nn.Module):
    """Normalise each position's features to mean 0 and variance 1, then scale and shift."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[-1:] != (self.d_model,):
            raise ValueError(f"expected (..., {self.d_model}), got {tuple(X.shape)}")
        variance, mean = torch.var_mean(X, dim=-1, unbiased=False, keepdim=True)
        return torch.addcmul(self.bias, (X - mean) * torch.rsqrt(variance + self.eps),
                             self.weight)
'''},
}

# mutant -> the targeted test that must catch it (others may fail too).
CAUGHT_BY = {
    "split_heads_without_transpose": "test_split_merge_layout",
    "split_heads_strided": "test_split_merge_layout",
    "merge_heads_without_transpose": "test_split_merge_layout",
    "mha_layers_out_of_order": "test_mha_layers",
    "mha_not_scaled": "test_mha_matches_torch",
    "mha_scaled_by_d_head": "test_mha_matches_torch",
    "mha_scaled_by_sqrt_d_model": "test_mha_matches_torch",
    "mha_keys_transposed_wrong": "test_mha_matches_torch",
    "mha_values_from_keys": "test_mha_matches_torch",
    "mha_no_output_projection": "test_mha_matches_torch",
    "mha_softmax_over_queries": "test_mha_properties",
    "mha_mask_ignored": "test_mha_key_padding",
    "mha_mask_inverted": "test_mha_causal",
    "mha_masked_with_zero": "test_mha_key_padding",
    "mha_masked_with_minus_inf": "test_mha_properties",
    "sin_cos_swapped": "test_sinusoidal_table",
    "exponent_i_not_2i": "test_sinusoidal_table",
    "positions_from_one": "test_sinusoidal_table",
    "table_is_a_parameter": "test_positional_module",
    "table_is_a_plain_attribute": "test_positional_module",
    "layernorm_unbiased_variance": "test_layernorm_matches_torch",
    "layernorm_eps_outside_sqrt": "test_layernorm_details",
    "layernorm_statistics_over_everything": "test_layernorm_details",
    "layernorm_gamma_beta_swapped": "test_layernorm_matches_torch",
    "layernorm_without_gamma_beta": "test_layernorm_matches_torch",
}

TestHw4Mutants = mutant_suite("hw4_multihead", MUTANTS, REWRITES, CAUGHT_BY)
