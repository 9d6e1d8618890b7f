"""Checkpoints of the reference implementation, read safely and converted exactly.

The reference (facebookresearch/music-translation) writes a checkpoint folder such as
the released ``pretrained_musicnet/``:

- ``args.pth``: ``[argparse.Namespace(...), epoch]``, the training arguments;
- ``lastmodel_<k>.pth`` (and ``bestmodel_<k>.pth``), one per domain k: a dict with
  ``encoder_state`` (the same in every file), ``decoder_state`` (decoder k),
  ``discriminator_state`` and the optimizer states.

Every file is read with ``torch.load(weights_only=True)``: only tensors and plain
containers, plus ``argparse.Namespace`` and ``pathlib.PosixPath`` for ``args.pth``.
A file that needs anything else is refused, since unpickling arbitrary objects can
run code. The state dicts load into `UMTN` by a key prefix only (``encoder.``,
``decoders.<k>.``, ``domain_classifier.``), and the reference's mu-law (truncating)
is recorded in the config, so a converted model sees exactly the codes it was
trained on.

    python -m umt_core convert-reference pretrained_musicnet/ models/musicnet.pt
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, save_checkpoint
from .config import Config, ModelConfig, preset
from .model import UMTN, copy_shared_weights
from .outputs import output_file

# Decoder order of the released pretrained MusicNet model.
MUSICNET_DOMAINS = [
    "Bach_Solo_Cello",
    "Beethoven_Solo_Piano",
    "Cambini_Wind_Quintet",
    "Bach_Solo_Piano",
    "Beethoven_Accompanied_Violin",
    "Beethoven_String_Quartet",
]

# args.pth field -> ModelConfig field. All of them must be present.
MODEL_FIELDS = {
    "encoder_blocks": "encoder_blocks",
    "encoder_layers": "encoder_layers",
    "encoder_channels": "encoder_channels",
    "latent_d": "latent_channels",
    "encoder_pool": "pool",
    "blocks": "decoder_blocks",
    "layers": "decoder_layers",
    "residual_channels": "residual_channels",
    "skip_channels": "skip_channels",
    "kernel_size": "decoder_kernel",
    "d_layers": "classifier_layers",
    "d_channels": "classifier_channels",
}
# args.pth field -> ModelConfig field, optional (the paper's value otherwise).
OPTIONAL_MODEL_FIELDS = {"p_dropout_discriminator": "classifier_dropout"}
# args.pth field -> TrainConfig field, optional: how the reference trained, kept so
# that fine-tuning starts from the same settings.
TRAIN_FIELDS = {
    "lr": "lr",
    "lr_decay": "lr_decay",
    "batch_size": "batch_per_domain",
    "seq_len": "segment_samples",
    "d_lambda": "confusion_weight",
    "grad_clip": "grad_clip",
    "epoch_len": "steps_per_epoch",
    "epochs": "epochs",
    "seed": "seed",
    "data_aug": "augment",
    "magnitude": "pitch_shift_semitones",
}
# Reference options this model implements in one way only.
FIXED_OPTIONS = {"encoder_func": "relu", "encoder_final_kernel_size": 1}

# Reference state-dict section -> UMTN attribute.
SECTIONS = {
    "encoder_state": "encoder",
    "decoder_state": "decoders",
    "discriminator_state": "domain_classifier",
}

SAFE_ARGS_GLOBALS = [argparse.Namespace, pathlib.PosixPath]
_DECODER_FILE = re.compile(r"^(last|best)model_(\d+)\.pth$")
_SHOW = 5  # how many offending keys an error lists


class ReferenceCheckpointError(CheckpointError):
    """A reference checkpoint that cannot be converted; the message names the file
    and says what to do."""


# ----------------------------------------------------------------------------- reading


def _safe_load(path: Path, what: str, allow: list[type] | None = None) -> Any:
    if not path.is_file():
        raise ReferenceCheckpointError(f"{path}: no such file")
    try:
        if allow:
            with torch.serialization.safe_globals(allow):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises several types
        reason = _load_failure(e)
        if "GLOBAL" in reason:
            raise ReferenceCheckpointError(
                f"{path}: refused to load this {what}: it holds objects that are not allowed "
                f"({reason}). Only tensors, plain containers and, in args.pth, "
                "argparse.Namespace and pathlib.PosixPath are accepted: anything else could "
                "run code while loading. Use the files as the reference implementation wrote "
                "them."
            ) from e
        raise ReferenceCheckpointError(
            f"{path}: cannot read this {what} ({reason}); is it a complete file written by "
            "torch.save?"
        ) from e


def _load_failure(e: Exception) -> str:
    """The informative part of a torch.load error, without its boilerplate advice."""
    keep = []
    for line in str(e).splitlines():
        line = line.split("WeightsUnpickler error:")[-1].strip()
        if line and not line.startswith(("Weights only load failed", "Check the documentation")):
            keep.append(line)
    return " ".join(keep)[:300] or e.__class__.__name__


def read_args(directory: str | Path) -> tuple[argparse.Namespace, int]:
    """``args.pth`` of a reference checkpoint folder: (training arguments, epoch)."""
    path = Path(directory) / "args.pth"
    if not path.is_file():
        raise ReferenceCheckpointError(
            f"{path}: missing. A reference checkpoint folder holds args.pth (the training "
            "arguments) next to lastmodel_<k>.pth; give the folder the reference wrote, "
            "e.g. pretrained_musicnet/"
        )
    data = _safe_load(path, "args.pth", SAFE_ARGS_GLOBALS)
    epoch: Any = 0
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], argparse.Namespace):
        args = data[0]
        epoch = data[1] if len(data) > 1 else 0
    elif isinstance(data, argparse.Namespace):
        args = data
    else:
        raise ReferenceCheckpointError(
            f"{path}: expected [argparse.Namespace, epoch] as the reference saves it, "
            f"found {type(data).__name__}"
        )
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        epoch = 0
    return args, epoch


def decoder_files(directory: str | Path, which: str = "last") -> list[Path]:
    """``<which>model_0.pth`` .. ``<which>model_<n-1>.pth``; an error names any gap."""
    directory = Path(directory)
    if which not in ("last", "best"):
        raise ReferenceCheckpointError(f"which must be 'last' or 'best', not {which!r}")
    found: dict[str, dict[int, Path]] = {"last": {}, "best": {}}
    for p in directory.iterdir() if directory.is_dir() else []:
        m = _DECODER_FILE.match(p.name)
        if m and p.is_file():
            found[m.group(1)][int(m.group(2))] = p
    files = found[which]
    if not files:
        other = "best" if which == "last" else "last"
        hint = (
            f" It has {other}model_<k>.pth files: convert with --which {other}."
            if found[other] else ""
        )
        raise ReferenceCheckpointError(
            f"{directory}: missing decoder files {which}model_<k>.pth (one per domain, "
            f"k = 0, 1, ...).{hint}"
        )
    n = max(files) + 1
    gaps = [k for k in range(n) if k not in files]
    if gaps:
        names = ", ".join(f"{which}model_{k}.pth" for k in gaps)
        raise ReferenceCheckpointError(
            f"{directory}: decoder files must be numbered 0..{n - 1} without gaps; missing "
            f"{names}. Copy every {which}model_<k>.pth of the run into the folder."
        )
    return [files[k] for k in range(n)]


def _domain_count(values: dict[str, Any]) -> int | None:
    n = values.get("n_datasets")
    if n is None and isinstance(values.get("data"), (list, tuple)):
        n = len(values["data"])
    return int(n) if n is not None else None


# ------------------------------------------------------------------------------ config


def config_from_args(args: argparse.Namespace | dict[str, Any], domains: list[str],
                     *, shared_decoder: bool = False, source: str = "args.pth") -> Config:
    """The `Config` of a model trained by the reference with these arguments.

    The preset is ``"paper"`` when the sizes are the paper's, else ``"reference"``;
    mu-law is always the reference's.
    """
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    missing = [k for k in MODEL_FIELDS if k not in values]
    if missing:
        raise ReferenceCheckpointError(
            f"{source}: lacks the model sizes {missing}; it does not look like the arguments "
            "of the reference's train.py"
        )
    for name, supported in FIXED_OPTIONS.items():
        if name in values and values[name] != supported:
            raise ReferenceCheckpointError(
                f"{source}: {name}={values[name]!r} is not supported (only {supported!r}, "
                "the reference default and the released model's setting)"
            )
    model_values = {ours: values[theirs] for theirs, ours in MODEL_FIELDS.items()}
    model_values.update({
        ours: values[theirs] for theirs, ours in OPTIONAL_MODEL_FIELDS.items() if theirs in values
    })
    model_values["shared_decoder"] = shared_decoder
    try:
        model_cfg = _typed(ModelConfig(), model_values)
    except (TypeError, ValueError) as e:
        raise ReferenceCheckpointError(f"{source}: unusable model sizes: {e}") from e

    paper = preset("paper")
    is_paper = model_cfg == paper.model
    cfg = copy.deepcopy(paper)
    cfg.preset = "paper" if is_paper else "reference"
    cfg.model = model_cfg
    cfg.mu_law = "reference"
    cfg.sample_rate = 16000
    cfg.domains = list(domains)
    train_values = {ours: values[theirs] for theirs, ours in TRAIN_FIELDS.items()
                    if values.get(theirs) is not None}
    try:
        cfg.train = _typed(cfg.train, train_values)
    except (TypeError, ValueError) as e:
        raise ReferenceCheckpointError(f"{source}: unusable training arguments: {e}") from e
    # The reference steps through domains one at a time; the converted config keeps
    # this project's default schedule (every decoder trained every step).
    return cfg


def _typed(obj, values: dict[str, Any]):
    """Copy of dataclass `obj` with `values` set, each cast to the field's type."""
    obj = copy.deepcopy(obj)
    for name, value in values.items():
        current = getattr(obj, name)
        if isinstance(current, bool):
            value = bool(value)
        elif isinstance(current, int):
            if float(value) != int(value):
                raise ValueError(f"{name}={value!r} is not a whole number")
            value = int(value)
        elif isinstance(current, float):
            value = float(value)
        setattr(obj, name, value)
    return obj


