"""Decoding: turn an encoder-decoder's next-token distributions into output sentences.

# B batch · S sentences still decoding · K beam_size · W live hypotheses per sentence
# T time · V target vocabulary size · R decoder rows in a step

Every decoder here drives a model through the interface of ``course_lib.models.base``: it calls
``encode`` once, then ``decode`` with only the newly chosen tokens (R, 1) and the carried state,
so RNN hidden states and the Transformer's key/value cache are reused, never recomputed.

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

The source goes to the model's device first (nothing is copied when it is there already), and
the result stays there. Each decoder takes ``fast=True`` to run the model through
``course_lib.fast`` instead of the plain ``Runner`` below: the same tokens and scores (tests
prove it), in less time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from course_lib.bleu import corpus_bleu
from course_lib.data.translation import TranslationData
from course_lib.devices import model_device, to_device
from course_lib.models.base import DecoderState, inference
from course_lib.results import DecodeResult, Hypothesis

__all__ = ["Hypothesis", "DecodeResult", "Runner", "greedy_decode", "beam_search",
           "sample_decode", "translate", "make_bleu_fn"]


class Runner:
    """How the decoders run a model: encode once, then one step of new tokens at a time.

    ``course_lib.fast.FastRunner`` has the same four methods and gives the same results faster.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> DecoderState:
        return self.model.encode(src, src_valid_len)

    def step(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, DecoderState]:
        """Log-probabilities (R, V), float32, of the token after tokens (R,), and the new state."""
        logits, state = self.model.decode(tokens.unsqueeze(1), state)  # (R, 1, V)
        return logits[:, -1].float().log_softmax(dim=-1), state

    def reorder(self, state, rows: torch.Tensor, beams: int = 1) -> DecoderState:
        """The state of this state's rows ``rows`` (R',): ``beams`` rows per sentence."""
        return state.reorder(rows)

    def extend(self, log_probs: torch.Tensor, live: torch.Tensor, n: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The n best one-token extensions of every sentence's live prefixes (log p: live
        (S, W)), from their next-token log_probs (S*W, V): scores, beams, tokens, each (S, n)."""
        (S, W), V = live.shape, log_probs.shape[-1]
        scores = (log_probs.view(S, W, V) + live.unsqueeze(-1)).view(S, W * V)
        top_scores, index = scores.topk(min(n, W * V), dim=1)
        return top_scores, index // V, index % V


def _runner(model: nn.Module, fast: bool) -> Runner:
    if not fast:
        return Runner(model)
    from course_lib.fast.decoding import FastRunner  # the fast layer builds on this module
    return FastRunner(model)


def _check_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _token_by_token(runner: Runner, src: torch.Tensor, src_valid_len: torch.Tensor,
                    max_len: int, bos: int, eos: int, pad: int,
                    choose: Callable[[torch.Tensor], torch.Tensor]) -> DecodeResult:
    """Greedy's and sampling's loop: ``choose`` maps log-probabilities (R, V) to tokens (R,).

    Sentences that have emitted ``<eos>`` leave the batch, so later steps only compute the R
    sentences still running.
    """
    src, src_valid_len = to_device((src, src_valid_len), model_device(runner.model))
    with inference(runner.model):
        state = runner.encode(src, src_valid_len)
        B, device = src.shape[0], src.device
        rows = torch.arange(B, device=device)  # (R,) which sentence each state row belongs to
        token = torch.full((B,), bos, dtype=torch.long, device=device)
        tokens = torch.full((B, max_len), pad, dtype=torch.long, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        log_probs = torch.zeros(B, device=device)
        for t in range(max_len):
            log_p, state = runner.step(token, state)  # (R, V)
            token = choose(log_p)  # (R,)
            tokens[rows, t] = token
            log_probs[rows] += log_p.gather(1, token.unsqueeze(1)).squeeze(1)
            lengths[rows] += 1
            running = token != eos  # (R,)
            if not bool(running.any()):
                break
            if not bool(running.all()):  # finished sentences leave the batch
                keep = running.nonzero().squeeze(1)
                state, rows, token = runner.reorder(state, keep), rows[keep], token[keep]
        tokens = tokens[:, :max(int(lengths.max()), 1)]  # (B, T)
    return DecodeResult(tokens, lengths, log_probs, log_probs.clone())


def greedy_decode(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor, *,
                  max_len: int, bos: int = 1, eos: int = 2, pad: int = 0,
                  fast: bool = False) -> DecodeResult:
    """Most likely token at every step, for a batch of sources src (B, T_src), lengths (B,)."""
    _check_at_least("max_len", max_len, 1)
    return _token_by_token(_runner(model, fast), src, src_valid_len, max_len, bos, eos, pad,
                           lambda log_p: log_p.max(dim=-1).indices)  # argmax, 2x faster


def sample_decode(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor, *,
                  max_len: int, temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None, bos: int = 1, eos: int = 2,
                  pad: int = 0, fast: bool = False) -> DecodeResult:
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

    def choose(log_p: torch.Tensor) -> torch.Tensor:
        # log p = logits - a constant per row, so softmax(log p / t) = softmax(logits / t).
        scores = log_p / temperature  # (R, V)
        if top_k is not None and top_k < scores.shape[-1]:
            best, index = scores.topk(top_k, dim=-1)  # (R, k): exactly k survive, ties or not
            scores = torch.full_like(scores, float("-inf")).scatter(1, index, best)
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)

    return _token_by_token(_runner(model, fast), src, src_valid_len, max_len, bos, eos, pad,
                           choose)


def _add_finished(pool: list[Hypothesis], tokens: list[int], log_prob: float,
                  length_penalty: float, beam_size: int) -> None:
    """Add a hypothesis to a sentence's pool, kept sorted best first and at most beam_size long."""
    pool.append(Hypothesis(tokens, log_prob, log_prob / len(tokens) ** length_penalty))
    pool.sort(key=lambda h: -h.score)  # stable: the earlier of two equal scores stays first
    del pool[beam_size:]


