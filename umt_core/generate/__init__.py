"""Autoregressive generation and translation: translation (`api`, `chunked`), incremental sampling and encoding (`incremental`), the per-sample step
backends (`steps`: eager, torch, CUDA graph) and the compiled CPU kernel (`cpu`, with
its C++ source `wavenet_step.cpp`)."""

from .api import reconstruct, translate
from .incremental import (
    DEFAULT_CHUNK,
    METHODS,
    IncrementalDecoder,
    encode,
    generate,
    resolve_method,
    teacher_forced_logits,
)

__all__ = [
    "DEFAULT_CHUNK", "METHODS", "IncrementalDecoder", "encode", "generate", "reconstruct",
    "resolve_method", "teacher_forced_logits", "translate",
]