def default_domains(n: int) -> list[str]:
    """The released model's MusicNet names for six decoders, else domain_0, domain_1, ..."""
    if n == len(MUSICNET_DOMAINS):
        return list(MUSICNET_DOMAINS)
    return [f"domain_{k}" for k in range(n)]


def _check_domains(domains: list[str] | None, n: int) -> list[str]:
    if domains is None:
        return default_domains(n)
    domains = [d.strip() for d in domains]
    if len(domains) != n:
        raise ReferenceCheckpointError(
            f"{len(domains)} domain names given ({', '.join(domains)}) but the "
            f"model has {n} domains; give exactly {n}, in decoder order"
        )
    if any(not d for d in domains) or len(set(domains)) != n:
        raise ReferenceCheckpointError(f"domain names must be distinct and non-empty: {domains}")
    return domains


# ---------------------------------------------------------------------------- states


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    # A model saved while wrapped in DistributedDataParallel has "module." keys.
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_fits(state: Any, module: torch.nn.Module, what: str, source: str,
                cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ReferenceCheckpointError(f"{source}: {what} is not a state dict")
    state = _strip_module(state)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state and (not torch.is_tensor(state[k]) or tuple(state[k].shape) != expected[k])
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
        sizes = (
            f"encoder {cfg.encoder_blocks}x{cfg.encoder_layers}x{cfg.encoder_channels}, latent "
            f"{cfg.latent_channels}, pool {cfg.pool}; decoder {cfg.decoder_blocks}x"
            f"{cfg.decoder_layers}, residual {cfg.residual_channels}, skip {cfg.skip_channels}, "
            f"kernel {cfg.decoder_kernel}; classifier {cfg.classifier_layers}x"
            f"{cfg.classifier_channels}"
        )
        raise ReferenceCheckpointError(
            f"{source}: {what} does not fit the sizes in args.pth ({sizes}): "
            + "; ".join(parts)
            + ". Check that args.pth belongs to the same run as the model files."
        )
    return state


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    """None if equal, else the first key that differs."""
    if a.keys() != b.keys():
        return min(set(a) ^ set(b))
    for k, t in a.items():
        if t.shape != b[k].shape or not torch.equal(t, b[k]):
            return k
    return None


def model_from_reference_states(
    args: argparse.Namespace | dict[str, Any],
    states: list[dict[str, Any]],
    domains: list[str] | None = None,
    *,
    shared_decoder: bool = False,
    sources: list[str] | None = None,
) -> UMTN:
    """A `UMTN` (eval mode) from reference arguments and the per-decoder file contents
    (``states[k]`` = the dict of ``<which>model_k.pth``), already in memory.

    The encoder and domain classifier must be identical in every file. With
    `shared_decoder`, a single file holds the one decoder every domain used.
    """
    sources = sources or [f"decoder file {k}" for k in range(len(states))]
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    n_domains = _domain_count(values)
    if n_domains is None:
        raise ReferenceCheckpointError("args.pth: lacks n_datasets (the number of domains)")
    if not states:
        raise ReferenceCheckpointError("no decoder files given")
    n_files = 1 if shared_decoder else n_domains
    if len(states) != n_files:
        if shared_decoder:
            msg = f"a shared decoder comes from one file, {len(states)} were given"
        else:
            msg = (
                f"args.pth says n_datasets={n_domains} but there are {len(states)} decoder "
                f"files ({sources[0]} .. {sources[-1]}); each domain needs its own file"
            )
            if len(states) == 1:
                msg += (
                    ". If that run trained one decoder shared by all domains, convert with "
                    "--shared-decoder"
                )
        raise ReferenceCheckpointError(msg)
    domains = _check_domains(domains, n_domains)
    cfg = config_from_args(values, domains, shared_decoder=shared_decoder)
    model = UMTN(cfg)

    target: dict[str, torch.Tensor] = {}
    first: dict[str, dict[str, torch.Tensor]] = {}
    for k, (state, source) in enumerate(zip(states, sources)):
        if not isinstance(state, dict):
            raise ReferenceCheckpointError(f"{source}: expected a dict of state dicts")
        absent = [s for s in SECTIONS if s not in state]
        if absent:
            raise ReferenceCheckpointError(
                f"{source}: lacks {absent}; a reference model file holds encoder_state, "
                "decoder_state and discriminator_state"
            )
        for section, attr in SECTIONS.items():
            module = model.decoders[k] if attr == "decoders" else getattr(model, attr)
            sd = _check_fits(state[section], module, section, source, cfg.model)
            prefix = f"decoders.{k}." if attr == "decoders" else f"{attr}."
            if attr != "decoders":
                if k == 0:
                    first[section] = sd
                else:
                    key = _same_state(first[section], sd)
                    if key is not None:
                        raise ReferenceCheckpointError(
                            f"{source}: its {section} differs from the one in {sources[0]} "
                            f"(first at {key}); every file of one model shares the same "
                            f"{attr}, so these files come from different runs "
                            "or moments (bestmodel_<k>.pth files can be saved at different "
                            "epochs). Convert the lastmodel files (--which last) or files "
                            "written together."
                        )
                    continue
            target.update({prefix + name: t for name, t in sd.items()})
    model.load_state_dict(target, strict=True)
    return model.eval()


def load_reference(directory: str | Path, which: str = "last",
                   domains: list[str] | None = None, *,
                   shared_decoder: bool = False) -> tuple[UMTN, int]:
    """Read a reference checkpoint folder: (model in eval mode, epoch from args.pth)."""
    model, _, epoch = _read_folder(Path(directory), which, domains, shared_decoder)
    return model, epoch


def _read_folder(directory: Path, which: str, domains: list[str] | None,
                 shared_decoder: bool) -> tuple[UMTN, argparse.Namespace, int]:
    if not directory.is_dir():
        raise ReferenceCheckpointError(f"{directory}: no such checkpoint folder")
    args, epoch = read_args(directory)
    files = decoder_files(directory, which)
    n_domains = _domain_count(vars(args))
    if shared_decoder:
        files = files[:1]
    elif n_domains is not None and len(files) != n_domains:
        names = f"{files[0].name} .. {files[-1].name}" if len(files) > 1 else files[0].name
        lo, hi = sorted((len(files), n_domains))
        span = ", ".join(f"{which}model_{k}.pth" for k in range(lo, hi)[:_SHOW])
        span += ", ..." if hi - lo > _SHOW else ""
        detail = f"missing {span}" if len(files) < n_domains else f"{span} have no domain"
        hint = (
            "; if that run trained one decoder shared by all domains, convert with "
            "--shared-decoder" if len(files) == 1 else ""
        )
        raise ReferenceCheckpointError(
            f"{directory}: args.pth says n_datasets={n_domains} but the decoder files are "
            f"{names} ({len(files)}): {detail}{hint}"
        )
    states = []
    for path in files:
        state = _safe_load(path, "model file")
        if isinstance(state, dict):  # keep the weights, drop the optimizer states
            state = {k: v for k, v in state.items() if k in SECTIONS}
        states.append(state)
    model = model_from_reference_states(
        args, states, domains, shared_decoder=shared_decoder, sources=[str(p) for p in files],
    )
    return model, args, epoch


def _plain(value: Any) -> Any:
    """Arguments as values a weights_only load accepts (paths become strings)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def converted_state(directory: str | Path, which: str = "last",
                    domains: list[str] | None = None, *,
                    shared_decoder: bool = False) -> dict[str, Any]:
    """The umt_core checkpoint dict of a reference folder (for `save_checkpoint`):
    config, model, epoch (from args.pth), step 0, source and the reference arguments."""
    directory = Path(directory)
    model, args, epoch = _read_folder(directory, which, domains, shared_decoder)
    return {
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "epoch": epoch,
        "step": 0,
        "source": f"reference:{directory}",
        "reference_args": _plain(vars(args)),
    }


def convert_reference(directory: str | Path, out: str | Path, which: str = "last",
                      domains: list[str] | None = None, *,
                      shared_decoder: bool = False) -> dict[str, Any]:
    """Write a reference folder as one umt_core checkpoint; returns what was written."""
    state = converted_state(directory, which, domains, shared_decoder=shared_decoder)
    save_checkpoint(state, out)
    return state


# ------------------------------------------------------------------------ fine-tuning


def extend_domains(model: UMTN, new_domains: list[str], *, seed: int | None = None) -> UMTN:
    """A new `UMTN` with `model`'s encoder and decoders plus a fresh decoder for each
    new domain; the domain classifier's last layer gets fresh rows for them.

    This is the reference maintainers' recipe for adding a domain: keep the encoder
    (freeze it while training, e.g. ``model.encoder.requires_grad_(False)``) and
    train the new decoder. `seed` makes the new weights reproducible.
    """
    new_domains = [d.strip() for d in new_domains]
    clash = [d for d in new_domains if not d or d in model.domains]
    if clash or len(set(new_domains)) != len(new_domains) or not new_domains:
        raise ValueError(
            f"new domains must be distinct, non-empty and not already in {model.domains}: "
            f"{new_domains}"
        )
    cfg = copy.deepcopy(model.config)
    cfg.domains = list(model.domains) + new_domains
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        grown = UMTN(cfg)
    grown.to(next(model.parameters()).device)
    copy_shared_weights(model, grown)
    return grown.train(model.training)


# -------------------------------------------------------------------------------- CLI


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-reference",
        help="convert a reference checkpoint folder (e.g. pretrained_musicnet/) to umt_core",
        description=(
            "Read args.pth and <which>model_<k>.pth of a reference checkpoint folder safely "
            "and write one umt_core checkpoint that load_model, translate, evaluate and "
            "training load like their own. The model keeps the reference's mu-law."
        ),
    )
    p.add_argument("directory", type=Path, help="the reference checkpoint folder")
    p.add_argument("out", type=Path, help="the umt_core checkpoint to write (.pt)")
    p.add_argument("--which", choices=["last", "best"], default="last",
                   help="lastmodel_<k>.pth (default) or bestmodel_<k>.pth")
    p.add_argument("--domains", default=None,
                   help="comma-separated domain names in decoder order (None: the MusicNet "
                        "names for six decoders, else domain_0, domain_1, ...)")
    p.add_argument("--shared-decoder", action="store_true",
                   help="the run trained one decoder for every domain (one model file)")
    p.set_defaults(func=_cli_convert)


def _cli_convert(args: argparse.Namespace) -> int:
    domains = args.domains.split(",") if args.domains else None
    output_file(args.out, "converted checkpoint")  # before any work
    state = convert_reference(args.directory, args.out, args.which, domains,
                              shared_decoder=args.shared_decoder)
    cfg = state["config"]
    print(
        f"wrote {args.out}: {len(cfg['domains'])} domains ({', '.join(cfg['domains'])}), "
        f"preset {cfg['preset']}, mu-law {cfg['mu_law']}, epoch {state['epoch']}"
    )
    return 0