def _finish(pools: list[list[Hypothesis]], sentence: list[int], prefixes: torch.Tensor,
            beam: torch.Tensor, scores: torch.Tensor, chosen: torch.Tensor, suffix: list[int],
            length_penalty: float, beam_size: int) -> None:
    """Move the hypotheses marked in ``chosen`` (S, n) to their sentences' pools: the prefix
    (S, W, length) of ``beam[s, i]`` followed by ``suffix``, with log p ``scores[s, i]``."""
    if not bool(chosen.any()):
        return
    s_end, i_end = chosen.nonzero().unbind(1)  # (E,) each
    ended = prefixes[s_end, beam[s_end, i_end]].tolist()  # one transfer for all E of them
    for s, tokens, log_p in zip(s_end.tolist(), ended, scores[s_end, i_end].tolist(), strict=True):
        _add_finished(pools[sentence[s]], tokens + suffix, log_p, length_penalty, beam_size)


def _settled(pool: list[Hypothesis], best_reachable: float, settled: int) -> bool:
    """Whether no live hypothesis, which can reach at best ``best_reachable``, can beat the
    ``settled``-th best finished one."""
    return best_reachable == float("-inf") or (
        len(pool) >= settled and pool[settled - 1].score >= best_reachable)


def _best_of_pools(pools: list[list[Hypothesis]], pad: int, device: torch.device,
                   return_all: bool) -> DecodeResult:
    """The best finished hypothesis of every sentence, as a padded ``DecodeResult``."""
    best = [pool[0] for pool in pools]
    tokens = torch.full((len(best), max(len(h.tokens) for h in best)), pad, dtype=torch.long)
    for b, h in enumerate(best):
        tokens[b, :len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    return DecodeResult(tokens.to(device),
                        torch.tensor([len(h.tokens) for h in best], device=device),
                        torch.tensor([h.log_prob for h in best], device=device),
                        torch.tensor([h.score for h in best], device=device),
                        pools if return_all else None)


def beam_search(model: nn.Module, src: torch.Tensor, src_valid_len: torch.Tensor, *,
                beam_size: int, max_len: int, length_penalty: float = 0.0, bos: int = 1,
                eos: int = 2, pad: int = 0, return_all: bool = False,
                fast: bool = False) -> DecodeResult:
    """The best of beam_size hypotheses per sentence, all sentences and beams in one batch.

    Ranking uses ``score = log p / length ** length_penalty`` (length counts the emitted
    tokens, ``<eos>`` included; 0 means raw log-probabilities). Each step extends every live
    hypothesis by every token; an ``<eos>`` extension among the step's best K finishes, and
    the best K other extensions form the new beam (so K = 1 is greedy). A sentence is done once
    no live hypothesis can beat its best finished one (log p only falls): stopping there gives
    the same answer in fewer steps. Live hypotheses finish at max_len without ``<eos>``. With
    ``return_all`` the result lists each sentence's finished hypotheses, best first, and a
    sentence goes on until K finished ones are beyond the reach of the live ones.
    """
    _check_at_least("beam_size", beam_size, 1)
    _check_at_least("max_len", max_len, 1)
    if not length_penalty >= 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")
    K, runner = beam_size, _runner(model, fast)
    settled = K if return_all else 1  # how many of the best finished must be beyond reach
    src, src_valid_len = to_device((src, src_valid_len), model_device(model))
    with inference(model):
        state = runner.encode(src, src_valid_len)
        B, device = src.shape[0], src.device
        pools: list[list[Hypothesis]] = [[] for _ in range(B)]  # finished, per sentence
        sentence = list(range(B))  # the sentence of each of the S rows still decoding
        live = torch.zeros(B, 1, device=device)  # (S, W) log p of the live prefixes; W = 1 first
        prefixes = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (S, W, length)
        token = torch.full((B,), bos, dtype=torch.long, device=device)  # (S*W,)
        for length in range(1, max_len + 1):
            (S, W), (log_p, state) = live.shape, runner.step(token, state)  # log_p (S*W, V)
            # Each beam has one <eos> extension, so the best 2K hold at least K others.
            scores, beam, token = runner.extend(log_p, live, 2 * K)  # (S, n) each
            is_eos = token == eos
            ends = is_eos[:, :K] & scores[:, :K].isfinite()  # <eos> among the best K finishes
            _finish(pools, sentence, prefixes, beam, scores, ends, [eos], length_penalty, K)
            # The new beam: the best extensions that are not <eos>, best first.
            rank = torch.arange(scores.shape[1], device=device).expand_as(scores)
            keep = torch.where(is_eos, rank + scores.shape[1], rank).argsort(dim=1)
            keep = keep[:, :min(K, scores.shape[1] - W)]  # (S, width)
            live, beam, token = scores.gather(1, keep), beam.gather(1, keep), token.gather(1, keep)
            prefixes = torch.cat([prefixes[torch.arange(S, device=device).unsqueeze(1), beam],
                                  token.unsqueeze(-1)], dim=2)  # (S, width, length)
            if length == max_len:  # hypotheses still live finish here, without <eos>
                _finish(pools, sentence, prefixes, rank[:, :live.shape[1]], live,
                        live.isfinite(), [], length_penalty, K)
                break
            bounds = (live.max(dim=1).values / max_len ** length_penalty).tolist()
            going = [s for s in range(S) if not _settled(pools[sentence[s]], bounds[s], settled)]
            if not going:
                break
            index = torch.tensor(going, device=device)  # done sentences leave the batch
            parents = (torch.arange(S, device=device).unsqueeze(1) * W + beam)[index]  # rows
            live, prefixes, token = live[index], prefixes[index], token[index]
            sentence = [sentence[s] for s in going]
            state = runner.reorder(state, parents.view(-1), beams=live.shape[1])
            token = token.view(-1)  # (S*width,)
    return _best_of_pools(pools, pad, device, return_all)


def translate(model: nn.Module, data: TranslationData, sentences: list[str], *,
              beam_size: int = 1, max_len: int | None = None, fast: bool = False) -> list[str]:
    """Translate raw source sentences with greedy (beam_size=1) or beam search decoding.

    ``max_len`` defaults to the corpus's padded target length (``data.num_steps``).
    """
    if max_len is None:
        max_len = data.num_steps if isinstance(data.num_steps, int) else data.num_steps[1]
    if not sentences:
        return []
    src, src_valid_len = data.encode_sources(sentences)  # the decoders move them to the model
    if beam_size == 1:
        result = greedy_decode(model, src, src_valid_len, max_len=max_len, fast=fast)
    else:
        result = beam_search(model, src, src_valid_len, beam_size=beam_size, max_len=max_len,
                             fast=fast)
    return result.to_sentences(data.tgt_vocab)


def make_bleu_fn(data: Any, split: str = "valid", *, max_sentences: int | None = 200,
                 max_len: int | None = None, batch_size: int = 256) -> Callable[[nn.Module], float]:
    """``bleu_fn(model)``: greedy-decode the first ``max_sentences`` of a split, corpus BLEU.

    Compares with ``data.references(split)`` tokenised the corpus's way (``tokenize="none"``).
    ``fit(..., bleu_fn=make_bleu_fn(data))`` reports it after every epoch.
    """
    tensors = data.tensors[split]
    count = min(max_sentences or tensors.num_sequences, tensors.num_sequences)
    references = data.references(split)[:count]
    steps = data.num_steps if isinstance(data.num_steps, int) else data.num_steps[1]

    def bleu_fn(model: nn.Module) -> float:
        hypotheses: list[str] = []
        with inference(model):
            for i in range(0, count, batch_size):
                rows = slice(i, min(i + batch_size, count))
                result = greedy_decode(model, tensors.src[rows], tensors.src_valid_len[rows],
                                       max_len=max_len or steps)
                hypotheses += result.to_sentences(data.tgt_vocab)
        return corpus_bleu(hypotheses, references, tokenize="none")

    return bleu_fn
