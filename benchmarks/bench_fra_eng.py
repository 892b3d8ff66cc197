"""Translation quality on real data at an equal CPU budget: the course's models against d2l's.

PROTOCOL (fixed, so that figures compare; ``course_lib.data.fra_eng.benchmark_splits``):
shuffle all pairs of ``fra.txt`` with ``random.Random(0)``; the test set is the first 1,000 pairs
whose English, tokenised the d2l way, has at most 8 tokens, with no English sentence twice;
every other pair with a test English sentence is removed; the rest is the training pool.
Each model trains on the pool (how many pairs is the recipe's choice) with 2 torch threads and
a wall-clock budget (8 minutes unless ``--budget``) that starts before the vocabulary is built
and covers everything up to the end of training. Decoding the test set comes after and is timed
on its own.

SCORES: sacreBLEU corpus BLEU against the single reference of each test pair,
  (a) on d2l-preprocessed text (lowercase, a space before ``, . ! ?``), ``tokenize="none"``;
  (b) detokenised hypotheses (no space before ``.`` and ``,``) against the raw references, the
      default 13a tokenizer, ``lowercase=True`` (every model here writes lowercase text).
Both signatures are printed.

MODELS (``RECIPES``): d2l's GRU seq2seq and Transformer as the book builds and trains them
(``benchmarks/d2l_book.py``: d2l's encoders, the book's decoders, the book's masked loss,
hyperparameters, fixed-length batches and ``predict_step`` greedy decoding), on the first
20,000 pairs of the pool with ``num_steps`` 12; and the course's GRU, Bahdanau and Transformer
models trained the way the course teaches (bucketed batches, label smoothing, warmup, beam
search), plus ablations of the Transformer recipe, each of which changes one thing.

    python benchmarks/bench_fra_eng.py                  # the default set (about 75 minutes)
    python benchmarks/bench_fra_eng.py --recipes course-transformer --seeds 0,1,2
    python benchmarks/bench_fra_eng.py --quick          # CI smoke run: seconds per model
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import itertools
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_FRA, machine, print_table, write_csv  # noqa: E402
from d2l_book import book_train_step, d2l_seq2seq_gru, d2l_transformer  # noqa: E402

from course_lib.data.fra_eng import benchmark_splits, load_fra_eng_pairs  # noqa: E402
from course_lib.data.splits import PairSplits  # noqa: E402
from course_lib.data.text import tokenize  # noqa: E402
from course_lib.data.translation import TranslationData  # noqa: E402
from course_lib.decoding import beam_search, greedy_decode  # noqa: E402
from course_lib.devices import grad_scaler  # noqa: E402
from course_lib.fast.dropout import use_cheap_dropout  # noqa: E402
from course_lib.models.rnn import Seq2SeqBahdanau, Seq2SeqGRU  # noqa: E402
from course_lib.models.transformer import Transformer, TransformerConfig  # noqa: E402
from course_lib.training import NoamSchedule, set_seed, train_epoch  # noqa: E402

BUDGET_S = 480.0
THREADS = 2


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one model is built, trained and decoded."""

    name: str
    side: str                        # "d2l" (the book's code and recipe) or "course"
    arch: str                        # "gru", "bahdanau" or "transformer"
    what: str                        # one line for the tables
    train_pairs: int | None = None   # the first N pairs of the pool; None: all of it
    num_steps: int | tuple[int, int] = 12
    batch_size: int = 128
    lr: float = 1e-3                 # Adam's rate; with warmup, the peak rate
    warmup_steps: int | None = None  # Noam: linear warmup, then 1/sqrt(step) decay
    label_smoothing: float = 0.0
    bucket: bool = False             # bucketed, trimmed batches (the course) or fixed shapes
    min_freq: int = 2
    sizes: dict = dataclasses.field(default_factory=dict)
    beam_size: int = 1               # 1: greedy
    length_penalty: float = 0.0
    max_len: int = 20                # decoding steps (d2l: num_steps, as predict_step)
    device: str = "cpu"              # "cuda": the GPU track (``--device cuda``)
    precision: str = "fp32"          # "bf16" or "fp16": mixed precision (course_lib.devices)
    average_last: int = 0            # average the weights of the last N snapshots (0: no)
    average_every: int = 1           # a snapshot at the end of every this many epochs
    budget_s: float | None = None    # this recipe's own budget (else --budget)
    match_steps_of: str | None = None  # stop after as many steps as this recipe's run took

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)


