"""Reading checkpoint files safely and recognising their format (see the package docstring)."""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from albef_plugin.errors import UserError

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "CheckpointContents", "HARMLESS_GLOBALS",
    "FORMAT_OWN", "FORMAT_OFFICIAL_PRETRAIN", "FORMAT_OFFICIAL_FINETUNED", "FORMAT_STATE_DICT",
    "TEXT_FORM_OFFICIAL", "TEXT_FORM_WITH_SEP", "SAFETENSORS_NAME", "CONFIG_NAME",
    "safe_torch_load", "read_checkpoint", "detect_format",
]

logger = logging.getLogger(__name__)

FORMAT_OWN = "albef_plugin"
FORMAT_OFFICIAL_PRETRAIN = "albef_official_pretrain"
FORMAT_OFFICIAL_FINETUNED = "albef_official_finetuned"
FORMAT_STATE_DICT = "state_dict"

TEXT_FORM_OFFICIAL = "official"    # "[CLS] text", no trailing [SEP] (official tokenizer)
TEXT_FORM_WITH_SEP = "with_sep"    # "[CLS] text [SEP]" (Hugging Face / LAVIS)

SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"

# Objects found in real checkpoints that are safe to rebuild: plain records and numpy
# scalars / arrays (official ALBEF and DeiT files store their config / args next to the
# weights). Loading them runs no code beyond constructing these types.
_NUMPY_GLOBALS: List[Any] = []
try:  # numpy is optional; files that need it are refused with the usual message without it
    import numpy as _np

    _multiarray = _np._core.multiarray if hasattr(_np, "_core") else _np.core.multiarray
    _NUMPY_GLOBALS = [
        (_multiarray.scalar, "numpy.core.multiarray.scalar"), _multiarray.scalar,
        (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), _multiarray._reconstruct,
        _np.ndarray, _np.dtype,
        *[type(_np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")],
    ]
except (ImportError, AttributeError):  # pragma: no cover - numpy absent or reorganised
    pass
HARMLESS_GLOBALS: List[Any] = [argparse.Namespace, *_NUMPY_GLOBALS]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used; the message says which file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs full unpickling (it may run code) and that was not allowed."""


@dataclass
class CheckpointContents:
    """A checkpoint read into memory: the weights, their format and any metadata
    (``text_form``, ``model``, ``model_config``, ``image_size`` ...)."""

    state_dict: Dict[str, torch.Tensor]
    format: str
    metadata: Dict[str, Any] = field(default_factory=dict)
    source: str = "<state dict>"


# ----------------------------------------------------------------------------- reading
def safe_torch_load(path: Union[str, Path], allow_unsafe_pickle: bool = False) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``, refusing unsafe files.

    Args:
        path: the file.
        allow_unsafe_pickle: for trusted files only: fall back to ``weights_only=False``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file pickles Python objects beyond tensors, containers and
            :data:`HARMLESS_GLOBALS`, and ``allow_unsafe_pickle`` is off.
        CheckpointError: the file is not a readable torch checkpoint.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path!r} is empty (0 bytes): an interrupted copy or write? Use "
                              f"another checkpoint.")
    try:
        with torch.serialization.safe_globals(HARMLESS_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _is_intact_pickle(path):  # garbage: never suggest unsafe loading for it
            raise CheckpointError(
                f"{path!r} is not a readable torch checkpoint: its content is neither a torch "
                f"zip archive nor a valid pickle (corrupt, truncated or another format). Use "
                f"another copy of the file.") from error
        if not allow_unsafe_pickle:
            raise UnsafeCheckpointError(
                f"{path!r} contains Python objects that torch.load(weights_only=True) refuses "
                f"to unpickle: unpickling them could run arbitrary code. If you trust this file, "
                f"allow it explicitly: checkpoint.allow_unsafe_pickle=true (trainer resume "
                f"files), model_config.<model>.allow_unsafe_pickle=true (the model's checkpoint "
                f"and pretrained weights) or allow_unsafe_pickle=True (load_checkpoint, "
                f"load_model_and_preprocess). (torch said: {_first_line(error)})"
            ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path!r} is not a readable torch checkpoint (truncated or another "
                              f"format?): {_first_line(error)}") from error
    logger.warning("loading %s with weights_only=False (unsafe pickle explicitly allowed)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _is_intact_pickle(path: str) -> bool:
    """Whether ``path`` holds a well-formed pickle (a torch zip's ``data.pkl``, or a legacy /
    plain pickle stream), judged by parsing its opcodes without executing any.

    Tells a real file with objects ``weights_only`` refuses (it may be trusted and loaded
    unsafely) from garbage (random bytes, a truncated or foreign file).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return False
                stream: Any = io.BytesIO(archive.read(names[0]))
        else:
            stream = open(path, "rb")
        with stream:
            opcodes = [op.name for op, _, _ in pickletools.genops(stream)]
    except Exception:  # unknown opcode, truncated stream, bad zip: not a pickle
        return False
    return len(opcodes) > 2 and opcodes[0] == "PROTO" and opcodes[-1] == "STOP"


def _read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, metadata


def _read_folder_config(folder: Path) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return {}
    loaded = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    return dict(loaded) if isinstance(loaded, dict) else {}


def _text_form_of_training_config(config: Any) -> Optional[str]:
    """The text form a trainer checkpoint was trained with (from its datasets' text processors)."""
    if not isinstance(config, Mapping):
        return None
    forms = set()
    for dataset in (config.get("dataset_config") or {}).values():
        try:
            add_sep = dataset["processors"]["text"]["params"].get("add_sep", False)
        except (KeyError, TypeError, AttributeError):
            continue
        forms.add(TEXT_FORM_WITH_SEP if add_sep else TEXT_FORM_OFFICIAL)
    return forms.pop() if len(forms) == 1 else None


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """``albef_official_pretrain`` / ``albef_official_finetuned`` / ``state_dict`` from keys."""
    keys = list(state_dict)
    if any(k.startswith(("text_encoder.bert.", "module.text_encoder.bert.")) for k in keys):
        return FORMAT_OFFICIAL_PRETRAIN
    if any(k.startswith(("text_encoder.embeddings.", "module.text_encoder.embeddings."))
           for k in keys):
        return FORMAT_OFFICIAL_FINETUNED
    return FORMAT_STATE_DICT


def _tensors_only(mapping: Mapping[str, Any], source: str) -> Dict[str, torch.Tensor]:
    tensors = {k: v for k, v in mapping.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source} holds no tensors: expected a state dict, a dict with a "
                              f"'model' state dict, or a safetensors file.")
    return tensors


def read_checkpoint(source: Union[str, Path, Mapping[str, Any], "CheckpointContents"],
                    allow_unsafe_pickle: bool = False) -> CheckpointContents:
    """Read weights and metadata from a file, a converted folder or an in-memory dict
    (a :class:`CheckpointContents` already read is returned as it is)."""
    if isinstance(source, CheckpointContents):
        return source
    if isinstance(source, Mapping):
        return _contents_of_payload(source, "<state dict>")
    path = Path(source).expanduser()
    metadata: Dict[str, Any] = {}
    if path.is_dir():
        weights = path / SAFETENSORS_NAME
        if not weights.is_file():
            raise CheckpointError(f"checkpoint folder {str(path)!r} has no {SAFETENSORS_NAME}; "
                                  f"give a folder written by tools/convert_checkpoint.py or a "
                                  f"checkpoint file (.pth, .ckpt, .safetensors).")
        folder_config = _read_folder_config(path)
        metadata.update(folder_config.get("pretrained_cfg") or {})
        for key in ("model", "model_config"):
            if key in folder_config:
                metadata[key] = folder_config[key]
        path = weights
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        tensors, file_metadata = _read_safetensors(str(path))
        if "pretrained_cfg" in file_metadata:
            metadata = {**json.loads(file_metadata["pretrained_cfg"]), **metadata}
        own_file = file_metadata.get("format") == FORMAT_OWN
        return CheckpointContents(tensors, FORMAT_OWN if own_file else detect_format(tensors),
                                  metadata, str(path))
    payload = safe_torch_load(path, allow_unsafe_pickle)
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(payload).__name__}, not a state "
                              f"dict or a dict with a 'model' state dict.")
    contents = _contents_of_payload(payload, str(path))
    contents.metadata = {**contents.metadata, **metadata}
    return contents


def _contents_of_payload(payload: Mapping[str, Any], source: str) -> CheckpointContents:
    if "format_version" in payload and isinstance(payload.get("model"), Mapping):
        config = payload.get("config") or {}
        metadata: Dict[str, Any] = {}
        if isinstance(config, Mapping) and config.get("model"):
            metadata["model"] = config["model"]
            model_configs = config.get("model_config") or {}
            if config["model"] in model_configs:
                metadata["model_config"] = model_configs[config["model"]]
        text_form = _text_form_of_training_config(config)
        if text_form:
            metadata["text_form"] = text_form
        return CheckpointContents(_tensors_only(payload["model"], source), FORMAT_OWN, metadata,
                                  source)
    for key in ("model", "state_dict"):
        if isinstance(payload.get(key), Mapping):
            state = _tensors_only(payload[key], f"{source} ['{key}']")
            return CheckpointContents(state, detect_format(state), {}, source)
    state = _tensors_only(payload, source)
    return CheckpointContents(state, detect_format(state), {}, source)
