"""Decoding: turn an encoder-decoder's next-token distributions into output sentences.

# B batch · K beam_size · T time · V target vocabulary size

Every decoder here drives a model through the interface of ``course_lib.models.base``: it calls
``encode`` once, then ``decode`` with only the newly chosen tokens (B, 1) and the carried state,
so RNN hidden states and the Transformer's key/value cache are reused, never recomputed. (For a
model that keeps the interface's own ``decode``, the call is ``next_token_logits``: the same
logits, written into a buffer reused at every step.)

- **Greedy** takes the most likely token at every step. Fast and deterministic, but the best
  *next* token need not start the best *sentence*, and an early choice is never undone.
- **Beam search** keeps the ``beam_size`` most likely prefixes (hypotheses) of every sentence,
  extends each by every token and keeps the best ``beam_size`` again. A hypothesis that emits
  ``<eos>`` leaves the beam as a finished one. Every token adds a negative log-probability, so
  raw scores favour short outputs; length normalisation ranks by ``log p / length ** alpha``
  instead (``alpha = length_penalty``). ``beam_size=1`` is exactly greedy decoding.
- **Sampling** draws every token from the model's distribution, sharpened (temperature < 1) or
  flattened (> 1) by dividing the logits by a temperature, optionally cut to the ``top_k`` most
  likely tokens. Varied outputs (back-translation, data augmentation) at the price of odd words.

A sentence stops at its first ``<eos>``: later positions hold ``<pad>`` and count for nothing.

    result = beam_search(model, src, src_valid_len, beam_size=4, max_len=20)
    result.to_sentences(data.tgt_vocab)   # or simply: translate(model, data, ["go ."])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from course_lib.data.translation import TranslationData
from course_lib.data.vocab import Vocab
from course_lib.models.base import EncoderDecoder, inference

__all__ = ["Hypothesis", "DecodeResult", "greedy_decode", "beam_search", "sample_decode",
           "translate"]


@dataclasses.dataclass
class Hypothesis:
    """One finished beam-search hypothesis."""

    tokens: list[int]  # output ids, ending in <eos> unless max_len cut it
    log_prob: float    # sum of the model's log-probabilities of these tokens
    score: float       # log_prob / len(tokens) ** length_penalty: what beam search ranks by


@dataclasses.dataclass
class DecodeResult:
    """Output of a decoder: one sequence per source sentence."""

    tokens: torch.Tensor     # (B, T) long, T <= max_len; <pad> after each sequence's end
    lengths: torch.Tensor    # (B,) long: tokens per sequence, <eos> included when produced
    log_probs: torch.Tensor  # (B,) float: sum of log p(token) over those tokens, <eos> included
    scores: torch.Tensor     # (B,) float: what the decoder ranked by (log_probs unless normalised)
    hypotheses: list[list[Hypothesis]] | None = None  # beam_search(return_all=True): best first

    def to_sentences(self, vocab: Vocab) -> list[str]:
        """Tokens joined by spaces, stopping at ``<eos>`` (special tokens left out)."""
        return [" ".join(vocab.decode(row[:n].tolist()))
                for row, n in zip(self.tokens, self.lengths.tolist(), strict=True)]


def _check_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _padded_output(output: nn.Linear, multiple: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The output layer's weight (V', D) and bias (V',), V rounded up to V' = a multiple of 16.

    The extra rows have zero weights and bias -inf, so the extra logits are -inf: they never win
    an argmax, get probability 0, and leave the log-softmax of the real tokens as it is. With
    whole 64-byte rows of 16 floats, CPU kernels stop handling a ragged end in every row: on
    this course's machine the (1,000 x 256) x (256 x V) product took 18 ms for the 3,356 tokens
    of the French vocabulary and 14 ms for 3,360 (``docs/results.md``).
    """
    weight, bias = output.weight, output.bias  # (V, D), (V,) or None
    V, D = weight.shape
    extra = -V % multiple
    if bias is None:
        bias = weight.new_zeros(V)
    if extra == 0:
        return weight, bias
    return (torch.cat([weight, weight.new_zeros(extra, D)]),
            torch.cat([bias, bias.new_full((extra,), float("-inf"))]))