_BOOK_GRU = dict(embed_size=256, num_hiddens=256, num_layers=2, dropout=0.2)
_BOOK_TRANSFORMER = dict(num_hiddens=256, ffn_num_hiddens=64, num_heads=4, num_blks=2,
                         dropout=0.2)
_COURSE_TRANSFORMER = dict(d_model=256, num_heads=4, num_layers=2, d_ff=512, dropout=0.1)

_COURSE = Recipe("course-transformer", "course", "transformer",
                 "Transformer 256 wide, FFN 512, 40,000 pairs; bucketed; label smoothing 0.1; "
                 "warmup; beam 4",
                 train_pairs=40_000, num_steps=(12, 18), batch_size=128, lr=1.5e-3,
                 warmup_steps=300, label_smoothing=0.1, bucket=True, sizes=_COURSE_TRANSFORMER,
                 beam_size=4, length_penalty=1.0)

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("d2l-gru", "d2l", "gru", "the book's GRU seq2seq, 20,000 pairs, num_steps 12",
           train_pairs=20_000, lr=0.005, sizes=_BOOK_GRU, max_len=12),
    Recipe("d2l-transformer", "d2l", "transformer",
           "the book's Transformer, 20,000 pairs, num_steps 12", train_pairs=20_000,
           lr=0.0015, sizes=_BOOK_TRANSFORMER, max_len=12),
    _COURSE,
    _COURSE.replace(name="course-gru", arch="gru",
                    what="GRU seq2seq 256/512, 2 layers, 40,000 pairs; bucketed; label "
                         "smoothing; beam 4",
                    lr=2e-3, warmup_steps=None,
                    sizes=dict(embed_size=256, num_hiddens=512, num_layers=2, dropout=0.2)),
    _COURSE.replace(name="course-bahdanau", arch="bahdanau",
                    what="GRU + Bahdanau attention 256/512, bidirectional encoder, 40,000 "
                         "pairs; bucketed; label smoothing; beam 4",
                    lr=2e-3, warmup_steps=None,
                    sizes=dict(embed_size=256, num_hiddens=512, num_layers=1, dropout=0.2,
                               bidirectional_encoder=True)),
    _COURSE.replace(name="ablate-no-smoothing", what="course-transformer, label smoothing 0",
                    label_smoothing=0.0),
    _COURSE.replace(name="ablate-no-warmup", what="course-transformer, constant lr 1.5e-3",
                    warmup_steps=None),
    _COURSE.replace(name="ablate-fixed-batches",
                    what="course-transformer, batches padded to num_steps (no bucketing)",
                    bucket=False),
]}
# The GPU track: a wider and deeper Transformer on the whole pool, larger batches, bf16.
# Batches of 2,048 sentences keep the GPU busy with matrix products rather than waiting on
# Python's kernel launches; the pool (74k pairs) then makes 36 steps an epoch, so dropout 0.3
# and an average of weights 5 epochs apart hold off overfitting over many epochs.
_GPU_TRANSFORMER = dict(d_model=512, num_heads=8, num_layers=6, d_ff=2048, dropout=0.3)
_GPU = _COURSE.replace(name="gpu-transformer", device="cuda", precision="bf16",
                       what="Transformer 512 wide, 6+6 layers, FFN 2048 (57M), the whole pool; "
                            "batches of 2,048, bucketed; bf16; warmup; label smoothing 0.1; "
                            "dropout 0.3; average of 5 snapshots 5 epochs apart; beam 4",
                       train_pairs=None, num_steps=(16, 20), batch_size=2048, lr=2e-3,
                       warmup_steps=400, sizes=_GPU_TRANSFORMER, average_last=5,
                       average_every=5, budget_s=300.0)
RECIPES |= {r.name: r for r in [
    _GPU,
    _GPU.replace(name="gpu-fp32", precision="fp32", average_last=0, budget_s=45.0,
                 what="gpu-transformer in fp32, 45 s, no averaging"),
    _GPU.replace(name="gpu-bf16-same-steps", average_last=0, match_steps_of="gpu-fp32",
                 what="gpu-transformer in bf16, as many steps as gpu-fp32, no averaging"),
]}
DEFAULT_RUNS = ["d2l-gru:0", "d2l-transformer:0", "course-transformer:0,1,2", "course-gru:0",
                "course-bahdanau:0", "ablate-no-smoothing:0", "ablate-no-warmup:0",
                "ablate-fixed-batches:0"]
DEFAULT_GPU_RUNS = ["gpu-fp32:0", "gpu-bf16-same-steps:0", "gpu-transformer:0"]


