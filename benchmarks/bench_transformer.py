"""The course's Transformer against d2l's, side by side: training tokens/s and decoding speed.

d2l's side is the book's model: d2l's ``TransformerEncoder`` with the book's decoder
(``benchmarks/d2l_book.py``), the book's hyperparameters (256 wide, 2 blocks, 4 heads, FFN 64,
dropout 0.2, Adam lr 0.0015, gradient clipping at 1, batches of 128, ``num_steps`` 12) and the
book's masked loss. The course's side is ``course_lib.models.transformer.Transformer`` of the
same size (``use_sdpa=True``), trained with the same optimiser, clipping and loss value
(``course_lib.training.sequence_loss``, which computes logits only at real target positions).
It runs twice: as the teaching core is written ("core"), and with the fast layer
(``course_lib.fast``: ``use_cheap_dropout`` for training, ``fast=True`` for decoding), so the
tables show what readability costs.

Training: non-padding target tokens per second, for
  1. the course model on d2l's fixed-shape batches (every batch padded to num_steps);
  2. the course model on the same batches (same sentences, same order) with the columns that are
     padding in every sentence of the batch cut off (``BatchLoader(trim=True)``), core and fast;
  3. the course model on the same sentences bucketed by length and trimmed (what the course
     teaches, ``TranslationData(..., bucket=True)``): other batches, the same data.
Decoding (eval mode, 1,000 test sentences, max 12 steps, source padding trimmed to each batch's
longest sentence): batches of 128 in corpus order; batches of 128 sorted by source length (a
batch's sentences then end together, as fairseq and other toolkits batch at inference time);
and all 1,000 sentences in one batch:
  d2l's ``predict_step`` (runs all 12 steps, re-projects the cached block inputs each step),
  our greedy decoding with and without the key/value cache, and our beam search (beam 4), each
  as the core and with ``fast=True``. Every candidate decodes the same batches.
Decoding runs on trained weights (each model first trains for the same number of batches),
so sentences end with ``<eos>`` as real ones do.

Data: the Tatoeba corpus in ../shared if present (first 20,000 pairs), else the numbers corpus.
All runs use 2 torch threads and are interleaved; tables give medians over ``--repeats``.

    python benchmarks/bench_transformer.py            # full run (several minutes)
    python benchmarks/bench_transformer.py --quick    # smoke run for CI
    python benchmarks/bench_transformer.py --decode-only --checkpoint /tmp/bt.pt  # decoding
        # only; trains and saves both models the first time, loads them after
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_FRA, machine, median, print_table, side_by_side, write_csv  # noqa: E402
from d2l_book import book_train_step, d2l_transformer  # noqa: E402

from course_lib.data.batching import BatchLoader  # noqa: E402
from course_lib.data.fra_eng import fra_eng_dataset  # noqa: E402
from course_lib.data.generated import numbers_dataset  # noqa: E402
from course_lib.data.translation import TranslationData  # noqa: E402
from course_lib.decoding import beam_search, greedy_decode  # noqa: E402
from course_lib.fast.dropout import use_cheap_dropout  # noqa: E402
from course_lib.models.transformer import Transformer, TransformerConfig  # noqa: E402
from course_lib.training import sequence_loss  # noqa: E402

BOOK = dict(num_hiddens=256, ffn_num_hiddens=64, num_heads=4, num_blks=2, dropout=0.2)
LR, CLIP, BATCH, NUM_STEPS = 0.0015, 1.0, 128, 12


def load_data(quick: bool) -> TranslationData:
    if SHARED_FRA.is_file():
        splits = fra_eng_dataset(SHARED_FRA, max_pairs=2_000 if quick else 20_000,
                                 download=False)
    else:
        print(f"(no corpus at {SHARED_FRA}: using the generated numbers corpus)")
        splits = numbers_dataset(0, 9_999, num_examples=2_000 if quick else None)
    return TranslationData(splits, num_steps=NUM_STEPS, batch_size=BATCH, min_freq=2, seed=0)


def make_models(data: TranslationData):
    torch.manual_seed(0)
    src_v, tgt_v = len(data.src_vocab), len(data.tgt_vocab)
    d2l_model = d2l_transformer(src_v, tgt_v, **BOOK)
    config = TransformerConfig(src_v, tgt_v, d_model=BOOK["num_hiddens"],
                               num_heads=BOOK["num_heads"], num_layers=BOOK["num_blks"],
                               d_ff=BOOK["ffn_num_hiddens"], dropout=BOOK["dropout"],
                               use_sdpa=True)
    return d2l_model, Transformer(config)


def trainer(model, batches, is_d2l: bool, pad: int):
    """A callable training on ``batches`` once; returns the real target tokens it saw."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def run() -> float:
        model.train()
        tokens = 0
        for batch in batches:
            if is_d2l:
                book_train_step(model, batch, optimizer, pad, CLIP)
            else:  # course_lib.training's loss: logits only at real target positions
                optimizer.zero_grad(set_to_none=True)
                loss, _, _ = sequence_loss(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                optimizer.step()
            tokens += batch.num_target_tokens
        return tokens

    return run


def decoder_runs(d2l_model, ours, data: TranslationData, num_sentences: int,
                 sort_by_length: bool, batch_size: int):
    test = data.tensors["test"]
    index = torch.arange(min(num_sentences, test.num_sequences))
    if sort_by_length:  # similar lengths share a batch: less padding, sentences end together
        index = index[torch.argsort(test.src_valid_len[index], stable=True)]
    batches = [test.select(chunk) for chunk in index.split(batch_size)]  # padding trimmed
    bos, eos = data.tgt_vocab.bos, data.tgt_vocab.eos

    def d2l_predict() -> float:
        d2l_model.eval()
        with torch.no_grad():
            for b in batches:
                d2l_model.predict_step((b.src, b.dec_input, b.src_valid_len, b.tgt), "cpu",
                                       NUM_STEPS)
        return len(index)

    def ours_greedy(use_cache: bool, fast: bool):
        def run() -> float:
            ours.use_cache = use_cache
            for b in batches:
                greedy_decode(ours, b.src, b.src_valid_len, max_len=NUM_STEPS, bos=bos, eos=eos,
                              fast=fast)
            ours.use_cache = True
            return len(index)
        return run

    def ours_beam(fast: bool):
        def run() -> float:
            for b in batches:
                beam_search(ours, b.src, b.src_valid_len, beam_size=4, max_len=NUM_STEPS,
                            bos=bos, eos=eos, fast=fast)
            return len(index)
        return run

    return {"d2l predict_step": d2l_predict,
            "core greedy, KV cache": ours_greedy(True, False),
            "core greedy, no cache": ours_greedy(False, False),
            "core beam 4": ours_beam(False),
            "fast greedy": ours_greedy(True, True),
            "fast beam 4": ours_beam(True)}


def train_both(d2l_model, ours, data: TranslationData, quick: bool, repeats: int,
               decode_only: bool) -> list[dict]:
    """The training-throughput table (unless ``decode_only``), then warm-up training of both
    models so decoding sees realistic (ending) outputs; returns the table's rows."""
    pad = data.tgt_vocab.pad
    rows = []
    if not decode_only:
        num_batches = 2 if quick else 30
        fixed = BatchLoader(data.tensors["train"], BATCH, shuffle=True, seed=0)  # padded to 12
        fixed_batches = [b for _, b in zip(range(num_batches), fixed, strict=False)]
        trimmed_batches = [b.select(slice(None)) for b in fixed_batches]  # same rows, trimmed
        bucketed = BatchLoader(data.tensors["train"], BATCH, shuffle=True, bucket=True, seed=0)
        bucketed_batches = [b for _, b in zip(range(num_batches), bucketed, strict=False)]
        fast = use_cheap_dropout(copy.deepcopy(ours))  # the same weights, the cheap mask
        rates = side_by_side({
            "d2l (book)": trainer(d2l_model, fixed_batches, True, pad),
            "core, same padded batches": trainer(ours, fixed_batches, False, pad),
            "core, same batches trimmed": trainer(ours, trimmed_batches, False, pad),
            "fast, same batches trimmed": trainer(fast, trimmed_batches, False, pad),
            "core, bucketed + trimmed": trainer(ours, bucketed_batches, False, pad),
            "fast, bucketed + trimmed": trainer(fast, bucketed_batches, False, pad),
        }, repeats)
        base = median(rates["d2l (book)"])
        rows = [{"benchmark": "training", "what": name, "median_per_s": median(r),
                 "unit": "target tokens/s", "ratio_vs_d2l": median(r) / base,
                 "repeats": repeats} for name, r in rates.items()]
        print_table(f"Training throughput ({num_batches} batches of {BATCH}, medians of "
                    f"{repeats})", rows, ["what", "median_per_s", "unit", "ratio_vs_d2l"])

    # Train both a little further so decoding sees realistic (ending) outputs.
    warm = 5 if quick else 150
    for model, is_d2l in ((d2l_model, True), (ours, False)):
        batches = [b for _, b in zip(range(warm), BatchLoader(data.tensors["train"], BATCH,
                                                                shuffle=True, seed=1),
                                     strict=False)]
        start = time.perf_counter()
        trainer(model, batches, is_d2l, pad)()
        print(f"warm-up training {'d2l' if is_d2l else 'ours'}: {warm} batches, "
              f"{time.perf_counter() - start:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=RESULTS / "transformer.csv")
    parser.add_argument("--decode-only", action="store_true",
                        help="skip the training-throughput table (the models then train on the "
                             "warm-up batches only) and do not write the CSV")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="load both trained models from here if it exists, else save them")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    torch.set_num_threads(2)
    data = load_data(args.quick)
    print(f"{machine()}\n{data}")
    d2l_model, ours = make_models(data)

    rows = []
    if args.checkpoint is not None and args.checkpoint.is_file():
        saved = torch.load(args.checkpoint)
        d2l_model.load_state_dict(saved["d2l"])
        ours.load_state_dict(saved["ours"])
        print(f"loaded both trained models from {args.checkpoint}")
    else:
        rows = train_both(d2l_model, ours, data, args.quick, repeats, args.decode_only)
        if args.checkpoint is not None:
            torch.save({"d2l": d2l_model.state_dict(), "ours": ours.state_dict()},
                       args.checkpoint)
    ours.eval()
    num_sentences = 256 if args.quick else 1000
    decode_rows = []
    settings = [(False, BATCH), (True, BATCH), (True, num_sentences)]  # last: one batch of all
    for sort_by_length, batch_size in settings:
        order = "sorted by source length" if sort_by_length else "in corpus order"
        decode_rates = side_by_side(
            decoder_runs(d2l_model, ours, data, num_sentences, sort_by_length, batch_size),
            repeats)
        base = median(decode_rates["d2l predict_step"])
        greedy = {"core": median(decode_rates["core greedy, KV cache"]),
                  "fast": median(decode_rates["fast greedy"])}
        setting = f"decoding, batches of {batch_size}, {order}"
        table = [{"benchmark": setting, "what": name, "median_per_s": median(r),
                  "unit": "sentences/s", "ratio_vs_d2l": median(r) / base,
                  "time_vs_our_greedy": (greedy[name.split()[0]] / median(r)
                                         if name.split()[0] in greedy else None),
                  "repeats": repeats}
                 for name, r in decode_rates.items()]
        print_table(f"Decoding {num_sentences} sentences, batches of {batch_size}, {order} "
                    f"(max {NUM_STEPS} steps, the same batches for all, medians of {repeats})",
                    table, ["what", "median_per_s", "unit", "ratio_vs_d2l",
                            "time_vs_our_greedy"])
        decode_rows += table
    if rows:  # the CSV always holds a training table
        write_csv(args.csv, [dict(r, time_vs_our_greedy=r.get("time_vs_our_greedy"))
                             for r in rows + decode_rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
