"""The headline figures of a study run as its pages show them: which of notebook 04's
and 02's figures, and how a figure and its interval are written."""

from __future__ import annotations

import html
from typing import Any

# (label, metric suffix in notebook 04's figures, kind): the table's rows.
ROWS = [
    ("notes kept (vs the score; 0 = wrong notes, 1 = the real rendering)",
     "translation_notes_kept_score", "mean"),
    ("classified as the target instrument", "translation_instrument", "rate"),
    ("closer to the target's rendering than to the source", "translation_closer_to_target", "rate"),
    ("clean (noise floor below the calibrated bar)", "translation_clean", "rate"),
    ("success (all four)", "translation_success", "rate"),
]
LATENT_ROWS = [("latent probe accuracy (chance in the next row)", "latent_probe_accuracy"),
               ("latent probe chance", "latent_probe_chance"),
               ("latent-use gap (0 = the decoders ignore the latent)", "latent_use_gap")]
TRAIN_ROWS = [("training steps", "steps"), ("training minutes", "train_minutes"),
              ("best validation loss", "best_val_recon")]


def model_figure(figures: dict[str, Any], suffix: str) -> tuple[Any, Any, Any] | None:
    """(value, interval low, interval high) of the model's figure ending in `suffix`
    (notebook 04 names a model's figures "<model>_<condition>_<criterion>"); None when
    there is none."""
    keys = [k for k in figures if k.endswith("_" + suffix) and not k.startswith("ground_truth")]
    if not keys:
        return None
    key = keys[0]
    return figures[key], figures.get(f"{key}_ci_low"), figures.get(f"{key}_ci_high")


def format_figure(found: tuple[Any, Any, Any] | None, kind: str) -> str:
    """"value [low, high]": rates with 2 decimals, means with 3."""
    if found is None:
        return "-"
    value, low, high = found
    if not isinstance(value, int | float):
        return html.escape(str(value))
    digits = 2 if kind == "rate" else 3
    text = f"{value:.{digits}f}"
    if isinstance(low, int | float) and isinstance(high, int | float):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text