def build_model(recipe: Recipe, data: TranslationData) -> torch.nn.Module:
    src_v, tgt_v = len(data.src_vocab), len(data.tgt_vocab)
    if recipe.side == "d2l":
        make = d2l_seq2seq_gru if recipe.arch == "gru" else d2l_transformer
        model = make(src_v, tgt_v, **recipe.sizes)
        if recipe.arch == "transformer":
            model.decoder.fix_positions = True  # decode with the right positions (see d2l_book)
        return model
    # The course's models train with the fast layer's dropout mask (course_lib.fast: the same
    # distribution, cheaper on CPU) and decode with fast=True (the same tokens, faster).
    if recipe.arch == "transformer":
        model = Transformer(TransformerConfig(src_v, tgt_v, use_sdpa=True, **recipe.sizes))
    else:
        model_class = Seq2SeqGRU if recipe.arch == "gru" else Seq2SeqBahdanau
        model = model_class(src_v, tgt_v, **recipe.sizes)
    return use_cheap_dropout(model).to(recipe.device)


def train_to_budget(recipe: Recipe, model, data: TranslationData, deadline: float,
                    max_steps: int | None = None) -> tuple[dict, dict | None]:
    """Epochs over the training split until the deadline (or ``max_steps``); the book's loop
    for d2l's models. With ``recipe.average_last`` the model ends with the mean of the weights
    it had at the ends of its last epochs (the last one cut by the deadline included); the
    weights it had at the end are returned beside the figures (None without averaging)."""
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = None
    if recipe.warmup_steps:
        d_model = recipe.sizes["d_model"]
        factor = recipe.lr * math.sqrt(d_model * recipe.warmup_steps)  # peak = recipe.lr
        optimizer = torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, NoamSchedule(d_model, recipe.warmup_steps, factor))
    else:
        optimizer = torch.optim.Adam(params, lr=recipe.lr)
    loader = data.loader("train", bucket=recipe.bucket)
    pad = data.tgt_vocab.pad
    epochs, steps, tokens, last_loss, passes = 0.0, 0, 0, math.nan, 0
    scaler = grad_scaler(recipe.device, recipe.precision)
    snapshots: collections.deque = collections.deque(maxlen=recipe.average_last or 1)
    while time.perf_counter() < deadline and (max_steps is None or steps < max_steps):
        num_batches = len(loader)
        if recipe.side == "d2l":  # the book's Trainer: Adam, clipping at 1, its masked loss
            model.train()
            done, total = 0, 0.0
            for batch in loader:
                if time.perf_counter() >= deadline:
                    break
                loss = book_train_step(model, batch, optimizer, pad)
                done += 1
                tokens += batch.num_target_tokens
                total += loss.item()
            last_loss = total / max(done, 1)
        else:
            batches = loader if max_steps is None else itertools.islice(loader, max_steps - steps)
            result = train_epoch(model, batches, optimizer, scheduler=scheduler, clip_grad=1.0,
                                 label_smoothing=recipe.label_smoothing, stop_at=deadline,
                                 precision=recipe.precision, scaler=scaler)
            done, last_loss = result["batches"], result["loss"]
            tokens += result["tokens"]
        steps += done
        epochs += done / num_batches
        passes += 1
        if recipe.average_last and (passes % recipe.average_every == 0
                                    or time.perf_counter() >= deadline):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    if recipe.device == "cuda":
        torch.cuda.synchronize()  # the queued steps belong to the training time
    averaged = len(snapshots) if recipe.average_last else 0
    last_weights = None
    if averaged > 1:
        last_weights = snapshots[-1]  # returned to score the last weights as well
        model.load_state_dict({k: sum(snapshot[k].float() for snapshot in snapshots)
                               .div(averaged).to(v.dtype)
                               for k, v in snapshots[-1].items()})
    return {"epochs": epochs, "steps": steps, "train_tokens": tokens, "last_loss": last_loss,
            "averaged": averaged}, last_weights


