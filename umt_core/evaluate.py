"""Objective evaluation of translations: does it sound like the target instrument, is
it clean, does it keep the notes, and does the latent still carry the source
instrument?

No single number says whether a translation worked. A decoder can stamp its timbre on
babble, or copy its input. So every clip gets several signals, and every table carries
the *calibration rows* (`umt_core.calibration`) on the same clips: the ground truth, the
ground truth with white noise at 20, 10 and 5 dB SNR, with mu-law code noise, under the
source's loudness envelope, noise shaped like the target instrument, the source itself
and another work by the target instrument. Each criterion's pass rate on each row shows
what the criterion can tell apart.

Per clip (thresholds chosen on the *validation* works by `calibration.choose_thresholds`,
never on the works reported):

- **instrument**: the instrument classifier (over the model's domains only; chance =
  1 / domains) gives the target domain at least `target_prob`;
- **clean**: the noise floor (`calibration.noise_flatness`) is below `clean_flatness`;
- **notes**: notes kept (`umt_core.content`: CQT chroma against the score's pitch
  classes, or against the paired ground truth where the score is unknown; 0 = wrong
  notes, 1 = as the real rendering) is at least `notes_kept`;
- **closer_to_target**: the log-mel distance to the ground truth is below that to the
  source.

``success = instrument AND clean AND notes AND closer_to_target``. The STFT chroma agreement
with the source (`source_chroma`) and the plain spectral flatness are shown beside, in
no verdict. Each work is judged on `segments` clips spread over its whole length; rates
carry Wilson intervals and means bootstrap intervals over works.

Model-level signals: a fresh logistic-regression probe predicting the source domain
from encoder latents of held-out audio (against chance), and the latent-use gap (the
reconstruction loss with a time-shuffled latent minus the loss with the true one).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import calibration
from .audio import load_audio, mu_law_encode
from .calibration import PairedClip, Thresholds
from .checkpoint import load_model
from .content import ScoreNotes
from .data import load_manifest, split_files
from .forward import reconstruction_loss_sum
from .generate import translate
from .options import non_negative_float, positive_float, positive_int
from .outputs import output_file
from .paths import resolve
from .signals import (
    InstrumentClassifier,
    as_audio,
    cut,
    small_blas,
    spread,
    windows,
)
from .statistics import bootstrap_mean, rate, wilson_interval

CONDITIONS = ("translation", "reconstruction", *calibration.ROWS)
CRITERIA = ("instrument", "clean", "notes", "closer_to_target", "success")
MEANS = ("notes_kept_score", "notes_kept_truth", "score_agreement", "truth_agreement",
         "source_chroma", "target_prob", "noise_flatness", "flatness")
# "test_alt": the test works rendered with the dataset's other soundfont (a scores
# dataset's `alt_soundfont`): does a model translate a sound it was not trained on?
SPLITS = ("val", "test", "test_alt")
THRESHOLD_SPLIT = "val"  # every choice is made on the validation works
THRESHOLD_TOLERANCE = 0.1  # share of odd calibration clips a threshold may leave beyond it
TEMPERATURES = (1.0, 0.8, 0.6, 0.4, 0.0)  # the sweep's candidates (0 = greedy)
SAMPLING_FILE = "sampling.json"  # in a run directory: the temperature chosen on val


# ------------------------------------------------------------------- latent signals


def latent_features(model, clips: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
    """Per clip: mean and standard deviation over time of each encoder latent channel.
    Clips of one call must have the same length."""
    feats = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            x = torch.from_numpy(np.stack([as_audio(c) for c in clips[i:i + batch]]))
            z = model.encoder(mu_law_encode(x, model.config.mu_law).to(device)).float().cpu()
            std = z.std(dim=-1) if z.shape[-1] > 1 else torch.zeros_like(z[..., 0])
            feats.append(torch.cat([z.mean(dim=-1), std], dim=1).numpy())
    return np.concatenate(feats)


@small_blas
def latent_probe(features: np.ndarray, labels: Sequence[str], groups: Sequence[str] | None = None,
                 folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated accuracy of a fresh logistic regression predicting the domain
    from latent features, against chance (the majority share). With `groups` (e.g. the
    work a segment comes from), folds never split a group, so the probe cannot
    recognise the notes."""
    # On use: scikit-learn takes seconds to import (measured) and every CLI command
    # imports this module to list its own.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    chance = float(counts.max() / counts.sum())
    result = {"n": len(y), "n_domains": len(counts), "chance": chance}
    if len(counts) < 2:
        return {**result, "accuracy": float("nan"), "folds": 0}
    if groups is not None and len(set(groups)) >= 2:
        k = min(folds, len(set(groups)))
        splitter = GroupKFold(n_splits=k)
        split_groups = np.asarray(groups)
    else:
        k = max(2, min(folds, int(counts.min())))
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        split_groups = None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    pred = cross_val_predict(probe, X, y, cv=splitter, groups=split_groups)
    return {**result, "accuracy": float(np.mean(pred == y)), "folds": int(k)}


