"""The Transformer: shapes, masks, the KV cache, training, and parity with torch's and d2l's layers.

Notation: B batch · T time · H heads · D model width · V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import random
import time

import pytest
import torch
from torch import nn

from course_lib.attention import KVCache, copy_weights_to_torch
from course_lib.data.batching import encode_pairs
from course_lib.data.vocab import Vocab
from course_lib.losses import masked_cross_entropy
from course_lib.masking import causal_mask, padding_mask, to_key_padding_mask, to_torch_attn_mask
from course_lib.models.transformer import (
    DecoderBlock,
    EncoderBlock,
    Transformer,
    TransformerConfig,
    count_parameters,
)

V_SRC, V_TGT = 13, 11
NORMS = pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def make_model(seed=0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.tiny(V_SRC, V_TGT, **changes)).eval()


def make_inputs(B=4, T_src=7, T_tgt=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V_SRC, (B, T_src), generator=g)
    src_valid_len = torch.tensor([7, 3, 5, 1][:B])
    dec_input = torch.randint(3, V_TGT, (B, T_tgt), generator=g)
    return src, src_valid_len, dec_input


# --- Shapes and errors -------------------------------------------------------------------------

@NORMS
@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "none"])
def test_shapes_and_attention_weights(norm_first, positional):
    model = make_model(norm_first=norm_first, positional=positional)
    src, src_valid_len, dec_input = make_inputs()
    assert model(src, src_valid_len, dec_input).shape == (4, 6, V_TGT)
    H, L = model.config.num_heads, model.config.num_layers
    for weights, shape in ((model.encoder_attention_weights(), (4, H, 7, 7)),
                           (model.decoder_self_attention_weights(), (4, H, 6, 6)),
                           (model.cross_attention_weights(), (4, H, 6, 7))):
        assert len(weights) == L and all(w.shape == shape for w in weights)
    cross = model.cross_attention_weights()[0]
    assert torch.all(cross[1, :, :, 3:] == 0)  # source padding of example 1 gets no weight
    assert torch.all(model.decoder_self_attention_weights()[0].triu(1) == 0)  # causal


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(10, 10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="src_vocab_size=10, tgt_vocab_size=12"):
        TransformerConfig(10, 12, share_embeddings=True)
    with pytest.raises(ValueError, match="positional"):
        TransformerConfig(10, 10, positional="rotary")


def test_shared_and_tied_embeddings():
    torch.manual_seed(0)
    plain = Transformer(TransformerConfig.tiny(V_SRC, V_SRC))
    shared = Transformer(TransformerConfig.tiny(V_SRC, V_SRC, share_embeddings=True,
                                                tie_output=True))
    assert shared.src_embedding.weight is shared.tgt_embedding.weight is shared.output.weight
    saved = 2 * V_SRC * 32  # one (V, D) table instead of three
    assert count_parameters(plain) - count_parameters(shared) == saved


def test_tied_output_starts_with_moderate_logits():
    """With the tied table at N(0, 1) the initial logits would have a standard deviation near
    sqrt(d_model); the tied model starts them near 1, like the untied one."""
    torch.manual_seed(0)
    config = TransformerConfig(50, 300, d_model=256, num_heads=4, num_layers=1, d_ff=64)
    src = torch.randint(3, 50, (8, 9))
    dec_input = torch.randint(3, 300, (8, 7))
    src_valid_len = torch.full((8,), 9)
    with torch.no_grad():
        untied = Transformer(config)(src, src_valid_len, dec_input).std()
        tied = Transformer(dataclasses.replace(config, tie_output=True))(
            src, src_valid_len, dec_input).std()
    assert tied < 2.0 and untied < 2.0, (tied, untied)


def test_bad_shapes_raise_value_error_naming_shapes():
    model = make_model()
    src, src_valid_len, dec_input = make_inputs()
    with pytest.raises(ValueError, match=r"\(B, T_src\).*\(4, 7, 1\)"):
        model.encode(src.unsqueeze(-1), src_valid_len)
    with pytest.raises(ValueError, match=r"\(4,\), got \(3,\)"):
        model.encode(src, src_valid_len[:3])
    state = model.encode(src, src_valid_len)
    with pytest.raises(ValueError, match=r"B = 4, got shape \(2, 6\)"):
        model.decode(dec_input[:2], state)
    with pytest.raises(ValueError, match=r"\(B, T_tgt\)"):
        model(src, src_valid_len, dec_input[0])
    with pytest.raises(ValueError, match="max_len"):  # past the positional encoding's table
        model.decode(torch.ones(4, 65, dtype=torch.long), state)


# --- Masks and order ---------------------------------------------------------------------------

@NORMS
def test_decoder_is_causal(norm_first):
    model = make_model(norm_first=norm_first)
    src, src_valid_len, dec_input = make_inputs()
    changed = dec_input.clone()
    changed[:, 3:] = (changed[:, 3:] + 1 - 3) % (V_TGT - 3) + 3  # other real tokens from t=3 on
    with torch.no_grad():
        before, after = model(src, src_valid_len, dec_input), model(src, src_valid_len, changed)
    close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3:], before[:, 3:])  # the change does reach later steps


@NORMS
def test_source_padding_is_ignored(norm_first):
    model = make_model(norm_first=norm_first)
    src, src_valid_len, dec_input = make_inputs()
    longer = torch.cat([src, torch.randint(3, V_SRC, (4, 5))], dim=1)  # junk past valid_len
    with torch.no_grad():
        close(model(longer, src_valid_len, dec_input), model(src, src_valid_len, dec_input))


def test_self_attention_without_positions_is_permutation_equivariant():
    src, _, _ = make_inputs()
    full = torch.full((4,), src.shape[1])
    permutation = torch.randperm(src.shape[1], generator=torch.Generator().manual_seed(0))
    for positional, equivariant in (("none", True), ("sinusoidal", False)):
        model = make_model(positional=positional)
        with torch.no_grad():
            memory = model.encode(src, full).memory  # (B, T_src, D)
            permuted = model.encode(src[:, permutation], full).memory
        assert torch.allclose(permuted, memory[:, permutation], atol=1e-5) == equivariant


@NORMS
def test_every_parameter_gets_a_gradient(norm_first):
    model = make_model(norm_first=norm_first, positional="learned").train()
    src, src_valid_len, dec_input = make_inputs()
    model(src, src_valid_len, dec_input).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- Incremental decoding with and without the key/value cache ---------------------------------

def decode_steps(model, state, tokens, chunk=1):
    """Feed tokens (B, T) `chunk` at a time; returns the logits (B, T, V) and the last state."""
    pieces = []
    for t in range(0, tokens.shape[1], chunk):
        logits, state = model.decode(tokens[:, t:t + chunk], state)
        pieces.append(logits)
    return torch.cat(pieces, dim=1), state


def uncached_copy(model: Transformer) -> Transformer:
    """The same weights, decoding without key/value caches."""
    other = Transformer(model.config, use_cache=False).eval()
    other.load_state_dict(model.state_dict())
    return other


@NORMS
@pytest.mark.parametrize("use_sdpa", [False, True])
def test_kv_cache_matches_uncached_and_forward(norm_first, use_sdpa):
    model = make_model(norm_first=norm_first, use_sdpa=use_sdpa)
    uncached_model = uncached_copy(model)
    src, src_valid_len, dec_input = make_inputs()
    with torch.no_grad():
        full = model(src, src_valid_len, dec_input)
        cached, cached_state = decode_steps(model, model.encode(src, src_valid_len), dec_input)
        uncached, uncached_state = decode_steps(
            uncached_model, uncached_model.encode(src, src_valid_len), dec_input)
        chunked, _ = decode_steps(model, model.encode(src, src_valid_len), dec_input, chunk=4)
    close(cached, full)
    close(uncached, full)
    close(chunked, full)
    cache = cached_state.caches[0]
    assert cache.keys.shape == cache.values.shape == (4, 2, 6, 16) and cache.length == 6
    memory_cache = cached_state.memory_caches[0]
    assert memory_cache.frozen and memory_cache.keys.shape == (4, 2, 7, 16)
    assert uncached_state.caches is None and torch.equal(uncached_state.past_tokens, dec_input)
    assert torch.equal(cached_state.past_tokens, dec_input)


@pytest.mark.parametrize("use_cache", [True, False])
def test_decoding_after_reorder_matches_forward(use_cache):
    """Beam search: states are reordered and reused, so the old state must stay intact."""
    model = make_model() if use_cache else uncached_copy(make_model())
    src, src_valid_len, dec_input = make_inputs()
    index = torch.tensor([2, 0, 0, 3])
    with torch.no_grad():
        state = model.encode(src, src_valid_len)
        _, state = decode_steps(model, state, dec_input[:, :3])
        reordered, _ = decode_steps(model, state.reorder(index), dec_input[index, 3:])
        expected = model(src[index], src_valid_len[index], dec_input[index])
        close(reordered, expected[:, 3:])
        again, _ = decode_steps(model, state, dec_input[:, 3:])  # the old state
        close(again, model(src, src_valid_len, dec_input)[:, 3:])
        if use_cache:  # the reordered caches hold the chosen rows' keys
            moved = state.reorder(index)
            close(moved.caches[1].keys, state.caches[1].keys[index])
            close(moved.memory_caches[0].values, state.memory_caches[0].values[index])
            assert moved.memory_caches[0].frozen


def test_decoder_block_caches_grow_in_place_and_match_the_whole_sequence():
    """DecoderBlock with a KVCache: position by position equals all positions at once."""
    torch.manual_seed(0)
    config = TransformerConfig.tiny(V_SRC, V_TGT)
    block = DecoderBlock(config).eval()
    X, memory, src_valid_len = torch.randn(3, 5, 32), torch.randn(3, 4, 32), torch.tensor([4, 1, 2])
    cache, memory_cache = KVCache(), KVCache(frozen=True)
    with torch.no_grad():
        whole = block(X, memory, src_valid_len)
        steps = [block(X[:, t:t + 1], memory, src_valid_len, cache, memory_cache)
                 for t in range(5)]
    close(torch.cat(steps, dim=1), whole)
    assert cache.length == 5 and memory_cache.length == 4


def test_cache_projects_the_encoder_memory_only_once():
    """With the cache, cross-attention keys/values of the memory are projected at the first
    step and reused; without it they are projected at every step."""
    torch.manual_seed(0)
    cached_model = Transformer(TransformerConfig.tiny(V_SRC, V_TGT)).eval()
    for model, expected in ((cached_model, 1), (uncached_copy(cached_model), 3)):
        calls = []
        for block in model.decoder.blocks:
            block.cross_attention.W_k.register_forward_hook(
                lambda *args, calls=calls: calls.append(1))
        state = model.encode(torch.randint(3, V_SRC, (2, 5)), torch.tensor([5, 3]))
        token = torch.ones(2, 1, dtype=torch.long)
        with torch.no_grad():
            for _ in range(3):
                _, state = model.decode(token, state)
        assert len(calls) == expected * len(model.decoder.blocks)


def test_encoder_and_decoder_are_stacks_of_blocks():
    """Encoder = blocks one after the other; Decoder likewise, each block reading the memory."""
    model = make_model(norm_first=True)
    src, src_valid_len, dec_input = make_inputs()
    with torch.no_grad():
        X = model.src_positional(model.src_embedding(src) * model.config.d_model ** 0.5)
        memory = X
        for block in model.encoder.blocks:
            memory = block(memory, src_valid_len)
        memory = model.encoder.norm(memory)
        close(model.encoder(X, src_valid_len), memory)
        Y = model.embed_target(dec_input)
        for block in model.decoder.blocks:
            Y = block(Y, memory, src_valid_len)
        close(model.output(model.decoder.norm(Y)), model(src, src_valid_len, dec_input))


# --- Training ----------------------------------------------------------------------------------

def random_pairs(n=32, seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(16)]  # 16 words + 4 reserved tokens: vocab 20
    return [([rng.choice(words) for _ in range(rng.randint(5, 8))],
             [rng.choice(words) for _ in range(rng.randint(5, 8))]) for _ in range(n)]


@NORMS
def test_tiny_model_overfits_a_fixed_batch(norm_first):
    pairs = random_pairs()
    src_vocab, tgt_vocab = Vocab(s for s, _ in pairs), Vocab(t for _, t in pairs)
    batch = encode_pairs(pairs, src_vocab, tgt_vocab, num_steps=9)
    torch.manual_seed(0)
    config = TransformerConfig.tiny(len(src_vocab), len(tgt_vocab), norm_first=norm_first)
    model = Transformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    keep = padding_mask(batch.tgt_valid_len, batch.tgt.shape[1])
    start, accuracy = time.perf_counter(), 0.0
    for step in range(1, 401):  # noqa: B007 (reported after the loop)
        logits = model(batch.src, batch.src_valid_len, batch.dec_input)
        loss = masked_cross_entropy(logits, batch.tgt, batch.tgt_valid_len)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = ((logits.argmax(-1) == batch.tgt) & keep).sum().item() / keep.sum().item()
        if accuracy == 1.0:
            break
    print(f"norm_first={norm_first}: 100% after {step} steps, {time.perf_counter() - start:.1f}s")
    assert accuracy == 1.0, f"real-token accuracy {accuracy:.2%} after {step} steps"


# --- Parity with torch.nn.TransformerEncoderLayer / TransformerDecoderLayer ---------------------
# What matches: one block = one torch layer (self-attention, cross-attention, ReLU FFN, add &
# norm, post- or pre-LN, LayerNorm eps 1e-5). What lies outside torch's layers, so is not
# compared here: embedding scaling by sqrt(D), positional encoding, the final LayerNorm of a
# pre-LN stack (nn.TransformerEncoder's `norm=`), the output projection and the KV cache.

@torch.no_grad()
def copy_block_to_torch(ours, theirs):
    copy_weights_to_torch(ours.self_attention, theirs.self_attn)
    if isinstance(ours, DecoderBlock):
        copy_weights_to_torch(ours.cross_attention, theirs.multihead_attn)
    norms = ["norm1", "norm2"] + (["norm3"] if isinstance(ours, DecoderBlock) else [])
    for name in ["linear1", "linear2"]:
        getattr(theirs, name).load_state_dict(getattr(ours.ffn, name).state_dict())
    for name in norms:
        getattr(theirs, name).load_state_dict(getattr(ours, name).state_dict())


def randomise_norms(block):
    """LayerNorms start at weight 1, bias 0; other values make the copy of norms count."""
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)


@NORMS
def test_blocks_match_torch_layers(norm_first):
    torch.manual_seed(0)
    config = TransformerConfig.tiny(V_SRC, V_TGT, norm_first=norm_first)
    D, H, d_ff = config.d_model, config.num_heads, config.d_ff
    kwargs = dict(dropout=0.0, batch_first=True, norm_first=norm_first, activation="relu")
    src_valid_len = torch.tensor([7, 3, 5, 1])
    X, memory, Y = torch.randn(4, 7, D), torch.randn(4, 7, D), torch.randn(4, 6, D)
    key_padding = to_key_padding_mask(padding_mask(src_valid_len, 7))  # (B, T_src), True = pad

    ours_enc, theirs_enc = EncoderBlock(config).eval(), nn.TransformerEncoderLayer(
        D, H, d_ff, **kwargs).eval()
    randomise_norms(ours_enc)
    copy_block_to_torch(ours_enc, theirs_enc)
    expected = theirs_enc(X, src_key_padding_mask=key_padding)
    close(ours_enc(X, src_valid_len), expected)

    ours_dec, theirs_dec = DecoderBlock(config).eval(), nn.TransformerDecoderLayer(
        D, H, d_ff, **kwargs).eval()
    randomise_norms(ours_dec)
    copy_block_to_torch(ours_dec, theirs_dec)
    expected = theirs_dec(Y, memory, tgt_mask=to_torch_attn_mask(causal_mask(6)),
                          memory_key_padding_mask=key_padding)
    close(ours_dec(Y, memory, src_valid_len), expected)


# --- Parity with d2l's classroom encoder block (post-LN) ---------------------------------------

def test_encoder_block_matches_d2l(d2l):
    torch.manual_seed(0)
    config = TransformerConfig.tiny(V_SRC, V_TGT)
    ours = EncoderBlock(config).eval()
    randomise_norms(ours)
    theirs = d2l.TransformerEncoderBlock(config.d_model, config.d_ff, config.num_heads, 0.0,
                                         use_bias=True).eval()
    X, valid_lens = torch.randn(4, 7, config.d_model), torch.tensor([7, 3, 5, 1])
    theirs(X, valid_lens)  # materialise d2l's LazyLinear layers before copying into them
    pairs = [(ours.self_attention.W_q, theirs.attention.W_q),
             (ours.self_attention.W_k, theirs.attention.W_k),
             (ours.self_attention.W_v, theirs.attention.W_v),
             (ours.self_attention.W_o, theirs.attention.W_o),
             (ours.ffn.linear1, theirs.ffn.dense1), (ours.ffn.linear2, theirs.ffn.dense2),
             (ours.norm1, theirs.addnorm1.ln), (ours.norm2, theirs.addnorm2.ln)]
    for mine, d2ls in pairs:
        d2ls.load_state_dict(mine.state_dict())
    with torch.no_grad():
        close(ours(X, valid_lens), theirs(X, valid_lens))