def translate_test(recipe: Recipe, model, data: TranslationData, beam_size: int,
                   limit: int) -> list[str]:
    """Hypotheses (d2l-tokenised, joined by spaces) for the first ``limit`` test pairs."""
    test = data.tensors["test"]
    index = torch.arange(min(limit, test.num_sequences))
    order = index[torch.argsort(test.src_valid_len[index], stable=True)]  # similar lengths
    hypotheses: dict[int, str] = {}
    vocab = data.tgt_vocab
    model.eval()
    with torch.no_grad():
        for chunk in order.split(250 if beam_size == 1 else 100):
            batch = test.select(chunk)
            if recipe.side == "d2l":
                ids, _ = model.predict_step(
                    (batch.src, batch.dec_input, batch.src_valid_len, batch.tgt), "cpu",
                    recipe.max_len)
                sentences = data.decode_targets(ids)
            elif beam_size == 1:
                sentences = greedy_decode(model, batch.src, batch.src_valid_len,
                                          max_len=recipe.max_len, bos=vocab.bos,
                                          eos=vocab.eos, fast=True).to_sentences(vocab)
            else:
                sentences = beam_search(model, batch.src, batch.src_valid_len,
                                        beam_size=beam_size, max_len=recipe.max_len,
                                        length_penalty=recipe.length_penalty, bos=vocab.bos,
                                        eos=vocab.eos, fast=True).to_sentences(vocab)
            hypotheses.update(zip(chunk.tolist(), sentences, strict=True))
    return [hypotheses[i] for i in range(len(index))]


_SPACE_BEFORE = re.compile(r" ([.,])")


def detokenise(sentence: str) -> str:
    """Undo d2l's space before ``.`` and ``,`` (French keeps its space before ``!`` and ``?``)."""
    return _SPACE_BEFORE.sub(r"\1", sentence)


def score(hypotheses: list[str], test_pairs: list[tuple[str, str]]) -> dict:
    """sacreBLEU (a) on d2l-preprocessed text and (b) detokenised with 13a, with signatures."""
    from sacrebleu.metrics import BLEU

    references_a = [" ".join(tokenize(french)) for _, french in test_pairs]
    references_b = [french for _, french in test_pairs]
    metric_a = BLEU(tokenize="none", force=True)  # tokenised on purpose: no warning
    metric_b = BLEU(lowercase=True)  # default tokenizer: 13a
    a = metric_a.corpus_score(hypotheses, [references_a])
    b = metric_b.corpus_score([detokenise(h) for h in hypotheses], [references_b])
    return {"bleu_a": a.score, "bleu_b": b.score,
            "signature_a": str(metric_a.get_signature()),
            "signature_b": str(metric_b.get_signature())}


def run_one(recipe: Recipe, seed: int, splits: PairSplits, budget: float,
            test_limit: int, out_dir: Path | None, max_steps: int | None = None) -> dict:
    """Train ``recipe`` for ``budget`` seconds (at most ``max_steps`` steps) and score it;
    returns a result row."""
    gc.collect()
    if recipe.device == "cuda":
        torch.cuda.empty_cache()
    start = time.perf_counter()
    deadline = start + budget
    set_seed(seed)
    pool = splits.train if recipe.train_pairs is None else splits.train[:recipe.train_pairs]
    data = TranslationData(PairSplits(pool, [], splits.test, name=splits.name),
                           num_steps=recipe.num_steps, batch_size=recipe.batch_size,
                           min_freq=recipe.min_freq, bucket=recipe.bucket, seed=seed)
    prepare_s = time.perf_counter() - start
    model = build_model(recipe, data)
    trained, last_weights = train_to_budget(recipe, model, data, deadline, max_steps)
    train_s = time.perf_counter() - start
    row = {"recipe": recipe.name, "side": recipe.side, "seed": seed, "pairs": len(pool),
           "device": recipe.device, "precision": recipe.precision,
           "src_vocab": len(data.src_vocab), "tgt_vocab": len(data.tgt_vocab),
           "parameters": sum(p.numel() for p in model.parameters()),
           "prepare_s": prepare_s, "train_s": train_s, **trained,
           "tokens_per_s": trained["train_tokens"] / max(train_s - prepare_s, 1e-9)}
    test_pairs = splits.test[:test_limit]
    decodings = [("greedy", 1)] + ([("beam", recipe.beam_size)] if recipe.beam_size > 1 else [])
    for label, beam_size in decodings:
        begin = time.perf_counter()
        hypotheses = translate_test(recipe, model, data, beam_size, test_limit)
        seconds = time.perf_counter() - begin
        scores = score(hypotheses, test_pairs)
        row |= {f"{label}_bleu_a": scores["bleu_a"], f"{label}_bleu_b": scores["bleu_b"],
                f"{label}_decode_s": seconds, "signature_a": scores["signature_a"],
                "signature_b": scores["signature_b"]}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{recipe.name}-seed{seed}-{label}.txt").write_text(
                "\n".join(hypotheses) + "\n", encoding="utf-8")
        if label == "greedy" and seed == 0:
            row["samples"] = list(zip(test_pairs[:4], hypotheses[:4], strict=True))
    if last_weights is not None:  # what averaging gained: the last weights, greedy
        model.load_state_dict(last_weights)
        scores = score(translate_test(recipe, model, data, 1, test_limit), test_pairs)
        row["last_weights_greedy_bleu_a"] = scores["bleu_a"]
    final = "beam" if recipe.beam_size > 1 else "greedy"
    row["bleu_a"], row["bleu_b"] = row[f"{final}_bleu_a"], row[f"{final}_bleu_b"]
    print(f"  {recipe.name} seed {seed}: {row['epochs']:.2f} epochs, {row['steps']} steps, "
          f"{row['tokens_per_s']:,.0f} target tokens/s, train {train_s:.0f} s; BLEU (a) "
          f"greedy {row['greedy_bleu_a']:.2f}"
          + (f", beam {row['beam_bleu_a']:.2f}" if final == "beam" else "")
          + f"; (b) {row['bleu_b']:.2f}"
          + (f"; the last weights alone: greedy {row['last_weights_greedy_bleu_a']:.2f}"
             if "last_weights_greedy_bleu_a" in row else ""), flush=True)
    return row