class _Step:
    """Runs one decoder step: the logits (R, V') of its new tokens and their log-softmax.

    Both come back in buffers reused at every step: on CPU a fresh (R, V) tensor of many
    megabytes per step costs page faults. A model that keeps the interface's own ``decode``
    (the output layer on ``decode_features``) writes its logits straight into the buffer
    (``EncoderDecoder.next_token_logits``), through an output layer padded to V' >= V columns
    (``_padded_output``): columns V.. hold logits and log-probabilities of -inf, which no
    argmax, sample or top-k among the finite ones picks. A model that overrides ``decode``, as
    lesson 01's counting model does, is called through its ``decode`` (V' = V). The rows needed
    shrink as sentences finish (greedy) or grow from B to K*B (beam search): the buffers grow
    when needed and a step uses their first R rows.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.buffered = (isinstance(model, EncoderDecoder)
                         and getattr(model.decode, "__func__", None) is EncoderDecoder.decode)
        self.output = _padded_output(model.output) if self.buffered else None
        # V, the real tokens: the output layer's width, else the width of each step's logits
        self.vocab_size = model.output.out_features if self.buffered else None
        self.logits: torch.Tensor | None = None     # (rows, V') in the model's dtype
        self.log_probs: torch.Tensor | None = None  # (rows, V') float32

    def __call__(self, token: torch.Tensor, state):
        """token (R, 1) -> logits (R, V'), log-probabilities (R, V') float32, new state."""
        R = token.shape[0]
        if self.buffered:
            weight = self.output[0]
            if self.logits is None or self.logits.shape[0] < R:
                self.logits = weight.new_empty(R, weight.shape[0])
            logits, state = self.model.next_token_logits(token, state, out=self.logits[:R],
                                                         output=self.output)
        else:
            logits, state = self.model.decode(token, state)  # (R, 1, V)
            logits = logits[:, -1]
            self.vocab_size = logits.shape[-1]
        if (self.log_probs is None or self.log_probs.shape[0] < R
                or self.log_probs.shape[1] != logits.shape[1]):
            self.log_probs = torch.empty(R, logits.shape[-1], dtype=torch.float32,
                                         device=logits.device)
        log_probs = torch.log_softmax(logits.float(), dim=-1, out=self.log_probs[:R])
        return logits, log_probs, state


def _token_by_token(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor,
                    max_len: int, bos: int, eos: int, pad: int,
                    choose: Callable[[torch.Tensor, int], torch.Tensor]) -> DecodeResult:
    """Shared loop of greedy and sampling: ``choose(logits, V)`` maps logits (R, V') to tokens
    (R,); columns V.. of the logits are the output layer's padding (``_Step``), -inf.

    Sentences that have emitted ``<eos>`` leave the batch (``state.reorder``), so later steps
    only compute the R sentences still running.
    """
    with inference(model):
        state = model.encode(src, src_valid_len)
        B, device = src.shape[0], src.device
        step = _Step(model)
        rows = torch.arange(B, device=device)  # (R,) which sentence each state row belongs to
        token = torch.full((B, 1), bos, dtype=torch.long, device=device)
        tokens = torch.full((B, max_len), pad, dtype=torch.long, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        log_probs = torch.zeros(B, device=device)
        for t in range(max_len):
            logits, all_log_p, state = step(token, state)  # (R, V') each: the new token only
            chosen = choose(logits.float(), step.vocab_size)  # (R,)
            log_p = all_log_p.gather(1, chosen.unsqueeze(1)).squeeze(1)  # (R,)
            tokens[rows, t] = chosen
            log_probs[rows] += log_p
            lengths[rows] += 1
            running = chosen != eos  # (R,)
            if not bool(running.any()):
                break
            if not bool(running.all()):  # drop finished sentences from the batch
                keep = running.nonzero().squeeze(1)
                state, rows, chosen = state.reorder(keep), rows[keep], chosen[keep]
            token = chosen.unsqueeze(1)  # (R, 1)
        tokens = tokens[:, :max(int(lengths.max()), 1)]  # (B, T)
    return DecodeResult(tokens, lengths, log_probs, log_probs.clone())


def greedy_decode(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor, *,
                  max_len: int, bos: int = 1, eos: int = 2, pad: int = 0) -> DecodeResult:
    """Most likely token at every step, for a batch of sources src (B, T_src), lengths (B,)."""
    _check_at_least("max_len", max_len, 1)
    return _token_by_token(model, src, src_valid_len, max_len, bos, eos, pad,
                           lambda logits, V: logits.max(dim=-1).indices)  # argmax, 2x faster


def sample_decode(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor, *,
                  max_len: int, temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None, bos: int = 1, eos: int = 2,
                  pad: int = 0) -> DecodeResult:
    """Draw every token from softmax(logits / temperature), cut to the top_k tokens if given.

    ``log_probs`` and ``scores`` are the model's own log-probabilities of the drawn tokens
    (temperature 1, no cut), so they compare with those of greedy and beam search. Pass a seeded
    ``generator`` (on src's device) for reproducible samples.
    """
    _check_at_least("max_len", max_len, 1)
    if not temperature > 0:  # also catches NaN
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None:
        _check_at_least("top_k", top_k, 1)

    def choose(logits: torch.Tensor, V: int) -> torch.Tensor:
        # Not the padding columns: torch.multinomial draws a random number per column, so
        # they would change the sample a seed gives.
        logits = logits[:, :V] / temperature  # (B, V)
        if top_k is not None and top_k < logits.shape[-1]:
            best, index = logits.topk(top_k, dim=-1)  # (B, k): exactly k survive, ties or not
            logits = torch.full_like(logits, float("-inf")).scatter(1, index, best)
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)

    return _token_by_token(model, src, src_valid_len, max_len, bos, eos, pad, choose)


def _add_finished(pool: list[Hypothesis], tokens: list[int], log_prob: float,
                  length_penalty: float, beam_size: int) -> None:
    """Add a hypothesis to a sentence's pool, kept sorted best first and at most beam_size long."""
    pool.append(Hypothesis(tokens, log_prob, log_prob / len(tokens) ** length_penalty))
    pool.sort(key=lambda h: -h.score)  # stable: the earlier of two equal scores stays first
    del pool[beam_size:]


def _follow_parents(state, parents: torch.Tensor, sentences: torch.Tensor | None, width: int,
                    same_rows: bool):
    """The state for beam search's next step: decoder row i continues row ``parents[i]``, and
    only ``sentences`` (indices of the current ones; None: all) go on, ``width`` rows each.

    What depends on the source alone (``per_source``) is never copied where it need not be: a
    state that ``shares_sources`` keeps one row of it per sentence, and drops only the rows of
    sentences that leave; another state keeps a copy in every decoder row, left as it is while
    every row keeps its sentence (``same_rows``: no sentence leaves, the width stays).
    """
    per_source = getattr(state, "per_source", ())
    if not getattr(state, "shares_sources", False):
        return state.reorder(parents, keep=per_source if same_rows else ())
    state = state.reorder(parents, keep=per_source)
    if sentences is not None:
        state = state.reorder(sentences, only=per_source)
    return dataclasses.replace(state, beams=width)


def beam_search(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor, *,
                beam_size: int, max_len: int, length_penalty: float = 0.0, bos: int = 1,
                eos: int = 2, pad: int = 0, return_all: bool = False) -> DecodeResult:
    """The best of beam_size hypotheses per sentence, all sentences and beams in one batch.

    Ranking uses simple length normalisation, ``score = log p / length ** length_penalty``
    (length counts the emitted tokens, ``<eos>`` included; 0 means raw log-probabilities), not
    GNMT's ((5 + length) / 6) ** alpha. Each step extends every live hypothesis by every token;
    an ``<eos>`` extension ranked among the step's best K is finished, and the best K other
    extensions form the new beam (so K = 1 is greedy). A sentence is done once no live
    hypothesis can beat its best finished one (log p only falls, the length is at most
    max_len): nothing later could change the answer, so stopping there gives the same result
    as going on, in fewer steps. Hypotheses still live at max_len finish there without
    ``<eos>``. With ``return_all`` the result also lists each sentence's finished hypotheses,
    best first; a sentence then goes on until it has K finished hypotheses that no live one
    can beat.
    """
    _check_at_least("beam_size", beam_size, 1)
    _check_at_least("max_len", max_len, 1)
    if not length_penalty >= 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")
    K = beam_size
    settled = K if return_all else 1  # how many of the best finished must be beyond reach
    with inference(model):
        state = model.encode(src, src_valid_len)
        B, device = src.shape[0], src.device
        # Rows of (S, W) tensors: the S sentences still going, each with W live hypotheses
        # (state row s*W + w). The beam starts as one empty prefix per sentence (W = 1, so the
        # first step runs B rows, not K*B) and widens to K after the first step.
        alive = list(range(B))  # which sentence each of the S rows belongs to
        live = torch.zeros(B, 1, device=device)  # log-probabilities of the live prefixes
        prefixes = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (S, W, length)
        token = torch.full((B, 1), bos, dtype=torch.long, device=device)
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        step_once = _Step(model)
        for length in range(1, max_len + 1):
            S, W = live.shape
            _, step, state = step_once(token, state)  # log-probabilities (S*W, V')
            V, padded = step_once.vocab_size, step.shape[-1]  # tokens V, columns V' >= V
            # Every one-token extension of every live prefix, scored: (S, W*V'). Each beam has
            # one <eos> extension, so the best 2K hold at least 2K - W >= K others.
            candidates = step.view(S, W, padded).add_(live.unsqueeze(-1)).view(S, W * padded)
            num_top = min(2 * K, W * V)
            top_scores, top_index = candidates.topk(num_top, dim=1)  # (S, num_top)
            top_beam, top_token = top_index // padded, top_index % padded  # (S, num_top) each
            # A padding column (-inf) is picked only where fewer than num_top extensions are
            # finite; such a hypothesis is dead (log p = -inf) and never finishes, but it still
            # feeds its token to the model: give it a real one.
            top_token = top_token.masked_fill_(top_token >= V, pad)
            is_eos = top_token == eos
            ends = is_eos[:, :K] & top_scores[:, :K].isfinite()  # <eos> among the best K
            if bool(ends.any()):  # one transfer to Python for all of this step's endings
                s_end, rank_end = ends.nonzero().unbind(1)  # (E,) each
                ended = prefixes[s_end, top_beam[s_end, rank_end]].tolist()  # E prefixes
                for s, tokens, score in zip(s_end.tolist(), ended,
                                            top_scores[s_end, rank_end].tolist(), strict=True):
                    _add_finished(finished[alive[s]], tokens + [eos], score, length_penalty, K)
            # The new beam: the best extensions that do not end in <eos>, best first; K of
            # them, or all there are when the vocabulary is tiny (num_top - W of them).
            rank = torch.arange(num_top, device=device).expand_as(top_index)
            width = min(K, num_top - W)
            keep = torch.where(is_eos, rank + num_top, rank).argsort(dim=1)[:, :width]
            live = top_scores.gather(1, keep)  # (S, width)
            beam, token = top_beam.gather(1, keep), top_token.gather(1, keep)  # (S, width) each
            prefixes = torch.cat([prefixes.gather(1, beam.unsqueeze(-1).expand(
                *beam.shape, prefixes.shape[2])), token.unsqueeze(-1)], dim=2)  # (S, width, length)
            parents = torch.arange(S, device=device).unsqueeze(1) * W + beam  # (S, width)
            if length == max_len:
                break
            # Best any live hypothesis can still reach: log p <= now <= 0, length <= max_len.
            bounds = (live.max(dim=1).values / max_len ** length_penalty).tolist()
            going = [s for s in range(S) if not (
                bounds[s] == float("-inf") or (len(finished[alive[s]]) >= settled
                                               and finished[alive[s]][settled - 1].score
                                               >= bounds[s]))]
            if not going:
                break
            same_rows = len(going) == S and width == W
            index = None
            if len(going) < S:  # done sentences leave the batch: later steps skip them
                index = torch.tensor(going, device=device)
                live, prefixes = live[index], prefixes[index]
                parents, token = parents[index], token[index]
                alive = [alive[s] for s in going]
            state = _follow_parents(state, parents.view(-1), index, width, same_rows)
            token = token.reshape(-1, 1)  # (S*width, 1)
        if length == max_len:  # sentences still going at max_len: live hypotheses finish there
            for s, b in enumerate(alive):
                for k in range(live.shape[1]):
                    if live[s, k].isfinite():
                        _add_finished(finished[b], prefixes[s, k].tolist(), live[s, k].item(),
                                      length_penalty, K)
    best = [pool[0] for pool in finished]
    T = max(len(h.tokens) for h in best)
    tokens = torch.full((B, T), pad, dtype=torch.long, device=device)
    for b, h in enumerate(best):
        tokens[b, :len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    return DecodeResult(
        tokens=tokens,
        lengths=torch.tensor([len(h.tokens) for h in best], device=device),
        log_probs=torch.tensor([h.log_prob for h in best], device=device),
        scores=torch.tensor([h.score for h in best], device=device),
        hypotheses=finished if return_all else None)


def translate(model: nn.Module, data: TranslationData, sentences: list[str], *,
              beam_size: int = 1, max_len: int | None = None) -> list[str]:
    """Translate raw source sentences with greedy (beam_size=1) or beam search decoding.

    ``max_len`` defaults to the corpus's padded target length (``data.num_steps``).
    """
    if max_len is None:
        max_len = data.num_steps if isinstance(data.num_steps, int) else data.num_steps[1]
    if not sentences:
        return []
    src, src_valid_len = data.encode_sources(sentences)
    device = next(model.parameters()).device
    src, src_valid_len = src.to(device), src_valid_len.to(device)
    if beam_size == 1:
        result = greedy_decode(model, src, src_valid_len, max_len=max_len)
    else:
        result = beam_search(model, src, src_valid_len, beam_size=beam_size, max_len=max_len)
    return result.to_sentences(data.tgt_vocab)