def latent_use_gap(model, clips: dict[str, Sequence[np.ndarray]], seed: int = 0) -> pd.DataFrame:
    """Per domain: the decoder's training loss (teacher-forced cross-entropy in nats per
    sample, or the spectral loss) with the true latent and with its frames shuffled in
    time; the gap says how much the decoder uses the latent (0 = it ignores it)."""
    rows = []
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for domain, items in clips.items():
            if not items:
                continue
            x = torch.from_numpy(np.stack([as_audio(c) for c in items]))
            codes = mu_law_encode(x, model.config.mu_law).to(device)
            z = model.encoder(codes)
            frames = z.shape[-1]
            if frames > 1:
                perm = torch.randperm(frames, generator=g)
                while frames > 1 and bool((perm == torch.arange(frames)).all()):
                    perm = torch.randperm(frames, generator=g)
                z_shuffled = z[..., perm.to(device)]
            elif z.shape[0] > 1:
                z_shuffled = z.roll(1, dims=0)
            else:
                rows.append({"domain": domain, "loss_true": float("nan"),
                             "loss_shuffled": float("nan"), "gap": float("nan")})
                continue
            # the decoder's own training loss: nats per sample, or the spectral loss
            k = model.domain_index(domain)
            true = float(reconstruction_loss_sum(model, k, codes, z)) / codes.numel()
            shuf = float(reconstruction_loss_sum(model, k, codes, z_shuffled)) / codes.numel()
            rows.append({"domain": domain, "loss_true": true, "loss_shuffled": shuf,
                         "gap": shuf - true})
    return pd.DataFrame(rows, columns=["domain", "loss_true", "loss_shuffled", "gap"])


# ------------------------------------------------------------------------ the data


@dataclass
class EvalData:
    """Audio files of a dataset: split -> domain -> sorted files (data layout
    data/<dataset>/<domain>/<split>/<stem>.wav; on the paired val and test splits the
    same stem means the same notes in every domain), and the score's notes when the
    dataset is rendered from scores."""

    sample_rate: int
    domains: list[str]
    files: dict[str, dict[str, list[Path]]]
    notes: ScoreNotes | None = None

    @classmethod
    def from_manifest(cls, manifest) -> EvalData:
        if isinstance(manifest, str | Path):
            manifest = load_manifest(manifest)
        files = {}
        for split in ("train", "val", "test", "test_alt"):
            try:
                files[split] = {d: [Path(p) for p in ps]
                                for d, ps in split_files(manifest, split).items()}
            except (FileNotFoundError, ValueError):
                files[split] = {}
        if not manifest.lock_path.is_file() and not any(files.get("test", {}).values()):
            from .data.manifest import DataError, show_path

            raise DataError(f"dataset {manifest.name!r} is not prepared ({manifest.lock_path} "
                            f"does not exist and {manifest.data_dir} holds no test clips); run "
                            f"`python -m umt_core prep --manifest {show_path(manifest.path)}` "
                            "first")
        notes = None
        if manifest.kind == "scores" and manifest.lock_path.is_file():
            notes = ScoreNotes.from_manifest(manifest)
        return cls(int(manifest.sample_rate), list(manifest.domains), files, notes)

    @classmethod
    def from_folder(cls, root: str | Path, sample_rate: int,
                    domains: Sequence[str] | None = None) -> EvalData:
        root = Path(root)
        if domains is None:
            domains = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = {
            split: {d: sorted((root / d / split).glob("*.wav")) for d in domains}
            for split in ("train", "val", "test", "test_alt")
        }
        return cls(sample_rate, list(domains), files)

    def split(self, name: str) -> dict[str, list[Path]]:
        return {d: list(self.files.get(name, {}).get(d, [])) for d in self.domains}

    def load(self, path: Path) -> np.ndarray:
        from .data.identity import verify_locked_file

        verify_locked_file(path)  # a file of a prepared dataset must still match its lock
        return load_audio(path, self.sample_rate)[0]


