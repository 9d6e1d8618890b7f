"""`python -m umt_core bench train|generate|translate|loader|parity`: speed and memory,
with a baseline measured in the same run. Figures are printed, never asserted in tests.
Benchmarks live here, out of the library: the library never imports this package."""

from __future__ import annotations

import argparse

from ..config import PRESETS
from ..options import non_negative_int, positive_int
from . import generate, loader, parity, train, translate


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark training or generation speed")
    which = p.add_subparsers(dest="what", required=True, metavar="{train,generate,translate,loader,parity}")

    t = which.add_parser("train", help="seconds per training step, samples/s, peak memory")
    t.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="config preset whose model is measured")
    t.add_argument("--batch", type=positive_int, default=2, help="batch per domain")
    t.add_argument("--segment", type=positive_int, default=12000, help="samples per segment")
    t.add_argument("--domains", type=positive_int, default=2, help="domains (decoders) trained")
    t.add_argument("--repeats", type=positive_int, default=5, help="timed steps (median)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    t.add_argument("--nondeterministic", action="store_true",
                   help="CUDA: allow nondeterministic kernels (train.deterministic=false)")
    t.set_defaults(func=train.run)

    g = which.add_parser("generate", help="autoregressive generation, audio samples/s")
    g.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="config preset whose decoder is measured")
    g.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8, 32],
                   help="batch sizes (streams generated together)")
    g.add_argument("--samples", type=non_negative_int, default=0,
                   help="samples generated per run (0 = auto)")
    g.add_argument("--repeats", type=positive_int, default=3, help="timed runs (median)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    g.set_defaults(func=generate.run)

    d = which.add_parser("loader", help="training loader segments/s, with and without augmentation")
    d.add_argument("--manifest", default="data_manifests/scores.yaml",
                   help="measures its prepared train split (noise when not prepared)")
    d.add_argument("--segment", type=positive_int, default=12000, help="samples per segment")
    d.add_argument("--batch", type=positive_int, default=32, help="segments per domain and step")
    d.add_argument("--workers", type=positive_int, default=2,
                   help="loader processes of the second run")
    d.set_defaults(func=loader.run)

    translate.register(which)
    parity.register(which)
