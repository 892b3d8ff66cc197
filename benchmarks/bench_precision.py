"""Training throughput in fp32, bf16 and fp16, side by side: the same model, batches and steps.

For each batch size, every precision trains a fresh copy of the same model (the same initial
weights) with ``course_lib.training.train_epoch(precision=...)`` on the same batches: warm-up
steps first (CUDA's first kernels, each batch shape's first step, the allocator), then the
timed steps. The figure is target tokens per second over the timed steps only; a step ends
when the GPU has finished it (``train_epoch`` reads its losses back at the end).

On a GPU the model is the GPU track's Transformer (512 wide, 6+6 layers, 57M parameters) on
the fra-eng pool; on a CPU (``--quick``, CI) a small one on the numbers corpus.

    python benchmarks/bench_precision.py --device cuda --batch-sizes 512 2048 8192
    python benchmarks/bench_precision.py --quick          # CPU smoke run for CI
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_FRA, machine, print_table, write_csv  # noqa: E402

from course_lib.data.batching import BatchLoader  # noqa: E402
from course_lib.data.fra_eng import benchmark_splits, load_fra_eng_pairs  # noqa: E402
from course_lib.data.generated import numbers_dataset  # noqa: E402
from course_lib.data.splits import PairSplits  # noqa: E402
from course_lib.data.translation import TranslationData  # noqa: E402
from course_lib.devices import pick_device  # noqa: E402
from course_lib.models.transformer import Transformer, TransformerConfig  # noqa: E402
from course_lib.training import set_seed, train_epoch  # noqa: E402

GPU_SIZES = dict(d_model=512, num_heads=8, num_layers=6, d_ff=2048, dropout=0.1)
CPU_SIZES = dict(d_model=64, num_heads=4, num_layers=2, d_ff=128, dropout=0.1)


def load_data(quick: bool) -> TranslationData:
    if SHARED_FRA.is_file() and not quick:
        splits = benchmark_splits(load_fra_eng_pairs(SHARED_FRA, download=False), seed=0)
        splits = PairSplits(splits.train, [], splits.test, name=splits.name)
    else:
        splits = numbers_dataset(0, 9_999, num_examples=2_000 if quick else None)
    return TranslationData(splits, num_steps=(16, 20), batch_size=128, min_freq=2, seed=0)


def throughput(model: Transformer, batches: list, precision: str, warmup: int) -> float:
    """Target tokens/s of ``precision`` over ``batches[warmup:]``, after the warm-up steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    train_epoch(model, batches[:warmup], optimizer, precision=precision)
    result = train_epoch(model, batches[warmup:], optimizer, precision=precision)
    return result["tokens"] / result["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU run, for CI")
    parser.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first: bucketed batches come in ~20 shapes, and "
                             "a GPU's first step of each shape pays for setting it up")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--csv", type=Path, default=RESULTS / "precision.csv")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.set_num_threads(2)
    gpu = device.type == "cuda"
    steps = args.steps or (3 if args.quick else 60)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 40)
    sizes = args.batch_sizes or ([512, 2048] if gpu else [64])
    data = load_data(args.quick or not gpu)
    print(f"{machine()} · {device}" + (f" ({torch.cuda.get_device_name()})" if gpu else ""))
    print(data)
    set_seed(0)
    config = TransformerConfig(len(data.src_vocab), len(data.tgt_vocab),
                               **(GPU_SIZES if gpu else CPU_SIZES), use_sdpa=True)
    initial = Transformer(config)
    rows = []
    for batch_size in sizes:
        loader = BatchLoader(data.tensors["train"], batch_size, shuffle=True, bucket=True, seed=0)
        batches: list = []
        while len(batches) < warmup + steps:  # as many epochs as it takes
            batches += itertools.islice(loader, warmup + steps - len(batches))
        rates = {}
        for precision in args.precisions:
            model = copy.deepcopy(initial).to(device)
            rates[precision] = throughput(model, batches, precision, warmup)
            del model
            if gpu:
                torch.cuda.empty_cache()
        for precision, rate in rates.items():
            rows.append({"device": str(device), "batch_size": batch_size,
                         "precision": precision, "tokens_per_s": rate,
                         "ratio_vs_fp32": rate / rates.get("fp32", rate),
                         "timed_steps": len(batches) - warmup})
    print_table(f"Training throughput, target tokens/s ({steps} timed steps after {warmup} "
                "warm-up steps, the same batches for every precision)", rows,
                ["batch_size", "precision", "tokens_per_s", "ratio_vs_fp32"])
    write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
