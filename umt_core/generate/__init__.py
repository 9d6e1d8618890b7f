"""Autoregressive generation and translation: the API (`api`), the per-sample step
backends (`steps`: eager, torch, CUDA graph) and the compiled CPU kernel (`cpu`, with
its C++ source `wavenet_step.cpp`)."""

from .api import (
    DEFAULT_CHUNK,
    METHODS,
    IncrementalDecoder,
    encode,
    generate,
    reconstruct,
    resolve_method,
    teacher_forced_logits,
    translate,
)

__all__ = [
    "DEFAULT_CHUNK", "METHODS", "IncrementalDecoder", "encode", "generate", "reconstruct",
    "resolve_method", "teacher_forced_logits", "translate",
]
