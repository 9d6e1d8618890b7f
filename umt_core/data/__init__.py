"""Datasets: the manifest (`manifest`), the prepared files with their lock and the
training audio (`store`), producing a dataset (`prepare`: `prep`, `verify`), rendering
scores (`render`) and sampling training segments (`sampling`)."""

from .manifest import SPLITS, DataError, Manifest, load_manifest, select_domains
from .prepare import prep, split_by_file, summary, verify
from .store import file_sha256, make_augmenter, read_checked, read_lock, split_files, training_data

__all__ = [
    "SPLITS", "DataError", "Manifest", "file_sha256", "load_manifest", "make_augmenter", "prep",
    "read_checked", "read_lock", "select_domains", "split_by_file", "split_files", "summary",
    "training_data", "verify",
]
