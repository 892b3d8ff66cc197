"""hw2's tests against typical mistakes: each mutant of the solution loses points, each honest
rewrite keeps them all, graded through the real `course grade` (harness: tests/mutants.py).

Mutants: n-grams off by one; clipping missing or against the summed references; a brevity
penalty inverted (c/r) or applied when c > r; the reference length of the shortest reference or
the longer one on a tie; an arithmetic mean; orders off by one; add-one smoothing; d2l's BLEU
with uniform weights; a greedy decoder that never stops at eos or drops it; a beam search
without length normalisation, with every hypothesis on one state, with live hypotheses taken
from the top K before the finished ones are removed, with finished ones outside the top K, or
with its length not counting eos. Rewrites: zip n-grams and a dict of maxima, a product of
precisions, early stopping greedy decoding, a heap-based beam search.
"""

from __future__ import annotations

import pytest
from mutants import mutant_suite

pytestmark = pytest.mark.slow

# The solution's lines that the mutants edit (each must occur once in its cell).
LOG_MEAN = ("    log_mean = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / "
            "max_order\n")
REF_LEN = ("        ref_len += min((len(ref) for ref in ref_tokens_list),\n"
           "                       key=lambda length: (abs(length - len(hyp_tokens)), length))\n")
CUT = "    return [row[:row.index(eos) + 1] if eos in row else row for row in emitted]\n"
FINISHED = ("            finished += [(tokens, lp) for lp, tokens, _ in extensions[:beam_size]\n"
            "                         if tokens[-1] == eos]\n")
LIVE = ("            live = [(tokens, lp, state) for lp, tokens, state in extensions\n"
        "                    if tokens[-1] != eos][:beam_size]\n")
SCORED = ("    scored = [(log_prob / len(tokens) ** length_penalty, tokens) for tokens, log_prob "
          "in finished]\n")

MUTANTS = {
    "ngrams_miss_the_last": ("ngram_counts", [
        ("range(len(tokens) - n + 1)", "range(len(tokens) - n)")]),
    "no_clipping": ("clipped_matches", [
        ("min(count, most_in_one_ref[ngram])", "(count if most_in_one_ref[ngram] else 0)")]),
    "clipped_by_summed_references": ("clipped_matches", [
        ("most_in_one_ref |= ngram_counts(ref_tokens, n)",
         "most_in_one_ref += ngram_counts(ref_tokens, n)")]),
    "brevity_penalty_inverted": ("brevity_penalty", [
        ("math.exp(1 - ref_len / hyp_len)", "math.exp(1 - hyp_len / ref_len)")]),
    "brevity_penalty_when_longer": ("brevity_penalty", [
        ("    if hyp_len >= ref_len:\n        return 1.0\n", "")]),
    "shortest_reference_length": ("corpus_bleu", [
        (REF_LEN, "        ref_len += min(len(ref) for ref in ref_tokens_list)\n")]),
    "closest_reference_tie_to_longer": ("corpus_bleu", [
        (REF_LEN, REF_LEN.replace("len(hyp_tokens)), length)", "len(hyp_tokens)), -length)"))]),
    "arithmetic_mean_of_precisions": ("corpus_bleu", [
        (LOG_MEAN, "    log_mean = math.log(sum(m / t for m, t in zip(matches, totals, "
                   "strict=True)) / max_order)\n")]),
    "orders_off_by_one": ("corpus_bleu", [
        ("range(1, max_order + 1)", "range(1, max_order)")]),
    "add_one_smoothing": ("corpus_bleu", [
        ("    if min(matches) == 0:", "    if False:"),
        ("math.log(m / t)", "math.log((m + 1) / (t + 1))")]),
    "d2l_bleu_uniform_weights": ("d2l_bleu", [("math.pow(0.5, n)", "1 / k")]),
    "greedy_does_not_stop_at_eos": ("greedy_decode", [(CUT, "    return emitted\n")]),
    "greedy_drops_eos": ("greedy_decode", [(CUT, CUT.replace("row.index(eos) + 1",
                                                             "row.index(eos)"))]),
    "beam_without_length_normalisation": ("beam_search", [
        (SCORED, SCORED.replace(" / len(tokens) ** length_penalty", ""))]),
    "beam_every_hypothesis_on_one_state": ("beam_search", [
        ("model.decode(last, state)", "model.decode(last, live[0][2])")]),
    "beam_live_from_top_k_with_finished": ("beam_search", [
        (LIVE, "            live = [(tokens, lp, state) for lp, tokens, state in "
               "extensions[:beam_size]\n                    if tokens[-1] != eos]\n")]),
    "beam_finishes_outside_top_k": ("beam_search", [
        (FINISHED, FINISHED.replace("extensions[:beam_size]", "extensions"))]),
    "beam_length_without_eos": ("beam_search", [
        (SCORED, SCORED.replace("len(tokens) **",
                                "max(1, len(tokens) - (tokens[-1] == eos)) **"))]),
}