def parse_runs(specs: list[str]) -> list[tuple[Recipe, int]]:
    """``name:0,1,2`` items (seed 0 when no seeds are given) as (recipe, seed) pairs."""
    runs = []
    for spec in specs:
        name, _, seeds = spec.partition(":")
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
        runs += [(RECIPES[name], int(s)) for s in (seeds or "0").split(",")]
    return runs


def summarise(rows: list[dict]) -> list[dict]:
    """One row per recipe: mean and standard deviation of the BLEU scores over seeds."""
    summary = []
    for name in dict.fromkeys(r["recipe"] for r in rows):
        runs = [r for r in rows if r["recipe"] == name]

        def mean_sd(key: str, runs=runs) -> tuple[float, float | None]:
            values = [r[key] for r in runs if r.get(key) is not None]
            if not values:
                return math.nan, None
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1
                                             else None)

        a, a_sd = mean_sd("bleu_a")
        b, _ = mean_sd("bleu_b")
        greedy, _ = mean_sd("greedy_bleu_a")
        summary.append({"recipe": name, "seeds": len(runs), "bleu_a": a, "sd_a": a_sd,
                        "greedy_a": greedy, "bleu_b": b,
                        "epochs": statistics.mean(r["epochs"] for r in runs),
                        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in runs),
                        "what": RECIPES[name].what})
    return summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(summary) + 1.6))
    names = [s["recipe"] for s in summary][::-1]
    values = [s["bleu_a"] for s in summary][::-1]
    errors = [s["sd_a"] or 0.0 for s in summary][::-1]
    colors = ["tab:gray" if n.startswith("d2l") else "tab:blue" for n in names]
    ax.barh(names, values, xerr=errors, color=colors)
    for y, (v, e) in enumerate(zip(values, errors, strict=True)):
        ax.text(v + e + 0.3, y, f"{v:.1f}", va="center")
    d2l_best = max((s["bleu_a"] for s in summary if s["recipe"].startswith("d2l")), default=0)
    if d2l_best:
        ax.axvline(1.3 * d2l_best, color="tab:red", linestyle="--", linewidth=1,
                   label=f"1.3 × the better d2l model ({1.3 * d2l_best:.1f})")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.set_xlabel("test BLEU (a): sacreBLEU, d2l tokens, tokenize='none'")
    ax.set_title("fra-eng, 1,000 test sentences, equal CPU budget per model")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke run: 3 s budgets, 3,000 pairs, 100 test sentences")
    parser.add_argument("--runs", nargs="*", default=None,
                        help=f"recipe:seeds items (default: {' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per model (a recipe may set its own)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the GPU track (its own recipes, default runs "
                             f"{' '.join(DEFAULT_GPU_RUNS)})")
    parser.add_argument("--csv", type=Path, default=RESULTS / "fra_eng.csv")
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart here")
    parser.add_argument("--protocol-seed", type=int, default=0,
                        help="shuffle seed of the protocol: 0 for reported figures; tune "
                             "recipes on another (e.g. 1), never on the reported test set")
    parser.add_argument("--jsonl", type=Path, default=None,
                        help="append each finished run here as a JSON line (long runs can be "
                             "split across processes and summarised with --summarise)")
    parser.add_argument("--summarise", type=Path, default=None, metavar="JSONL",
                        help="train nothing: print the tables of the runs saved in JSONL")
    parser.add_argument("--hypotheses", type=Path, default=None,
                        help="write each run's test translations into this directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    if args.summarise is not None:
        rows = [json.loads(line) for line in args.summarise.read_text().splitlines() if line]
        report(rows, rows[0]["budget_s"], rows[0]["test_sentences"], args)
        return 0
    if not SHARED_FRA.is_file():
        print(f"The fra-eng corpus is not at {SHARED_FRA}: this benchmark needs it (set "
              "COURSE_SHARED_DIR to the directory holding data/fra-eng/fra.txt). Skipped.")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no CUDA GPU")
    runs = parse_runs(args.runs or (DEFAULT_GPU_RUNS if args.device == "cuda" else DEFAULT_RUNS))
    if args.device == "cpu" and any(recipe.device == "cuda" for recipe, _ in runs):
        runs = [(recipe.replace(device="cpu"), seed) for recipe, seed in runs]  # a smoke test
        print("(GPU recipes on the CPU: for smoke tests only)")
    budget = args.budget or (3.0 if args.quick else BUDGET_S)
    splits = benchmark_splits(load_fra_eng_pairs(SHARED_FRA, download=False),
                              seed=args.protocol_seed)
    test_limit = 1000
    if args.quick:
        splits = PairSplits(splits.train[:3_000], [], splits.test, name=splits.name)
        test_limit = 100
    print(f"{machine()}\n{splits}; budget {budget:.0f} s per model; {len(runs)} runs")
    rows = []
    for recipe, seed in runs:
        own_budget = budget if args.quick or args.budget else (recipe.budget_s or budget)
        steps = None
        if recipe.match_steps_of is not None:
            matched = [r["steps"] for r in rows if r["recipe"] == recipe.match_steps_of]
            if not matched:
                raise SystemExit(f"{recipe.name} runs as many steps as {recipe.match_steps_of}:"
                                 " run that recipe first, in the same command")
            steps, own_budget = matched[-1], 4 * own_budget  # the steps decide, not the clock
        row = run_one(recipe, seed, splits, own_budget, test_limit, args.hypotheses, steps)
        row |= {"budget_s": own_budget, "test_sentences": test_limit,
                "protocol_seed": args.protocol_seed}
        rows.append(row)
        if args.jsonl is not None:
            with args.jsonl.open("a", encoding="utf-8") as file:
                file.write(json.dumps(row) + "\n")
    report(rows, budget, test_limit, args)
    return 0


def report(rows: list[dict], budget: float, test_limit: int, args: argparse.Namespace) -> None:
    """Print the tables and samples; write the CSV (and the plot)."""
    print(f"\nsacreBLEU signatures: (a) {rows[0]['signature_a']}\n"
          f"                      (b) {rows[0]['signature_b']}")
    print_table("Every run", rows, ["recipe", "seed", "device", "precision", "pairs", "epochs",
                                    "steps", "tokens_per_s", "train_s", "greedy_bleu_a",
                                    "bleu_a", "bleu_b", "greedy_decode_s"])
    by_name = {r["recipe"]: r for r in rows}
    if {"gpu-fp32", "gpu-bf16-same-steps"} <= by_name.keys():
        fp32, bf16 = by_name["gpu-fp32"], by_name["gpu-bf16-same-steps"]
        print(f"\nbf16 against fp32, the same model, batches and {fp32['steps']} steps: "
              f"{bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x the target tokens/s; "
              f"BLEU (a) {bf16['bleu_a']:.2f} against {fp32['bleu_a']:.2f}")
    summary = summarise(rows)
    print_table(f"Test BLEU on {test_limit} sentences, {budget:.0f} s per model (means over "
                "seeds; sd where more than one)", summary,
                ["recipe", "seeds", "bleu_a", "sd_a", "greedy_a", "bleu_b", "epochs", "what"])
    best_d2l = max((s["bleu_a"] for s in summary if s["recipe"].startswith("d2l")),
                   default=None)
    if best_d2l:
        print("\nratio to the better d2l model, BLEU (a):")
        for s in summary:
            print(f"  {s['recipe']}: {s['bleu_a'] / best_d2l:.2f}x")
    for row in rows:
        for (english, french), hypothesis in row.pop("samples", []):
            print(f"  [{row['recipe']}] {english!r} -> {hypothesis!r} (reference {french!r})")
    write_csv(args.csv, rows)
    if args.plot is not None:
        plot(summary, args.plot)


if __name__ == "__main__":
    sys.exit(main())
