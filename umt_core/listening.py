"""A blinded listening test in JupyterLab: stimuli, interface, safe answers, analysis.

`build_stimuli` writes a stimulus folder:

    audio/<id>.wav   one file per stimulus, under an id drawn at random on every build
    trials.json      what the interface shows: trial ids, the two clips' ids, the
                     instrument choices, the stimuli's content hash; nothing that
                     names a system

and the condition key (stimulus id -> system, source domain, target instrument, source
clip) as `<key_dir>/<content hash>.json`, outside the shareable results (e.g. under
runs/, which git ignores). Every answer records the content hash of the stimuli it
rated; the analysis refuses answers to other stimuli, and a rebuild over rated stimuli
keeps them or refuses, so an answer can never be attributed to another condition.

A trial plays clip A and clip B (the same source clip translated to the same target
instrument by two systems), asks which instrument plays in clip A, how good clip A
sounds (MOS, 1-5) and which of A and B is better. Every system is clip A once per
source clip and target (and clip B once), so identification and MOS are balanced and
the A/B position is counterbalanced. Each participant gets their own trial order,
seeded by their id.

`ListeningTest` is the ipywidgets interface: each answer is appended to a CSV the
moment it is given (flushed and fsynced, so a dead kernel loses nothing), and a
participant who reopens the notebook continues at their first unanswered trial.

`analyse` joins the answers with the key: identification accuracy with Wilson
confidence intervals, MOS with t intervals, both also with a bootstrap over
participants and stimuli, and preferences with a sign test, per system; simulated
answers give figures named `demo_...`. `demo_answers` writes a clearly labelled simulated answers file (participant
ids start with DEMO) so the analysis can be shown before real listeners take part.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .audio import save_audio
from .paths import write_text_atomic
from .statistics import wilson_interval

ANSWER_COLUMNS = ["participant", "stimuli", "trial", "position", "clip_a", "clip_b",
                  "instrument", "mos", "preferred", "time"]  # stimuli: their content hash
MOS_LABELS = ["1 bad", "2 poor", "3 fair", "4 good", "5 excellent"]
DEMO_PREFIX = "DEMO"


@dataclass
class Stimulus:
    """One clip a listener may hear. `system` (the condition) is never shown."""

    system: str
    source: str  # source domain
    target: str  # the instrument the clip should sound like
    clip: str  # source clip id (same notes across systems)
    audio: np.ndarray


# ------------------------------------------------------------------------ stimuli


def stimuli_from_evaluations(evaluations: Sequence[Any],
                             references: Sequence[str] = ("ground_truth",)) -> list[Stimulus]:
    """Stimuli from `umt_core.evaluate.Evaluation`s: each one's translations (named by
    its system) and, once, the reference conditions in `references` (e.g. the paired
    ground truth, or "source": the source itself) for the same clips and targets."""
    out: list[Stimulus] = []
    seen: set[tuple[str, str, str, str]] = set()
    for ev in evaluations:
        for (cond, src, clip, tgt), audio in ev.audio.items():
            if cond == "translation":
                system = ev.settings["system"]
            elif cond in references:
                system = cond
            else:
                continue
            if (system, src, clip, tgt) in seen:
                continue
            seen.add((system, src, clip, tgt))
            out.append(Stimulus(system, src, tgt, clip, audio))
    return out


def build_stimuli(stimuli: Sequence[Stimulus], out_dir: str | Path, sample_rate: int, *,
                  key_dir: str | Path, instruments: Sequence[str] | None = None,
                  n_trials: int | None = None, seed: int = 0,
                  answers_files: Sequence[str | Path] = (), keep_rated: bool = False) -> Path:
    """Write audio and trials.json into `out_dir` and the condition key into `key_dir`
    (outside the shareable results, e.g. under runs/) as `<stimuli hash>.json`.

    Stimulus ids are random on every build. Stimuli sharing (source, clip, target) are
    compared with each other; with k systems each one is clip A once, against the next
    system in a cyclic order. `n_trials` keeps a random subset of whole groups, so every
    kept pair is heard in both orders. An existing stimulus folder is replaced, unless
    an answers file in `answers_files` rated it: then it is kept (`keep_rated=True`) or
    the build refuses.
    """
    out = Path(out_dir)
    if not stimuli:
        raise ValueError("no stimuli to build a listening test from")
    instruments = list(instruments or sorted({s.target for s in stimuli}))
    missing = sorted({s.target for s in stimuli} - set(instruments))
    if missing:
        raise ValueError(f"target instruments {missing} are not among the choices {instruments}")
    rated = _rated_answers(out, answers_files)
    if rated:
        if keep_rated:
            return out
        raise ValueError(
            f"{out}: these stimuli were already rated ({rated}); rebuilding them would "
            "attribute those answers to other stimuli. Keep them (keep_rated=True), or move "
            "the answers file away before building new stimuli")
    rng = np.random.default_rng([seed, 4242])  # trial order; ids are random per build
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for old in (out / "audio").glob("*.wav"):
        old.unlink()

    ids: list[str] = []
    used: set[str] = set()
    for _ in stimuli:
        sid = secrets.token_hex(6)
        while sid in used:
            sid = secrets.token_hex(6)
        used.add(sid)
        ids.append(sid)
    key = {}
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, (sid, s) in enumerate(zip(ids, stimuli)):
        save_audio(out / "audio" / f"{sid}.wav", np.asarray(s.audio, dtype=np.float32), sample_rate)
        key[sid] = {"system": s.system, "source": s.source, "target": s.target, "clip": s.clip}
        groups.setdefault((s.source, s.clip, s.target), []).append(i)

    group_pairs = []
    for members in groups.values():
        members = sorted(members, key=lambda i: stimuli[i].system)
        group_pairs.append([])
        for j, i in enumerate(members):
            partner = members[(j + 1) % len(members)] if len(members) > 1 else None
            group_pairs[-1].append((ids[i], ids[partner] if partner is not None else None))
    # Whole groups, so a kept comparison is heard in both orders.
    chosen, pairs = rng.permutation(len(group_pairs)), []
    for g in chosen:
        if n_trials is not None and pairs and len(pairs) + len(group_pairs[g]) > int(n_trials):
            break
        pairs += group_pairs[g]
    order = rng.permutation(len(pairs))
    width = max(2, len(str(len(order))))
    trials = [{"trial": f"t{n + 1:0{width}d}", "clip_a": pairs[i][0], "clip_b": pairs[i][1]}
              for n, i in enumerate(order)]
    public = {"instruments": instruments, "sample_rate": sample_rate, "trials": trials}
    public["stimuli_sha256"] = _stimuli_hash(out, public)
    _write_json(out / "trials.json", public)
    key_path = Path(key_dir) / f"{public['stimuli_sha256']}.json"
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(key_path, {"seed": seed, "stimuli_sha256": public["stimuli_sha256"],
                           "stimuli": key})
    return out


def _stimuli_hash(folder: Path, public: Mapping[str, Any]) -> str:
    """Content hash of what a listener rates: the trials and every audio file."""
    h = hashlib.sha256(json.dumps({k: public[k] for k in ("instruments", "sample_rate", "trials")},
                                  sort_keys=True).encode())
    for wav in sorted((folder / "audio").glob("*.wav")):
        h.update(wav.name.encode())
        h.update(wav.read_bytes())
    return h.hexdigest()


def stimuli_hash(stimuli_dir: str | Path) -> str:
    """The content hash recorded in trials.json (checked against the files)."""
    folder = Path(stimuli_dir)
    public = load_trials(folder)
    recorded = public.get("stimuli_sha256")
    if recorded is None or recorded != _stimuli_hash(folder, public):
        raise ValueError(f"{folder}: the stimuli do not match their recorded hash "
                         "(changed or built by an older version); build them again")
    return recorded


def _rated_answers(folder: Path, answers_files: Sequence[str | Path]) -> str:
    """'N answers in F' for the answers that rated the stimuli now in `folder`."""
    if not (folder / "trials.json").is_file():
        return ""
    current = load_trials(folder).get("stimuli_sha256")
    found = []
    for f in answers_files:
        df = load_answers(f)
        n = int((df.stimuli == current).sum()) if len(df) else 0
        if n:
            found.append(f"{n} answers in {f}")
    return "; ".join(found)


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def load_trials(stimuli_dir: str | Path) -> dict[str, Any]:
    """The public part of a stimulus folder (what the interface may show)."""
    path = Path(stimuli_dir) / "trials.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no listening-test stimuli here; run build_stimuli")
    return json.loads(path.read_text())


def load_key(stimuli_dir: str | Path, key_dir: str | Path) -> dict[str, dict[str, str]]:
    """The condition key of these stimuli (found in `key_dir` by their content hash):
    stimulus id -> system, source, target, clip."""
    digest = stimuli_hash(stimuli_dir)
    path = Path(key_dir) / f"{digest}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the condition key of the stimuli in {stimuli_dir} "
                                "is missing (it stays where build_stimuli wrote it)")
    return json.loads(path.read_text())["stimuli"]


def participant_order(n: int, participant: str) -> list[int]:
    """The trial order of one participant: a permutation seeded by their id."""
    seed = int.from_bytes(hashlib.sha256(participant.encode()).digest()[:8], "little")
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def participant_trials(trials: Sequence[Mapping[str, Any]], participant: str) -> list[dict[str, Any]]:
    """One participant's trials in their own order. Balance comes from the build: every
    kept comparison is there in both orders (X as clip A against Y, and Y against X), so
    each participant hears every system as clip A equally often per pair."""
    return [dict(trials[i]) for i in participant_order(len(trials), participant)]


# ------------------------------------------------------------------------ answers


def append_answer(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one answer to the CSV and force it to disk (open, append, flush, fsync).
    The header is written when the file is new or empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unknown = set(row) - set(ANSWER_COLUMNS)
    if unknown:
        raise ValueError(f"unknown answer fields {sorted(unknown)}")
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != ANSWER_COLUMNS:
            raise ValueError(f"{path}: not a listening-test answers file (header {header})")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ANSWER_COLUMNS)
    if new:
        writer.writeheader()
    writer.writerow({c: row.get(c, "") for c in ANSWER_COLUMNS})
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def load_answers(path: str | Path) -> pd.DataFrame:
    """All answers; a trial answered twice by one participant keeps the last answer."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    df = pd.read_csv(path, dtype={"participant": str, "stimuli": str, "trial": str, "clip_a": str,
                                  "clip_b": str, "instrument": str, "preferred": str})
    missing = set(ANSWER_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: answers file lacks columns {sorted(missing)}")
    return df.drop_duplicates(["participant", "trial"], keep="last").reset_index(drop=True)


def answered_trials(path: str | Path, participant: str) -> set[str]:
    df = load_answers(path)
    return set(df.loc[df.participant == participant, "trial"])


# ---------------------------------------------------------------------- interface


class ListeningTest:
    """The ipywidgets interface for one participant; `widget` is what to display.

    It reads only trials.json and the audio, never the key. `submit` records an answer
    (the Submit button calls it with the widgets' values).
    """

    def __init__(self, stimuli_dir: str | Path, answers_file: str | Path, participant: str):
        participant = str(participant).strip()
        if not participant:
            raise ValueError("a participant id is needed (it seeds the trial order)")
        self.stimuli_dir = Path(stimuli_dir)
        self.answers_file = Path(answers_file)
        self.participant = participant
        public = load_trials(self.stimuli_dir)
        self.stimuli = stimuli_hash(self.stimuli_dir)
        self.instruments: list[str] = public["instruments"]
        self.trials = participant_trials(public["trials"], participant)
        done = answered_trials(self.answers_file, participant)
        self._done = [t["trial"] in done for t in self.trials]
        self._build()
        self._show()

    # --- state
    @property
    def position(self) -> int:
        """Index (in this participant's order) of the next unanswered trial."""
        return next((i for i, d in enumerate(self._done) if not d), len(self.trials))

    @property
    def finished(self) -> bool:
        return self.position >= len(self.trials)

    @property
    def current(self) -> dict[str, Any] | None:
        return None if self.finished else self.trials[self.position]

    def submit(self, instrument: str, mos: int, preferred: str | None) -> dict[str, Any]:
        """Record the answer to the current trial. `preferred` is "A" or "B" (None when
        the trial has no clip B)."""
        trial = self.current
        if trial is None:
            raise ValueError("every trial has been answered")
        if instrument not in self.instruments:
            raise ValueError(f"instrument must be one of {self.instruments}")
        if int(mos) not in range(1, 6):
            raise ValueError("the rating must be 1..5")
        if trial["clip_b"] is not None and preferred not in ("A", "B"):
            raise ValueError("say which clip is better: 'A' or 'B'")
        chosen = {"A": trial["clip_a"], "B": trial["clip_b"]}.get(preferred or "", "")
        row = {
            "participant": self.participant, "stimuli": self.stimuli, "trial": trial["trial"],
            "position": self.position,
            "clip_a": trial["clip_a"], "clip_b": trial["clip_b"] or "", "instrument": instrument,
            "mos": int(mos), "preferred": chosen or "",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        append_answer(self.answers_file, row)
        self._done[self.position] = True
        self._show()
        return row

    # --- widgets
    def _build(self) -> None:
        import ipywidgets as w  # on use: over a second to import (measured)

        self.header = w.HTML()
        self.audio_a = w.Audio(format="wav", autoplay=False, loop=False, controls=True)
        self.audio_b = w.Audio(format="wav", autoplay=False, loop=False, controls=True)
        self.box_b = w.VBox([w.HTML("<b>Clip B</b>"), self.audio_b])
        style = {"description_width": "initial"}
        self.instrument = w.ToggleButtons(options=self.instruments, value=None,
                                          description="Which instrument plays in clip A?",
                                          style=style)
        self.mos = w.ToggleButtons(options=list(zip(MOS_LABELS, range(1, 6))), value=None,
                                   description="How good does clip A sound?", style=style)
        self.preference = w.ToggleButtons(options=[("Clip A is better", "A"),
                                                   ("Clip B is better", "B")], value=None,
                                          description="Which clip is better?", style=style)
        self.button = w.Button(description="Submit and continue", button_style="primary",
                               layout=w.Layout(width="auto"))
        self.status = w.HTML()
        self.button.on_click(self._on_submit)
        self.questions = w.VBox([self.instrument, self.mos, self.preference, self.button])
        self.widget = w.VBox([
            self.header, w.HTML("<b>Clip A</b>"), self.audio_a, self.box_b, self.questions,
            self.status,
        ])

    def _audio_bytes(self, sid: str) -> bytes:
        return (self.stimuli_dir / "audio" / f"{sid}.wav").read_bytes()

    def _show(self) -> None:
        n = len(self.trials)
        if self.finished:
            self.header.value = f"<h3>All {n} trials done. Thank you!</h3>"
            self.audio_a.layout.display = "none"
            self.box_b.layout.display = "none"
            self.questions.layout.display = "none"
            self.status.value = ""
            return
        t = self.current
        self.header.value = f"<h3>Trial {self.position + 1} of {n}</h3>"
        self.audio_a.value = self._audio_bytes(t["clip_a"])
        has_b = t["clip_b"] is not None
        if has_b:
            self.audio_b.value = self._audio_bytes(t["clip_b"])
        self.box_b.layout.display = None if has_b else "none"
        self.preference.layout.display = None if has_b else "none"
        self.instrument.value = None
        self.mos.value = None
        self.preference.value = None

    def _on_submit(self, _button=None) -> None:
        t = self.current
        if t is None:
            return
        missing = [name for name, v in (("instrument", self.instrument.value),
                                        ("rating", self.mos.value)) if v is None]
        if t["clip_b"] is not None and self.preference.value is None:
            missing.append("preference")
        if missing:
            self.status.value = f"<i>Please answer: {', '.join(missing)}.</i>"
            return
        self.submit(self.instrument.value, self.mos.value, self.preference.value)
        self.status.value = "<i>Saved.</i>"


# ----------------------------------------------------------------------- analysis


@dataclass
class ListeningResults:
    identification: pd.DataFrame
    mos: pd.DataFrame
    preference: pd.DataFrame
    preference_by_system: pd.DataFrame
    answers: pd.DataFrame
    demo: bool

    def key_figures(self) -> dict[str, float | str | bool]:
        """Headline figures; every name starts with `demo_` when the answers are simulated,
        so a demo figure can never pass for data in metrics.json or the report."""
        p = "demo_listening" if self.demo else "listening"
        out: dict[str, float | str | bool] = {"listening_demo": self.demo,
                                              f"{p}_answers": len(self.answers),
                                              f"{p}_participants":
                                                  int(self.answers.participant.nunique())}
        for r in self.identification.to_dict("records"):
            out[f"{p}_{r['system']}_identification"] = r["accuracy"]
        for r in self.mos.to_dict("records"):
            out[f"{p}_{r['system']}_mos"] = r["mean"]
        for r in self.preference_by_system.to_dict("records"):
            out[f"{p}_{r['system']}_preferred_share"] = r["share"]
        return out


def score(answers: pd.DataFrame, stimuli_dir: str | Path, key_dir: str | Path) -> pd.DataFrame:
    """Answers joined with the condition key: one row per answer. Answers given to other
    stimuli (another content hash) are refused, never re-attributed."""
    digest = stimuli_hash(stimuli_dir)
    foreign = answers[answers.stimuli.astype(str) != digest] if len(answers) else answers
    if len(foreign):
        raise ValueError(f"{len(foreign)} answers rated other stimuli than those in {stimuli_dir} "
                         f"(hash {str(foreign.stimuli.iloc[0])[:12]}..., these are {digest[:12]}...); "
                         "analyse them with the stimuli they rated")
    key = load_key(stimuli_dir, key_dir)
    unknown = set(answers.clip_a) - set(key)
    if unknown:
        raise ValueError(f"answers refer to stimuli not in {stimuli_dir}: {sorted(unknown)[:3]}")
    rows = []
    for r in answers.to_dict("records"):
        a = key[r["clip_a"]]
        b = key.get(r["clip_b"]) if isinstance(r["clip_b"], str) and r["clip_b"] else None
        pref = r["preferred"] if isinstance(r["preferred"], str) and r["preferred"] else None
        rows.append({
            "participant": r["participant"], "trial": r["trial"], "clip_a": r["clip_a"],
            "system_a": a["system"],
            "system_b": b["system"] if b else None, "target": a["target"],
            "instrument": r["instrument"], "correct": r["instrument"] == a["target"],
            "mos": float(r["mos"]),
            "preferred_system": key[pref]["system"] if pref else None,
            "other_system": (b["system"] if pref == r["clip_a"] else a["system"]) if pref and b
            else None,
        })
    return pd.DataFrame(rows)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean (NaN with fewer than 2 values)."""
    from scipy.stats import t  # on use: scipy.stats takes seconds (measured)

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def sign_test(wins: int, n: int) -> float:
    """Two-sided sign test p-value of `wins` out of `n` against 1/2."""
    from scipy.stats import binomtest  # on use: scipy.stats takes seconds (measured)

    return float(binomtest(int(wins), int(n), 0.5).pvalue) if n else float("nan")


def analyse(answers: pd.DataFrame | str | Path, stimuli_dir: str | Path, key_dir: str | Path,
            confidence: float = 0.95) -> ListeningResults:
    """Identification accuracy (Wilson CI), MOS (t CI) and preferences (sign test) per
    system, and for accuracy and MOS a bootstrap interval over participants and stimuli
    together (`boot_low`, `boot_high`: answers are not independent draws)."""
    from .statistics import bootstrap_crossed

    if not isinstance(answers, pd.DataFrame):
        answers = load_answers(answers)
    scored = score(answers, stimuli_dir, key_dir)
    instruments = load_trials(stimuli_dir)["instruments"]
    ident, mos = [], []
    for system, g in (scored.groupby("system_a", sort=True) if len(scored) else []):
        k, n = int(g.correct.sum()), len(g)
        lo, hi = wilson_interval(k, n, confidence)
        b = bootstrap_crossed(g.correct.astype(float), g.participant, g.clip_a, confidence=confidence)
        ident.append({"system": system, "n": n, "correct": k, "accuracy": k / n,
                      "ci_low": lo, "ci_high": hi, "boot_low": b["ci_low"],
                      "boot_high": b["ci_high"], "chance": 1 / len(instruments)})
        lo, hi = mean_interval(g.mos, confidence)
        b = bootstrap_crossed(g.mos, g.participant, g.clip_a, confidence=confidence)
        mos.append({"system": system, "n": n, "mean": float(g.mos.mean()),
                    "std": float(g.mos.std(ddof=1)) if n > 1 else float("nan"),
                    "ci_low": lo, "ci_high": hi, "boot_low": b["ci_low"],
                    "boot_high": b["ci_high"]})
    prefs = scored.dropna(subset=["preferred_system"]) if len(scored) else scored
    pairwise, by_system = [], []
    if len(prefs):
        pair = prefs.apply(lambda r: tuple(sorted((r.preferred_system, r.other_system))), axis=1)
        for (s1, s2), g in prefs.groupby(pair, sort=True):
            w1 = int((g.preferred_system == s1).sum())
            pairwise.append({"system_1": s1, "system_2": s2, "n": len(g), "wins_1": w1,
                             "wins_2": len(g) - w1, "share_1": w1 / len(g),
                             "p_value": sign_test(w1, len(g))})
        for s in sorted(set(prefs.preferred_system) | set(prefs.other_system)):
            involved = prefs[(prefs.preferred_system == s) | (prefs.other_system == s)]
            wins = int((involved.preferred_system == s).sum())
            lo, hi = wilson_interval(wins, len(involved), confidence)
            by_system.append({"system": s, "comparisons": len(involved), "wins": wins,
                              "share": wins / len(involved), "ci_low": lo, "ci_high": hi,
                              "p_value": sign_test(wins, len(involved))})
    demo = bool(len(answers)) and answers.participant.astype(str).str.startswith(DEMO_PREFIX).all()
    return ListeningResults(
        identification=pd.DataFrame(ident, columns=["system", "n", "correct", "accuracy",
                                                    "ci_low", "ci_high", "boot_low",
                                                    "boot_high", "chance"]),
        mos=pd.DataFrame(mos, columns=["system", "n", "mean", "std", "ci_low", "ci_high",
                                       "boot_low", "boot_high"]),
        preference=pd.DataFrame(pairwise, columns=["system_1", "system_2", "n", "wins_1",
                                                   "wins_2", "share_1", "p_value"]),
        preference_by_system=pd.DataFrame(by_system, columns=["system", "comparisons", "wins",
                                                              "share", "ci_low", "ci_high",
                                                              "p_value"]),
        answers=answers, demo=bool(demo),
    )


# --------------------------------------------------------------------------- demo


def demo_answers(stimuli_dir: str | Path, answers_file: str | Path, key_dir: str | Path, *,
                 participants: int = 4, quality: Mapping[str, float] | None = None,
                 seed: int = 0) -> Path:
    """Write a SIMULATED answers file (participants DEMO-01, ...), replacing the file.

    Each simulated listener answers every trial in their own order. A system's quality
    q in [0, 1] (default 0.9 for "ground_truth", 0.5 otherwise) sets the chance of naming
    the right instrument (chance level + (1 - chance) q), the rating (about 1 + 4 q) and
    the preference (logistic in the quality difference). These are not data.
    """
    key = load_key(stimuli_dir, key_dir)
    digest = stimuli_hash(stimuli_dir)
    public = load_trials(stimuli_dir)
    instruments, trials = public["instruments"], public["trials"]
    quality = dict(quality or {})

    def q(system: str) -> float:
        return float(quality.get(system, 0.9 if system == "ground_truth" else 0.5))

    rng = np.random.default_rng([seed, 99])
    path = Path(answers_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    for p in range(participants):
        pid = f"{DEMO_PREFIX}-{p + 1:02d}"
        for pos, t in enumerate(participant_trials(trials, pid)):
            a = key[t["clip_a"]]
            chance = 1 / len(instruments)
            if rng.random() < chance + (1 - chance) * q(a["system"]):
                instrument = a["target"]
            else:
                instrument = str(rng.choice([x for x in instruments if x != a["target"]]
                                            or instruments))
            mos = int(np.clip(np.rint(1 + 4 * q(a["system"]) + rng.normal(0, 0.7)), 1, 5))
            preferred = ""
            if t["clip_b"]:
                b = key[t["clip_b"]]
                p_a = 1 / (1 + np.exp(-6 * (q(a["system"]) - q(b["system"]))))
                preferred = t["clip_a"] if rng.random() < p_a else t["clip_b"]
            append_answer(path, {
                "participant": pid, "stimuli": digest, "trial": t["trial"], "position": pos,
                "clip_a": t["clip_a"], "clip_b": t["clip_b"] or "", "instrument": instrument,
                "mos": mos, "preferred": preferred,
                "time": (start + dt.timedelta(minutes=pos)).isoformat(timespec="seconds"),
            })
    return path