# name -> {answer cell: whole new source}: the same functions written differently.
REWRITES = {
    "zip_ngrams_and_max_dict": {"ngram_counts": '''\
def ngram_counts(tokens, n):
    """Count the n-grams of a token list: a Counter mapping n-token tuples to counts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return Counter(zip(*(tokens[i:] for i in range(n))))
''', "clipped_matches": '''\
def clipped_matches(hyp_tokens, ref_tokens_list, n):
    """(clipped matches, total) for the n-grams of one hypothesis against its references."""
    most = {}
    for ref_tokens in ref_tokens_list:
        for ngram, count in ngram_counts(ref_tokens, n).items():
            most[ngram] = max(most.get(ngram, 0), count)
    hyp_counts = ngram_counts(hyp_tokens, n)
    return (sum(min(c, most.get(g, 0)) for g, c in hyp_counts.items()),
            max(len(hyp_tokens) - n + 1, 0))
'''},
    "product_of_precisions": {"brevity_penalty": '''\
def brevity_penalty(hyp_len, ref_len):
    """BLEU's brevity penalty for a hypothesis of hyp_len tokens and a reference of ref_len."""
    if hyp_len == 0:
        return 0.0 if ref_len > 0 else 1.0
    return math.exp(min(0.0, 1 - ref_len / hyp_len))
''', "corpus_bleu": '''\
def corpus_bleu(hypotheses, references, max_order=4, tokenize=str.split):
    """Corpus BLEU (0 to 100) of hypotheses against their references, without smoothing."""
    if len(hypotheses) == 0 or len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses, {len(references)} references")
    counts = [[0, 0] for _ in range(max_order)]  # [matches, total] per order
    c = r = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hyp = tokenize(hypothesis)
        ref_list = [tokenize(ref) for ref in ([refs] if isinstance(refs, str) else refs)]
        lengths = sorted(len(ref) for ref in ref_list)
        c += len(hyp)
        r += min(lengths, key=lambda length: abs(length - len(hyp)))  # sorted: shorter on ties
        for order, pair in enumerate(counts, start=1):
            found, total = clipped_matches(hyp, ref_list, order)
            pair[0] += found
            pair[1] += total
    if any(found == 0 for found, _ in counts):
        return 0.0
    precision = math.prod(found / total for found, total in counts) ** (1 / max_order)
    return 100 * brevity_penalty(c, r) * precision
'''},
    "early_stopping_greedy": {"greedy_decode": '''\
def greedy_decode(model, src, src_valid_len, max_len, bos=BOS, eos=EOS):
    """Most likely token at every step, for each sentence of a batch."""
    outputs = [[] for _ in range(src.shape[0])]
    done = [False] * src.shape[0]
    with torch.no_grad():
        state = model.encode(src, src_valid_len)
        token = torch.full((src.shape[0], 1), bos)
        for _ in range(max_len):
            if all(done):
                break
            logits, state = model.decode(token, state)
            token = logits.argmax(dim=-1)  # (B, 1)
            for b, t in enumerate(token[:, 0].tolist()):
                if not done[b]:
                    outputs[b].append(t)
                    done[b] = t == eos
    return outputs
'''},
    "heap_beam_search": {"beam_search": '''\
def beam_search(model, src, src_valid_len, beam_size, max_len, length_penalty=0.0, bos=BOS,
                eos=EOS):
    """The best output of beam search for one source sentence, and its score."""
    import heapq

    if src.dim() != 2 or src.shape[0] != 1 or beam_size < 1:
        raise ValueError(f"need src (1, T_src) and beam_size >= 1, got {tuple(src.shape)}, "
                         f"{beam_size}")
    with torch.no_grad():
        live = [(0.0, [bos], model.encode(src, src_valid_len))]
        finished = []
        for _ in range(max_len):
            candidates = []
            for log_prob, tokens, state in live:
                logits, next_state = model.decode(torch.tensor([tokens[-1:]]), state)
                log_p = torch.log_softmax(logits.reshape(-1), dim=0)
                candidates += [(log_prob + float(lp), tokens + [v], next_state)
                               for v, lp in enumerate(log_p)]
            best = heapq.nlargest(beam_size, candidates, key=lambda c: c[0])
            finished += [(lp, tokens[1:]) for lp, tokens, _ in best if tokens[-1] == eos]
            live = heapq.nlargest(beam_size, (c for c in candidates if c[1][-1] != eos),
                                  key=lambda c: c[0])
            if not live:
                break
        finished += [(lp, tokens[1:]) for lp, tokens, _ in live]
    return max(((tokens, lp / len(tokens) ** length_penalty) for lp, tokens in finished),
               key=lambda pair: pair[1])
'''},
}

# mutant -> the targeted test that must catch it (others may fail too).
CAUGHT_BY = {
    "ngrams_miss_the_last": "test_ngram_counts",
    "no_clipping": "test_clipped_matches",
    "clipped_by_summed_references": "test_clipped_matches",
    "brevity_penalty_inverted": "test_brevity_penalty",
    "brevity_penalty_when_longer": "test_brevity_penalty",
    "shortest_reference_length": "test_corpus_bleu_sacrebleu",
    "closest_reference_tie_to_longer": "test_corpus_bleu_sacrebleu",
    "arithmetic_mean_of_precisions": "test_corpus_bleu_small",
    "orders_off_by_one": "test_corpus_bleu_small",
    "add_one_smoothing": "test_corpus_bleu_small",
    "d2l_bleu_uniform_weights": "test_d2l_bleu",
    "greedy_does_not_stop_at_eos": "test_greedy",
    "greedy_drops_eos": "test_greedy",
    "beam_without_length_normalisation": "test_beam_reference",
    "beam_every_hypothesis_on_one_state": "test_beam_reference",
    "beam_live_from_top_k_with_finished": "test_beam_reference",
    "beam_finishes_outside_top_k": "test_beam_reference",
    "beam_length_without_eos": "test_beam_reference",
}

TestHw2Mutants = mutant_suite("hw2_bleu_decoding", MUTANTS, REWRITES, CAUGHT_BY)
