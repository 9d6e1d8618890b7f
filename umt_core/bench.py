"""`python -m umt_core bench train|generate`: speed and memory, with an eager
baseline measured in the same run. Figures are printed, never asserted in tests."""

from __future__ import annotations

import argparse


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark training or generation speed")
    which = p.add_subparsers(dest="what", required=True)

    t = which.add_parser("train", help="seconds per training step, samples/s, peak memory")
    t.add_argument("--preset", default="paper")
    t.add_argument("--batch", type=int, default=2, help="batch per domain")
    t.add_argument("--segment", type=int, default=12000, help="samples per segment")
    t.add_argument("--domains", type=int, default=2)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--device", default="auto")
    t.add_argument("--nondeterministic", action="store_true",
                   help="CUDA: allow nondeterministic kernels (train.deterministic=false)")
    t.set_defaults(func=_bench_train)

    g = which.add_parser("generate", help="autoregressive generation, audio samples/s")
    g.add_argument("--preset", default="paper")
    g.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    g.add_argument("--samples", type=int, default=0, help="samples generated per run (0 = auto)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--device", default="auto")
    g.set_defaults(func=_bench_generate)


def _bench_train(args: argparse.Namespace) -> int:
    from .train import run_benchmark

    return run_benchmark(args)


def _bench_generate(args: argparse.Namespace) -> int:
    from .generate import run_benchmark

    return run_benchmark(args)
