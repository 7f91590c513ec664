"""Reading and checking the official ALBEF annotation JSON files.

Formats (official ``dataset/*.py``):

- pretrain: ``[{"image": path, "caption": str | [str, ...]}, ...]``
- re_train: ``[{"image": rel_path, "caption": str, "image_id": str | int}, ...]``, one row per caption
- re_eval:  ``[{"image": rel_path, "caption": [str, ...]}, ...]``, one row per image

Every entry is checked when the file is loaded, so a malformed file fails at start-up
with the file, the entry index and the field, not hours later inside a DataLoader worker.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

from albef_plugin.errors import UserError
from albef_plugin.processors.text import pre_caption

__all__ = ["AnnotationError", "load_annotations", "read_json_list", "resolve_image_path",
           "check_object", "required_field", "bad_field",
           "PRETRAIN_FIELDS", "RE_TRAIN_FIELDS", "RE_EVAL_FIELDS"]

PathLike = Union[str, "os.PathLike[str]"]


class AnnotationError(UserError, ValueError):
    """An annotation file is missing, not JSON, or has an entry of the wrong shape."""


# field -> (accepted kinds, description for the error message). Kinds: "str", "str_list", "id".
FieldSpec = Dict[str, Tuple[Tuple[str, ...], str]]

PRETRAIN_FIELDS: FieldSpec = {
    "image": (("str",), "an image path (absolute, or relative to image_root)"),
    "caption": (("str", "str_list"), "a caption string or a non-empty list of caption strings"),
}
RE_TRAIN_FIELDS: FieldSpec = {
    "image": (("str",), "an image path relative to image_root"),
    "caption": (("str",), "one caption string"),
    "image_id": (("id",), "an image id (string or integer)"),
}
RE_EVAL_FIELDS: FieldSpec = {
    "image": (("str",), "an image path relative to image_root"),
    "caption": (("str_list",), "a non-empty list of caption strings"),
}


def _matches(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "str_list":
        return (isinstance(value, list) and len(value) > 0
                and all(isinstance(v, str) for v in value))
    if kind == "id":
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    raise AssertionError(f"unknown field kind {kind!r}")


def check_object(entry: Any, index: int, path: PathLike, expected: str) -> Dict[str, Any]:
    """``entry`` when it is a JSON object; else an error naming the file, the entry and
    ``expected`` (what the object should hold, e.g. ``"fields ['caption', 'image']"``)."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{path}: entry {index} is a {type(entry).__name__}, expected an "
                              f"object with {expected}.")
    return entry


def required_field(entry: Dict[str, Any], index: int, path: PathLike, name: str,
                   description: str) -> Any:
    """``entry[name]``; a missing field is an error naming it, ``description`` (what it should
    be) and the fields the entry has."""
    if name not in entry:
        raise AnnotationError(f"{path}: entry {index} has no field {name!r} (expected "
                              f"{description}); its fields are {sorted(entry)}.")
    return entry[name]


def bad_field(path: PathLike, index: int, name: str, value: Any, description: str) -> AnnotationError:
    """The error for a field of the wrong type or value (its value shown, cut at 80 characters)."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return AnnotationError(f"{path}: entry {index} field {name!r} is {shown}; expected {description}.")


def _check_entry(entry: Any, index: int, path: Path, fields: FieldSpec) -> None:
    check_object(entry, index, path, f"fields {sorted(fields)}")
    for name, (kinds, description) in fields.items():
        value = required_field(entry, index, path, name, description)
        if not any(_matches(value, kind) for kind in kinds):
            raise bad_field(path, index, name, value, description)
        _check_not_empty(value, name, index, path)


def _check_not_empty(value: Any, name: str, index: int, path: Path) -> None:
    """One rule for empty text: a caption that ``pre_caption`` cleans down to nothing ("",
    spaces, only punctuation) is an error, like any other empty string field."""
    texts = value if isinstance(value, list) else [value]
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            continue
        cleaned = pre_caption(text) if name == "caption" else text.strip()
        if not cleaned:
            where = f" caption {position}" if isinstance(value, list) else ""
            rule = " after cleaning (pre_caption removes punctuation and spaces)" \
                if name == "caption" else ""
            raise AnnotationError(f"{path}: entry {index} field {name!r}{where} is {text!r}, "
                                  f"empty{rule}. Fix or remove the entry.")


def load_annotations(files: Sequence[PathLike], fields: FieldSpec) -> List[Dict[str, Any]]:
    """Concatenate the entries of several JSON list files, checking each entry.

    Args:
        files: JSON files, each holding a list of objects.
        fields: the required fields and their accepted types (e.g. :data:`PRETRAIN_FIELDS`).

    Returns:
        All entries, in file order.

    Raises:
        AnnotationError: naming the file (and entry index and field) that is wrong.
    """
    if not files:
        raise AnnotationError("No annotation files given; list at least one JSON file.")
    entries: List[Dict[str, Any]] = []
    for file in files:
        path = Path(file)
        data = read_json_list(path)
        for index, entry in enumerate(data):
            _check_entry(entry, index, path, fields)
        entries.extend(data)
    return entries


def read_json_list(path: Path, what: str = "Annotation file", items: str = "entries") -> List[Any]:
    """The JSON list in ``path``; a missing file, invalid JSON or UTF-8, or another top level is
    an error naming the file (``what``: the kind of file; ``items``: what the list holds)."""
    if not path.is_file():
        raise AnnotationError(f"{what} {path} does not exist. Check the path (relative paths are "
                              f"taken from the dataset's data_dir).")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc}).") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            f"JSON annotation files must be UTF-8: convert it, e.g. with "
            f"`iconv -f latin1 -t utf-8`.") from None
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: the top level must be a JSON list of {items}, got a "
                              f"{type(data).__name__}.")
    return data


def resolve_image_path(image: str, image_root: PathLike) -> str:
    """``image`` itself when absolute, else joined to ``image_root`` (official behaviour)."""
    return image if os.path.isabs(image) else os.path.join(str(image_root), image)
