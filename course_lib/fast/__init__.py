"""The fast layer: the teaching core's models and algorithms, run faster, proven equal by tests.

The rest of ``course_lib`` is written to be read; this package holds what makes it fast on a
CPU, kept apart so the lessons' code stays plain. Each piece is opt-in and has a test that it
gives the core's results (``tests/test_fast_*.py``):

- ``decoding.FastRunner``: what ``greedy_decode``, ``beam_search`` and ``sample_decode`` use
  with ``fast=True``. Reused output buffers and an output layer padded to whole 64-byte rows;
  for the Transformer (``transformer``), beam hypotheses that share their sentence's one row of
  encoder memory, stacked query/key/value projections, and the attention kernel that pays.
- ``dropout.CheapDropout`` and ``use_cheap_dropout(model)``: ``nn.Dropout`` with a mask about
  twice as cheap to draw on CPU, for training.
- ``bleu.corpus_bleu``, ``corpus_bleu_stats``, ``sentence_bleu``: ``course_lib.bleu``'s, with sets.
"""
