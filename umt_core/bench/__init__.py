"""`python -m umt_core bench train|generate|translate|loader|parity`: speed and memory,
with a baseline measured in the same run. Figures are printed, never asserted in tests.
Benchmarks live here, out of the library: the library never imports this package."""

from __future__ import annotations

import argparse

from . import generate, loader, parity, train, translate


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
    t.set_defaults(func=train.run)

    g = which.add_parser("generate", help="autoregressive generation, audio samples/s")
    g.add_argument("--preset", default="paper")
    g.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    g.add_argument("--samples", type=int, default=0, help="samples generated per run (0 = auto)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--device", default="auto")
    g.set_defaults(func=generate.run)

    d = which.add_parser("loader", help="training loader segments/s, with and without augmentation")
    d.add_argument("--manifest", default="data_manifests/scores.yaml",
                   help="measures its prepared train split (noise when not prepared)")
    d.add_argument("--segment", type=int, default=12000, help="samples per segment")
    d.add_argument("--batch", type=int, default=32, help="segments per domain and step")
    d.add_argument("--workers", type=int, default=2, help="loader processes of the second run")
    d.set_defaults(func=loader.run)

    translate.register(which)
    parity.register(which)
