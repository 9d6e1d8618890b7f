"""The one checkpoint format of umt_core, written atomically and loaded safely.

A checkpoint is a dict of plain Python values and tensors (so it loads with
``torch.load(weights_only=True)`` and no allow-list at all):

    format: "umt_core.checkpoint", version: 1
    config: Config.to_dict()          (domains included)
    model: UMTN.state_dict()
    ... whatever training adds: optimizers, schedulers, epoch, step, rng, sampler,
        best_val, source (e.g. "reference:<dir>")

A run's ``last.pt`` / ``best.pt`` and a file converted from a reference checkpoint
all have this shape, so `load_model` loads any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import Config
from .model import UMTN
from .paths import atomic_path

FORMAT = "umt_core.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable umt_core checkpoint; the message says what to do."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never half of
    one. Refuses to write non-finite model weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_state = state.get("model", {})
    for name, t in model_state.items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"refusing to save {path}: parameter {name} is not finite")
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_path(path, durable=True) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a umt_core checkpoint with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        if (path / "args.pth").is_file() or any(path.glob("*model_*.pth")):
            raise CheckpointError(
                f"{path}: is a folder of the reference implementation (args.pth, "
                f"lastmodel_<k>.pth), not a umt_core checkpoint; convert it once with "
                f"`python -m umt_core convert-reference {path} OUT.pt` and pass OUT.pt")
        raise CheckpointError(f"{path}: is a folder; give a checkpoint file, e.g. "
                              f"{path / 'checkpoints' / 'last.pt'}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be loaded safely as a umt_core checkpoint ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). If it is a file of the reference "
            "implementation (lastmodel_<k>.pth), convert its folder first: "
            "python -m umt_core convert-reference DIR OUT.pt"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        hint = ""
        if isinstance(state, dict) and "decoder_state" in state:
            hint = " It looks like a reference checkpoint: python -m umt_core convert-reference DIR OUT.pt"
        raise CheckpointError(f"{path}: not a umt_core checkpoint.{hint}")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')} is not supported "
            f"(this umt_core reads version {VERSION})"
        )
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    for name, t in state["model"].items() if isinstance(state["model"], dict) else ():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(
                f"{path}: weight {name} holds NaN or infinite values; the model would "
                "produce noise. Use an earlier checkpoint (best.pt, step_<n>.pt)")
    return state


def model_from_state(state: dict[str, Any], source: str = "checkpoint") -> UMTN:
    try:
        cfg = Config.from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: config is not compatible with this umt_core: {e}") from e
    model = UMTN(cfg)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit its config: {e}") from e
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> UMTN:
    """A ready `UMTN` in eval mode, with `.config` and `.domains`, from any umt_core
    checkpoint (a run's last.pt / best.pt or a converted reference model)."""
    model = model_from_state(load_checkpoint(path, map_location), str(path))
    return model.eval()
