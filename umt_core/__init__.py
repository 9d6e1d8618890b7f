"""umt_core: the tested core of a reproducible study of the Universal Music
Translation Network (Mor, Wolf, Polyak, Taigman, ICLR 2019)."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import Config, ModelConfig, TrainConfig, preset
from .model import UMTN

__all__ = [
    "UMTN",
    "Config",
    "ModelConfig",
    "TrainConfig",
    "load_checkpoint",
    "load_model",
    "preset",
    "save_checkpoint",
]
