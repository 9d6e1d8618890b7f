"""Shared fixtures. Everything runs on CPU, on audio made in the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from umt_core.config import preset
from umt_core.device import exact_fp32 as exact_fp32_context

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Deterministic, two-core-friendly defaults.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def smoke_config():
    cfg = preset("smoke")
    cfg.domains = ["piano", "cello", "flute"]
    return cfg


def scratch_root(tmp_path: Path) -> Path:
    """A project root whose data/, runs/ and results/ are the test's own; everything
    else links to the repository. Point UMT_ROOT at it to run notebooks in it."""
    root = tmp_path / "project"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {"data", "runs", "results", ".git", ".venv", ".pytest_cache"}:
            (root / entry.name).symlink_to(entry)
    notes = REPO / "data" / ".cache" / "notes"  # parsed scores: parsing is prep's slow part
    if notes.is_dir():
        (root / "data" / ".cache").mkdir(parents=True)
        (root / "data" / ".cache" / "notes").symlink_to(notes)
    return root


@pytest.fixture
def one_thread():
    """Tiny ops on a shared 2-core machine: one thread is faster and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def exact_fp32():
    """Full fp32 products on CUDA (cuDNN convolutions default to TF32); no-op on CPU."""
    with exact_fp32_context():
        yield