def dataset_classifier(data: EvalData, domains: Sequence[str], *, seconds: float = 2.0,
                       mu_law: str = "torchaudio", seed: int = 0,
                       files: int = 12) -> InstrumentClassifier:
    """The instrument classifier over `domains` (the model's): trained on up to `files`
    training files per domain, checked on half as many validation files."""
    train, val = data.split("train"), data.split("val")
    missing = [d for d in domains if not train.get(d)]
    if missing:
        raise ValueError(f"domains {missing} have no training audio; prepare the dataset first")
    train_audio = {d: [data.load(p) for p in spread(train[d], files)] for d in domains}
    heldout = ({d: [data.load(p) for p in spread(val[d], max(files // 2, 1))] for d in domains}
               if all(val.get(d) for d in domains) else None)
    return calibration.domain_classifier(train_audio, data.sample_rate, list(domains),
                                         heldout=heldout, seconds=seconds, mu_law=mu_law,
                                         seed=seed)


# ---------------------------------------------------------------------- evaluation

# translator(clips, source domain, targets) -> {target: one audio per clip}; a clip's
# audio is `clip.source` (`clip.work` and `clip.start` say where it comes from)
Translator = Callable[[list[PairedClip], str, list[str]], dict[str, list[np.ndarray]]]


def model_translator(model, *, temperature: float = 1.0, seed: int = 0,
                     progress: bool = False, chunk_samples: int = 0,
                     overlap_samples: int | None = None) -> Translator:
    """Translate with `umt_core.generate.translate` (batched over the clips). Each clip
    in one piece by default, as the study's figures were made (the clips are short
    and already a batch); `chunk_samples` > 0 translates clips longer than that in
    cross-faded chunks (`umt_core.generate.chunked`)."""

    def run(clips: list[PairedClip], source: str, targets: list[str]):
        out = translate(model, [c.source for c in clips], model.config.sample_rate, targets,
                        temperature=temperature, seed=seed, progress=progress,
                        chunk_samples=chunk_samples, overlap_samples=overlap_samples)
        return {t: [as_audio(a) for a in out[t]] for t in targets}

    return run


@dataclass
class Evaluation:
    """Per-clip rows (`clips`: one per system, condition, source, target, work and
    segment) and everything derived from them."""

    clips: pd.DataFrame
    classifier: dict[str, Any]
    settings: dict[str, Any]
    thresholds: dict[str, Any]
    latent_probe: dict[str, Any] | None = None
    latent_use: pd.DataFrame | None = None
    # (condition, source, clip, target) -> audio; a clip is named "<work>@<start>s"
    audio: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict, repr=False)
    classifier_model: InstrumentClassifier | None = field(default=None, repr=False)

    def _groups(self, by: Sequence[str]):
        order = {c: i for i, c in enumerate(CONDITIONS)}
        df = self.clips.sort_values(list(by), key=lambda s: s.map(order) if s.name == "condition"
                                    else s, kind="stable")
        return df.groupby(list(by), sort=False)

    def rates(self, by: Sequence[str] = ("system", "condition")) -> pd.DataFrame:
        """Long table: group x criterion -> rate, k, n and the Wilson interval."""
        records = []
        for key, g in self._groups(by):
            for crit in CRITERIA:
                if g[crit].notna().any():
                    records.append({**dict(zip(by, key)), "criterion": crit,
                                    **rate(g[crit].dropna().tolist())})
        return pd.DataFrame(records)

    def means(self, by: Sequence[str] = ("system", "condition")) -> pd.DataFrame:
        """Long table: group x signal -> mean, n, works and the bootstrap interval over
        works (clips of one work share their notes: not independent draws)."""
        records = []
        for key, g in self._groups(by):
            for sig in MEANS:
                if g[sig].notna().any():
                    records.append({**dict(zip(by, key)), "signal": sig,
                                    **bootstrap_mean(g[sig].to_numpy(float), g.work.to_numpy(),
                                                     seed=self.settings.get("seed", 0))})
        return pd.DataFrame(records).rename(columns={"groups": "works"})

    def summary(self, by: Sequence[str] = ("system", "condition")) -> pd.DataFrame:
        """Wide table per group: n, the rate of every criterion and the mean of every
        signal (intervals in `rates` and `means`)."""
        g = self._groups(by)
        out = g.size().rename("n").to_frame()
        rates = self.rates(by).pivot_table(index=list(by), columns="criterion", values="rate",
                                           sort=False)
        means = self.means(by).pivot_table(index=list(by), columns="signal", values="mean",
                                           sort=False)
        out = out.join(rates[[c for c in CRITERIA if c in rates]])
        out = out.join(means[[m for m in MEANS if m in means]])
        return out.reset_index()

    def by_pair(self) -> pd.DataFrame:
        return self.summary(("system", "condition", "source", "target"))

    def condition_figures(self, condition: str = "translation") -> dict[str, Any]:
        """One condition's headline figures: each criterion's rate (rate, k, n, Wilson
        interval) and `notes_kept` (mean and bootstrap interval over works, against the
        score where the dataset knows it, else against the ground truth)."""
        rates = self.rates(("condition",))
        out: dict[str, Any] = {
            r["criterion"]: {k: r[k] for k in ("rate", "k", "n", "ci_low", "ci_high")}
            for r in rates[rates.condition == condition].to_dict("records")}
        means = self.means(("condition",)).set_index(["condition", "signal"])
        for signal, against in (("notes_kept_score", "score"), ("notes_kept_truth", "ground truth")):
            if (condition, signal) in means.index:
                m = means.loc[(condition, signal)]
                out["notes_kept"] = {"mean": float(m["mean"]), "ci_low": float(m["ci_low"]),
                                     "ci_high": float(m["ci_high"]), "against": against}
                break
        return out

    def calibration_table(self) -> pd.DataFrame:
        """Criterion (rows) x condition (columns): the pass rates, calibration rows beside
        the model's translations."""
        t = self.rates(("condition",)).pivot(index="criterion", columns="condition",
                                              values="rate")
        cols = [c for c in CONDITIONS if c in t.columns]
        return t.reindex(index=[c for c in CRITERIA if c in t.index], columns=cols)

    def confusion(self, condition: str = "translation", system: str | None = None) -> pd.DataFrame:
        """Counts of (source domain, classifier verdict) for one condition."""
        df = self.clips[self.clips.condition == condition]
        if system is not None:
            df = df[df.system == system]
        domains = self.classifier.get("domains") or sorted(set(df.predicted))
        return pd.crosstab(df.source, df.predicted).reindex(columns=domains, fill_value=0)

    def key_figures(self) -> dict[str, float | str]:
        """A flat dict of the headline numbers (for a notebook's results JSON): every
        rate of the translations with its Wilson interval and every mean with its
        interval over works; the calibration rows' rates; thresholds, split, chance."""
        out: dict[str, float | str] = {"split": self.settings["split"],
                                       "thresholds_chosen_on": self.thresholds["chosen_on"],
                                       "temperature": self.settings["temperature"]}
        for k in ("chance", "heldout_accuracy", "heldout_accuracy_noisy"):
            if k in self.classifier:
                out[f"classifier_{k}"] = self.classifier[k]
        for k, v in self.thresholds["values"].items():
            out[f"threshold_{k}"] = v
        model_rows = {"translation", "reconstruction"}
        for r in self.rates().to_dict("records"):
            name = f"{r['system']}_{r['condition']}_{r['criterion']}"
            out[name] = r["rate"]
            if r["condition"] in model_rows:
                out[f"{name}_ci_low"], out[f"{name}_ci_high"] = r["ci_low"], r["ci_high"]
        for r in self.means().to_dict("records"):
            if r["signal"] in ("notes_kept_score", "notes_kept_truth", "source_chroma"):
                name = f"{r['system']}_{r['condition']}_{r['signal']}"
                out[name] = r["mean"]
                if r["condition"] in model_rows:
                    out[f"{name}_ci_low"], out[f"{name}_ci_high"] = r["ci_low"], r["ci_high"]
        if self.latent_probe:
            acc, n = self.latent_probe["accuracy"], self.latent_probe.get("n", 0)
            out["latent_probe_accuracy"] = acc
            out["latent_probe_chance"] = self.latent_probe["chance"]
            if n and math.isfinite(acc):
                # Wilson over the probed segments, taken as independent: segments of one
                # work are not, so the true uncertainty is somewhat larger.
                low, high = wilson_interval(round(acc * n), n)
                out["latent_probe_accuracy_ci_low"], out["latent_probe_accuracy_ci_high"] = low, high
                out["latent_probe_n"] = n
        if self.latent_use is not None and len(self.latent_use):
            out["latent_use_gap"] = float(self.latent_use.gap.mean())
        return out

    def examples(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Translated clips with their source and ground truth: dicts with system,
        source, target, clip (work@seconds) and the audio of each."""
        out = []
        for (cond, src, clip, tgt), audio in self.audio.items():
            if cond != "translation":
                continue
            out.append({"system": self.settings["system"], "source": src, "target": tgt,
                        "clip": clip, "source_audio": self.audio.get(("source", src, clip, tgt)),
                        "translation": audio,
                        "ground_truth": self.audio.get(("ground_truth", src, clip, tgt))})
            if limit is not None and len(out) >= limit:
                break
        return out

    def to_json(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(df.to_json(orient="records"))

        table = self.calibration_table()
        return {
            "settings": self.settings,
            "thresholds": self.thresholds,
            "classifier": self.classifier,
            "rates": records(self.rates()),
            "means": records(self.means()),
            "summary": records(self.summary()),
            "pairs": records(self.by_pair()),
            "calibration": {c: {r: (None if pd.isna(v) else float(v)) for r, v in row.items()}
                            for c, row in table.iterrows()},
            "confusion": {cond: {str(s): {str(k): int(v) for k, v in r.items()}
                                 for s, r in self.confusion(cond).iterrows()}
                          for cond in ("translation", "reconstruction", "ground_truth", "source")
                          if (self.clips.condition == cond).any()},
            "latent_probe": self.latent_probe,
            "latent_use": records(self.latent_use) if self.latent_use is not None else None,
            "key_figures": self.key_figures(),
            "clips": records(self.clips),
        }


def thresholds_on_val(data: EvalData, classifier: InstrumentClassifier,
                      pairs: Sequence[tuple[str, str]], *, seed: int = 0,
                      mu_law: str = "torchaudio", signals: pd.DataFrame | None = None,
                      **clip_options: Any) -> dict[str, Any]:
    """Thresholds chosen on the calibration rows of the validation works (`signals`,
    or computed for each (source, target) of `pairs` with `clip_options` for
    `calibration.paired_clips`): {"values", "chosen_on", "tolerance", "clips",
    "report"} (the report says per criterion whether its rows separate)."""
    if signals is None:
        clip_options = {"notes": data.notes, **clip_options}
        signals = pd.concat([calibration.calibration_signals(
            data, s, t, classifier, split=THRESHOLD_SPLIT, seed=seed, mu_law=mu_law,
            **clip_options) for s, t in pairs], ignore_index=True)
    th, report = calibration.choose_thresholds(signals, tolerance=THRESHOLD_TOLERANCE)
    return {"values": asdict(th), "chosen_on": THRESHOLD_SPLIT, "tolerance": THRESHOLD_TOLERANCE,
            "clips": int((signals.row == "ground_truth").sum()), "report": report}


class _Rows:
    """The per-clip rows of an evaluation and the audio each one judged."""

    def __init__(self, system: str, sample_rate: int, classifier: InstrumentClassifier):
        self.system, self.sample_rate, self.classifier = system, sample_rate, classifier
        self.records: list[dict[str, Any]] = []
        self.audio: dict[tuple[str, str, str, str], np.ndarray] = {}

    def clip_name(self, clip: PairedClip) -> str:
        return f"{clip.work}@{clip.start / self.sample_rate:.2f}s"

    def add(self, condition: str, src: str, tgt: str, clip: PairedClip,
            candidate: np.ndarray) -> None:
        signals = calibration.candidate_signals(candidate, clip, tgt, self.sample_rate,
                                                self.classifier)
        self.records.append({"system": self.system, "condition": condition, "source": src,
                             "target": tgt, "work": clip.work,
                             "start": clip.start / self.sample_rate, **signals})
        self.audio[(condition, src, self.clip_name(clip), tgt)] = candidate

    def add_calibration(self, data: EvalData, src: str, tgt: str, clips: list[PairedClip],
                        seed: int, mu_law: str) -> None:
        """The calibration rows of `clips` (their audio kept for the source, the ground
        truth and the unrelated clip)."""
        sig = calibration.calibration_signals(data, src, tgt, self.classifier, clips=clips,
                                              seed=seed, mu_law=mu_law)
        per_clip = len(calibration.ROWS)
        for i, clip in enumerate(clips):
            for rec in sig.iloc[i * per_clip:(i + 1) * per_clip].to_dict("records"):
                row = rec.pop("row")
                audio = {"source": clip.source, "ground_truth": clip.ground_truth,
                         "unrelated": clip.unrelated[0]}.get(row)
                self.records.append({"system": self.system, "condition": row, "source": src,
                                     "target": tgt, **rec})
                if audio is not None:
                    self.audio[(row, src, self.clip_name(clip), tgt)] = audio

    def table(self, th: Thresholds) -> pd.DataFrame:
        """The rows with every criterion's verdict; a reconstruction has no
        closer_to_target and no success (it is not a translation)."""
        df = pd.DataFrame(self.records)
        v = calibration.verdicts(df, th).astype("boolean")
        rec = df.condition == "reconstruction"
        v.loc[rec, ["closer_to_target", "success"]] = pd.NA
        return pd.concat([df, v], axis=1)


@small_blas
def evaluate(
    model, data: EvalData, *, split: str = "test", sources: Sequence[str] | None = None,
    targets: Sequence[str] | None = None, works: int | None = None, segments: int = 4,
    seconds: float = 2.0, temperature: float = 1.0, seed: int = 0, system: str = "model",
    translator: Translator | None = None, classifier: InstrumentClassifier | None = None,
    thresholds: dict[str, Any] | None = None, with_calibration: bool = True,
    probe_seconds: float = 1.0,
    probe_segments: int = 24, gap_segments: int = 4, gap_seconds: float = 0.5,
    classifier_files: int = 12, progress: bool = False,
) -> Evaluation:
    """Translate `segments` clips of `seconds` spread over each paired work of `split`
    ("val", "test" or "test_alt"; `works` of them at most) from each source domain into each target
    domain, and judge them beside the calibration rows of the same clips.

    `model=None` evaluates only the calibration rows. `translator` replaces the model's
    generation (tests use it to stand in for a perfect or a copying model).
    `classifier` reuses a trained classifier (over the model's domains); `thresholds`
    reuses a `thresholds_on_val` result, else it is computed on the validation works.
    `with_calibration=False` leaves the calibration rows out (a sweep that has them
    already; the source and ground truth of the examples are then missing too).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    sr = data.sample_rate
    if model is not None and model.config.sample_rate != sr:
        raise ValueError(f"model works at {model.config.sample_rate} Hz, the data at {sr} Hz")
    model_domains = list(model.domains) if model is not None else list(data.domains)
    sources = list(sources or [d for d in model_domains if d in data.domains])
    targets = list(targets or [d for d in model_domains if d in data.domains])
    _check_domains(data, model_domains, sources, targets)
    mu_law = model.config.mu_law if model is not None else "torchaudio"
    if classifier is None:
        classifier = dataset_classifier(data, model_domains, seconds=seconds, mu_law=mu_law,
                                        seed=seed, files=classifier_files)
    if translator is None and model is not None:
        translator = model_translator(model, temperature=temperature, seed=seed,
                                      progress=progress)
    options = {"segments": segments, "seconds": seconds, "works": works, "notes": data.notes}
    pairs = [(s, t) for s in sources for t in targets if s != t]
    if not pairs:
        raise ValueError(f"sources {sources} and targets {targets} make no translation pair")
    rows = _Rows(system, sr, classifier)
    clips = {}
    for src, tgt in pairs:
        clips[src, tgt] = calibration.paired_clips(data, src, tgt, split=split, **options)
        if with_calibration:
            rows.add_calibration(data, src, tgt, clips[src, tgt], seed, mu_law)
        if translator is not None:
            _add_translations(rows, translator, src, tgt, clips[src, tgt], round(seconds * sr))
    if translator is not None:
        for src in dict.fromkeys(s for s, _ in pairs):
            if src in model_domains:
                first = next(c for (s, _), c in clips.items() if s == src)
                _add_reconstructions(rows, translator, data, src, first, round(seconds * sr))
    if thresholds is None:
        cal = pd.DataFrame(rows.records).rename(columns={"condition": "row"})
        thresholds = thresholds_on_val(
            data, classifier, pairs, seed=seed, mu_law=mu_law,
            signals=cal[cal.row.isin(calibration.ROWS)] if split == THRESHOLD_SPLIT and with_calibration else None,
            **options)
    table = rows.table(Thresholds(**thresholds["values"]))
    probe, use = None, None
    if model is not None:
        probe, use = _latent_signals(model, data, split, sources, probe_seconds, probe_segments,
                                     gap_segments, gap_seconds, seed)
    settings = {
        "system": system, "split": split, "sources": sources, "targets": targets,
        "works": sorted(set(table.work)), "segments": segments, "seconds": seconds,
        "temperature": temperature, "seed": seed, "sample_rate": sr,
        "notes_against": "score" if data.notes is not None else "ground truth",
        "classifier_domains": classifier.domains,
    }
    return Evaluation(table, dict(classifier.report), settings, thresholds, probe, use,
                      rows.audio, classifier)


def _check_domains(data: EvalData, model_domains: list[str], sources: list[str],
                   targets: list[str]) -> None:
    """Every source and target a domain of both the model and the data, some target."""
    for d in (*sources, *targets):
        if d not in data.domains or d not in model_domains:
            raise ValueError(f"domain {d!r} must be a domain of both the model "
                             f"{model_domains} and the data {data.domains}")
    if not targets:
        raise ValueError(f"the model's domains {model_domains} share none with the data's "
                         f"{data.domains}: nothing to translate to")


def _add_translations(rows: _Rows, translator: Translator, src: str, tgt: str,
                      clips: list[PairedClip], length: int) -> None:
    out = translator(clips, src, [tgt])[tgt]
    for clip, audio in zip(clips, out, strict=True):
        rows.add("translation", src, tgt, clip, cut(as_audio(audio), 0, length))


def _add_reconstructions(rows: _Rows, translator: Translator, data: EvalData, src: str,
                         clips: list[PairedClip], length: int) -> None:
    """Each source clip decoded by its own domain's decoder, judged against the source
    (and the source domain's score)."""
    out = translator(clips, src, [src])[src]
    notes = data.notes
    for clip, audio in zip(clips, out, strict=True):
        others = [c for c in clips if c.work != clip.work][:3]
        own = PairedClip(clip.work, clip.start, clip.source, clip.source,
                         [c.source for c in others],
                         notes.events(clip.work, src) if notes is not None else None,
                         [notes.events(c.work, src) for c in others] if notes is not None else [])
        rows.add("reconstruction", src, src, own, cut(as_audio(audio), 0, length))


def _latent_signals(model, data: EvalData, split: str, domains: Sequence[str],
                    probe_seconds: float, probe_segments: int, gap_segments: int,
                    gap_seconds: float, seed: int):
    sr = data.sample_rate
    pool = model.config.model.pool
    length = max(int(probe_seconds * sr) // pool * pool, pool)
    held = data.split(split)
    segs, labels, groups = [], [], []
    by_domain: dict[str, list[np.ndarray]] = {}
    for d in domains:
        got: list[np.ndarray] = []
        per_file = max(1, math.ceil(probe_segments / max(len(held[d]), 1)))
        for p in held[d]:
            ws = windows(data.load(p), length, per_file)
            got += ws
            groups += [p.stem] * len(ws)
            if len(got) >= probe_segments:
                break
        extra = len(got) - probe_segments
        if extra > 0:
            got, groups = got[:probe_segments], groups[:len(groups) - extra]
        segs += got
        labels += [d] * len(got)
        by_domain[d] = got
    probe = None
    if len(set(labels)) >= 2:
        probe = latent_probe(latent_features(model, segs), labels, groups, seed=seed)
        probe["segment_seconds"] = length / sr
    gap_len = max(int(gap_seconds * sr) // pool * pool, pool)
    gap_clips = {d: [w[:gap_len] for w in by_domain[d][:gap_segments] if len(w) >= gap_len]
                 for d in domains if d in model.domains}
    use = latent_use_gap(model, gap_clips, seed=seed)
    return probe, use


def format_tables(ev: Evaluation) -> str:
    """Plain-text rendering of the summary, calibration, confusion and latent tables."""
    fmt = lambda v: f"{v:.3f}"
    s = ev.settings
    th = ev.thresholds
    parts = [(f"Split {s['split']} ({len(s['works'])} works x {s['segments']} segments of "
              f"{s['seconds']:g} s); notes against the {s['notes_against']}; temperature "
              f"{s['temperature']:g}"),
             "Thresholds chosen on " + th["chosen_on"] + ": " + ", ".join(
                 f"{k} {v:.3f}" + ("" if th["report"].get(k, {}).get("separates", True)
                                   else " (rows do NOT separate)")
                 for k, v in th["values"].items() if k in th["report"]),
             "", "Per condition (rates of the criteria, means of the signals):",
             ev.summary().to_string(index=False, float_format=fmt),
             "", "Pass rate of each criterion on each row (calibration rows beside the model):",
             ev.calibration_table().to_string(float_format=fmt)]
    tr = ev.rates()
    tr = tr[tr.condition == "translation"]
    if len(tr):
        parts += ["", "Translations, with 95% Wilson intervals:",
                  tr[["system", "criterion", "k", "n", "rate", "ci_low", "ci_high"]].to_string(
                      index=False, float_format=fmt),
                  "", "Translations: source (rows) x classifier verdict (columns):",
                  ev.confusion("translation").to_string()]
    c = ev.classifier
    if "heldout_accuracy" in c:
        parts += ["", (f"Instrument classifier over {c['domains']} (chance {c['chance']:.3f}): "
                       f"held-out accuracy {c['heldout_accuracy']:.3f} (with generation-like "
                       f"noise: {c['heldout_accuracy_noisy']:.3f})")]
    if ev.latent_probe:
        p = ev.latent_probe
        parts += [(f"Latent domain probe: accuracy {p['accuracy']:.3f} vs chance "
                  f"{p['chance']:.3f} (n={p['n']})")]
    if ev.latent_use is not None and len(ev.latent_use):
        parts += ["Latent-use gap (loss with shuffled latent - loss with true latent, nats):",
                  ev.latent_use.to_string(index=False, float_format=fmt)]
    return "\n".join(parts)


# ------------------------------------------------------------------ temperature


def run_temperature(checkpoint: str | Path) -> tuple[float, str]:
    """The sampling temperature to evaluate a checkpoint at, and where it comes from:
    the value chosen on validation for its run (`<run>/sampling.json`, written by
    `sweep_temperature`), else 1.0 (plain sampling)."""
    path = Path(checkpoint).resolve().parent.parent / SAMPLING_FILE
    if path.is_file():
        chosen = json.loads(path.read_text())
        return float(chosen["temperature"]), f"{path} (chosen on {chosen['chosen_on']})"
    return 1.0, "default (no temperature chosen for this run)"


def sweep_temperature(model, data: EvalData, temperatures: Sequence[float] = TEMPERATURES,
                      **options: Any) -> tuple[float, pd.DataFrame]:
    """Evaluate `model` on the validation works at each temperature (one classifier and
    one set of thresholds for all) and choose the one with the highest success rate,
    then notes kept against the score (or the truth), then the higher temperature (the
    plainer sampling). Returns the choice and one row per temperature."""
    options = {**options, "split": THRESHOLD_SPLIT}
    rows, shared = [], {}
    for t in temperatures:
        ev = evaluate(model, data, temperature=float(t), **options, **shared)
        # The calibration rows do not depend on the temperature: scored once.
        shared = {"classifier": ev.classifier_model, "thresholds": ev.thresholds,
                  "with_calibration": False}
        tr = ev.clips[ev.clips.condition == "translation"]
        notes = tr.notes_kept_score.where(tr.notes_kept_score.notna(), tr.notes_kept_truth)
        success = rate(tr.success.dropna().tolist())
        kept = bootstrap_mean(notes.to_numpy(float), tr.work.to_numpy(), seed=options.get("seed", 0))
        rows.append({"temperature": float(t), "success": success["rate"],
                     "success_ci_low": success["ci_low"], "success_ci_high": success["ci_high"],
                     "notes_kept": kept["mean"], "notes_kept_ci_low": kept["ci_low"],
                     "notes_kept_ci_high": kept["ci_high"], "instrument": tr.instrument.mean(),
                     "clean": tr.clean.mean(), "n": len(tr)})
    table = pd.DataFrame(rows)
    best = table.sort_values(["success", "notes_kept", "temperature"], ascending=False,
                             na_position="last").iloc[0]
    return float(best.temperature), table


def write_sampling(run_dir: str | Path, temperature: float, table: pd.DataFrame,
                   checkpoint: str | Path) -> Path:
    """Record the chosen temperature in the run directory: it becomes the run's
    evaluation default (`run_temperature`)."""
    path = Path(run_dir) / SAMPLING_FILE
    path.write_text(json.dumps({"temperature": temperature, "chosen_on": THRESHOLD_SPLIT,
                                "checkpoint": str(checkpoint),
                                "sweep": json.loads(table.to_json(orient="records"))},
                               indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- CLI


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="objective metrics of a model's translations",
                       description="Translate clips of the paired works of a prepared dataset "
                       "with a model and judge them beside calibration rows (instrument, clean, "
                       "notes kept, closer to the target); every file read is checked against "
                       "the dataset's lock.")
    p.add_argument("--checkpoint", required=True,
                   help="umt_core checkpoint (.pt): a run's checkpoints/last.pt or best.pt")
    p.add_argument("--manifest", default=None,
                   help="dataset manifest (None: the one the checkpoint's preset trains on: "
                        "data_manifests/scores-8k.yaml for cpu, data_manifests/scores.yaml "
                        "for paper, data/manifests/scores-smoke.yaml for smoke)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="works judged: test for the final figures, val for choices "
                        "(thresholds always come from val), test_alt for the test works "
                        "rendered with the other soundfont (generalisation)")
    p.add_argument("--sources", nargs="+", default=None, help="source domains (None: all)")
    p.add_argument("--targets", nargs="+", default=None, help="target domains (None: all)")
    p.add_argument("--works", type=positive_int, default=None,
                   help="paired works judged (None: all)")
    p.add_argument("--segments", type=positive_int, default=4, help="clips spread over each work")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per clip")
    p.add_argument("--temperature", type=non_negative_float, default=None,
                   help="sampling temperature, 0 = greedy (default: the run's chosen one, "
                        f"from <run>/{SAMPLING_FILE}, else 1.0)")
    p.add_argument("--sweep-temperature", action="store_true",
                   help=f"evaluate {', '.join(map(str, TEMPERATURES))} on val, choose one and "
                        f"record it in <run>/{SAMPLING_FILE}")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--json", required=True, help="write the results to this JSON file")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    out = output_file(resolve(args.json), "--json file")  # before any work
    checkpoint = resolve(args.checkpoint)
    model = load_model(checkpoint)
    if args.manifest is None:
        from .study.pipeline import default_manifest, preset_manifest

        args.manifest = preset_manifest(resolve("."), default_manifest(model.config.preset),
                                        model.config.preset, write=False)
    data = EvalData.from_manifest(resolve(args.manifest))
    options = {"sources": args.sources, "targets": args.targets, "works": args.works,
               "segments": args.segments, "seconds": args.seconds, "seed": args.seed,
               "system": Path(args.checkpoint).stem, "progress": True}
    if args.sweep_temperature:
        chosen, table = sweep_temperature(model, data, **options)
        path = write_sampling(checkpoint.parent.parent, chosen, table, args.checkpoint)
        out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "manifest": str(args.manifest),
                                   "split": THRESHOLD_SPLIT, "chosen": chosen,
                                   "sweep": json.loads(table.to_json(orient="records"))},
                                  indent=1, allow_nan=True) + "\n")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"\nchosen temperature {chosen:g} (on {THRESHOLD_SPLIT}); recorded in {path}\nwrote {out}")
        return 0
    temperature, origin = ((args.temperature, "--temperature") if args.temperature is not None
                           else run_temperature(checkpoint))
    ev = evaluate(model, data, split=args.split, temperature=temperature, **options)
    ev.settings["temperature_from"] = origin
    payload = {"checkpoint": str(args.checkpoint), "manifest": str(args.manifest), **ev.to_json()}
    out.write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    print(format_tables(ev))
    print(f"\nwrote {out}")
    return 0
