"""Does the encoder's latent carry the notes? A pitch-class probe of the latent frames.

A translation can keep the notes only if the shared latent carries them. The evaluation's
latent probe asks the opposite question (does the latent still carry the *instrument*);
this one asks whether the notes are in it at all, which tells the two ways a model can
fail apart: a latent that carries the pitch classes with decoders that ignore it (a
decoder problem), or a latent that carries none (an encoder problem).

Each latent frame (one every ``pool`` samples) of the source clips of the paired works
of a split is labelled with the pitch classes the score has sounding at the frame's
centre (the dataset's note lists, `content.ScoreNotes`). For each of the 12 classes a
logistic regression on the standardised latent predicts "sounding", cross-validated by
work (folds never split a work, so the probe cannot learn a work's notes by heart), and
the figure is the mean over the classes of the out-of-fold ROC AUC: 0.5 = no information,
1 = the classes read off perfectly, with a 95% interval from resampling works. Beside it,
scored the same way: an encoder of the same architecture as initialised (what the
architecture passes on untrained; the gain over it has a paired interval), and two
calibration rows: the input's own CQT chroma at the same frames (an input that certainly
carries the notes: must be high) and the latent with the labels shuffled across frames
(no information: must be about 0.5). The probe is linear and reads one frame at a time,
so it is a lower bound on what the latent holds; the comparison with the untrained
encoder uses the same probe.

    python -m umt_core latent-pitch --checkpoint runs/cpu/checkpoints/best.pt \\
        --manifest data_manifests/scores-8k.yaml --json latent_pitch.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import mu_law_encode
from .calibration import paired_clips
from .content import CQT_HOP, cqt_chroma, pitch_classes_at
from .evaluate import SPLITS, EvalData
from .options import positive_float, positive_int
from .paths import resolve, write_text_atomic
from .signals import as_audio


def latent_frames(model, clip: np.ndarray) -> np.ndarray:
    """(frames, channels): the encoder's latent of one clip (cut to whole pools)."""
    pool = model.config.model.pool
    a = as_audio(clip)[: len(clip) // pool * pool]
    if len(a) < pool:
        raise ValueError(f"a clip of {len(clip)} samples is shorter than one latent frame ({pool})")
    device = next(model.parameters()).device
    with torch.no_grad():
        x = mu_law_encode(torch.from_numpy(a)[None], model.config.mu_law).to(device)
        z = model.encoder(x).float().cpu()[0]
    return z.T.numpy()


def frame_pitch_classes(events: np.ndarray, start_s: float, n_frames: int,
                        frame_s: float) -> np.ndarray:
    """(n_frames, 12) booleans: the classes sounding at each frame's centre. `events`:
    (N, 4) [channel, midi pitch, start s, end s] from the start of the rendering."""
    times = start_s + (np.arange(n_frames) + 0.5) * frame_s
    return pitch_classes_at(events, times).T.astype(bool)


def out_of_fold(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, folds: int = 4,
                seed: int = 0) -> np.ndarray:
    """(frames, 12): each pitch class's probability from a logistic regression trained on
    the other works' frames (folds never split a work); NaN for a class that never or
    always sounds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    k = min(folds, len(set(groups)))
    if k < 2:
        raise ValueError(f"the pitch probe needs clips of two works or more, got {len(set(groups))}")
    prob = np.full(Y.shape, np.nan)
    for pc in range(12):
        y = Y[:, pc].astype(int)
        if y.min() == y.max():
            continue
        for train, test in GroupKFold(n_splits=k).split(X, y, groups):
            if y[train].min() == y[train].max():
                prob[test, pc] = y[train].mean()  # one class seen: no information
                continue
            probe = make_pipeline(StandardScaler(), LogisticRegression(
                C=1.0, max_iter=2000, class_weight="balanced", random_state=seed))
            probe.fit(X[train], y[train])
            prob[test, pc] = probe.predict_proba(X[test])[:, 1]
    return prob


def macro_auc(Y: np.ndarray, prob: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean over pitch classes (those with both outcomes among `rows`) of the ROC AUC,
    as the Mann-Whitney statistic of the ranks (ties averaged): the same value as
    scikit-learn's roc_auc_score, fast enough to bootstrap."""
    from scipy.stats import rankdata

    rows = np.arange(len(Y)) if rows is None else rows
    aucs = []
    for pc in range(12):
        y, p = Y[rows, pc].astype(bool), prob[rows, pc]
        n_pos = int(y.sum())
        if not np.isfinite(p).all() or n_pos in (0, len(y)):
            continue
        ranks = rankdata(p)
        aucs.append((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))
    return float(np.mean(aucs)) if aucs else float("nan")


def pitch_probe_auc(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, folds: int = 4,
                    seed: int = 0) -> dict[str, Any]:
    """Mean over pitch classes of the cross-validated (by group) ROC AUC of a logistic
    regression predicting each class from X; classes that never or always sound are
    left out (`classes` says how many counted)."""
    return _figures(Y, out_of_fold(X, Y, groups, folds, seed))


def _figures(Y: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    return {"auc": macro_auc(Y, prob),
            "classes": int(sum(np.isfinite(prob[:, pc]).all() for pc in range(12)))}


def paired_bootstrap(Y: np.ndarray, probs: dict[str, np.ndarray], groups: np.ndarray,
                     n_boot: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """95% intervals of each probe's macro AUC and of each one's difference from the
    first, resampling works with replacement (the same works for every probe)."""
    works = np.unique(groups)
    rows_of = {w: np.flatnonzero(groups == w) for w in works}
    rng = np.random.default_rng(seed)
    names = list(probs)
    draws = {n: [] for n in names}
    for _ in range(n_boot):
        rows = np.concatenate([rows_of[w] for w in rng.choice(works, len(works))])
        for n in names:
            draws[n].append(macro_auc(Y, probs[n], rows))
    out = {}
    for n in names:
        d = np.asarray(draws[n])
        out[n] = {"ci_low": float(np.nanpercentile(d, 2.5)), "ci_high": float(np.nanpercentile(d, 97.5))}
        if n != names[0]:
            diff = np.asarray(draws[names[0]]) - d
            out[n].update(gain_over_it=float(macro_auc(Y, probs[names[0]]) - macro_auc(Y, probs[n])),
                          gain_ci_low=float(np.nanpercentile(diff, 2.5)),
                          gain_ci_high=float(np.nanpercentile(diff, 97.5)))
    return out


def latent_pitch(model, data: EvalData, *, split: str = "val", domains: list[str] | None = None,
                 segments: int = 4, seconds: float = 2.0, works: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """The pitch-class probe of the latent of `model` on the source clips of `split`'s
    paired works, with its two calibration rows (see the module's docstring)."""
    if data.notes is None:
        raise ValueError("the pitch probe needs the score's notes: a dataset rendered from "
                         "scores (a MusicNet or folder dataset has none)")
    domains = [d for d in (domains or model.domains) if d in data.domains]
    if len(domains) < 2:
        raise ValueError(f"the pitch probe needs two of the model's domains {model.domains} "
                         f"in the data {data.domains}")
    sr, pool = data.sample_rate, model.config.model.pool
    frame_s = pool / sr
    latents, chromas, labels, groups, clips = [], [], [], [], []
    for i, src in enumerate(domains):
        tgt = domains[(i + 1) % len(domains)]
        for clip in paired_clips(data, src, tgt, split=split, segments=segments,
                                 seconds=seconds, works=works, notes=data.notes):
            clips.append(clip.source)
            z = latent_frames(model, clip.source)
            n = len(z)
            chroma = cqt_chroma(clip.source, sr)  # (12, frames every CQT_HOP samples)
            at = np.minimum(((np.arange(n) + 0.5) * pool / CQT_HOP).astype(int),
                            chroma.shape[1] - 1)
            latents.append(z)
            chromas.append(np.log1p(chroma[:, at].T))
            labels.append(frame_pitch_classes(clip.events, clip.start / sr, n, frame_s))
            groups += [clip.work] * n
    X, C, Y = np.concatenate(latents), np.concatenate(chromas), np.concatenate(labels)
    g = np.asarray(groups)
    shuffled = Y[np.random.default_rng(seed).permutation(len(Y))]
    # The same encoder as initialised, before any training: what its architecture gives
    # for free (random dilated convolutions already pass some of the spectrum on).
    untrained = _untrained(model, seed)
    U = np.concatenate([latent_frames(untrained, c) for c in clips])
    probs = {"latent": out_of_fold(X, Y, g, seed=seed),
             "untrained_latent": out_of_fold(U, Y, g, seed=seed),
             "input_chroma": out_of_fold(C, Y, g, seed=seed)}  # must be high
    intervals = paired_bootstrap(Y, probs, g, seed=seed)
    out = {"split": split, "domains": domains, "frames": len(Y), "works": len(set(groups)),
           "frame_seconds": frame_s}
    for name, prob in probs.items():
        out[name] = {**_figures(Y, prob), **intervals[name]}
    # no information: must be about 0.5
    out["latent_shuffled_labels"] = pitch_probe_auc(X, shuffled, g, seed=seed)
    return out


def _untrained(model, seed: int):
    """An encoder of the model's architecture as initialised (torch seed `seed`)."""
    from .model import UMTN

    torch.manual_seed(seed)
    return UMTN(model.config).eval()


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latent-pitch", help="does the latent carry the notes? a pitch-class "
                       "probe of the encoder's latent frames, with calibration rows")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints")
    p.add_argument("--manifest", default="data_manifests/scores-8k.yaml",
                   help="a prepared dataset rendered from scores (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default="val", help="works probed")
    p.add_argument("--segments", type=positive_int, default=4, help="clips per work")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per clip")
    p.add_argument("--works", type=positive_int, default=None, help="paired works (None: all)")
    p.add_argument("--json", default=None, help="write the figures here (None: print only)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from .checkpoint import load_model

    data = EvalData.from_manifest(resolve(args.manifest))
    out = {}
    for ckpt in args.checkpoint:
        model = load_model(resolve(ckpt)).eval()
        r = latent_pitch(model, data, split=args.split, segments=args.segments,
                         seconds=args.seconds, works=args.works)
        out[ckpt] = r
        lat, un = r["latent"], r["untrained_latent"]
        print(f"{ckpt}: latent {lat['auc']:.3f} [{lat['ci_low']:.3f}, {lat['ci_high']:.3f}], "
              f"gain over the untrained encoder {un['gain_over_it']:+.3f} "
              f"[{un['gain_ci_low']:+.3f}, {un['gain_ci_high']:+.3f}]  (untrained "
              f"{un['auc']:.3f}, input chroma {r['input_chroma']['auc']:.3f}, "
              f"shuffled labels {r['latent_shuffled_labels']['auc']:.3f}; {r['frames']} frames "
              f"of {r['works']} {args.split} works; AUC, 0.5 = no information)")
    if args.json:
        from .paths import project_root
        from .study.report import git_info

        payload = {"command": " ".join(["python -m umt_core", *sys.argv[1:]]),
                   "git": git_info(project_root()), "manifest": args.manifest,
                   "split": args.split, "checkpoints": out}
        write_text_atomic(Path(resolve(args.json)), json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
