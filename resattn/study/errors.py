"""A study or profile file that breaks its schema, as one line: :class:`SpecError` names the file, the
key path (``claims[0].trend.factor``) and what is allowed there, read from pydantic's first error
(:func:`validated`): a field's ``description``, a model's ``what``, or the words of the validator
that refused the value (:class:`At`). The models say what they are in a class variable ``what``.
Written here because pydantic's own message names neither the file nor, for a value checked
against the file's other keys, what would be allowed.

No torch here.
"""

from __future__ import annotations

import difflib
from inspect import isclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A malformed study or profile: names the file, the key and what was expected."""

    def __init__(self, path: Path | str, key: str, expected: str) -> None:
        super().__init__(f"{path}: key {key!r}: expected {expected}.")


class At(ValueError):
    """Raised by a validator: what is allowed at ``keys`` below the value it checks."""

    def __init__(self, expected: str, *keys: Any) -> None:
        super().__init__(expected)
        self.expected, self.keys = expected, keys

    def below(self, *keys: Any) -> At:
        return At(self.expected, *keys, *self.keys)


def suggest(name: str, choices: list[str], n: int = 2) -> str:
    """`` (did you mean X?)`` for the (up to ``n``) choices closest to ``name``, case aside; else ``""``."""
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(lower[c] for c in close)}?)" if close else ""


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    if isinstance(node, dict):
        return node[key] if key in node else next((v for k, v in node.items() if str(k) == str(key)), None)
    return None


def key_path(raw: Any, keys: tuple, prefix: str = "") -> str:
    """``claims[0].trend.factor``: the keys (a list's by index) from ``raw``'s top, after ``prefix``."""
    out, node = prefix, raw
    for key in keys:
        if key == "[key]":  # pydantic's mark of a mapping's key, after the key itself
            continue
        out += f"[{key}]" if isinstance(node, list) else f".{key}" if out else str(key)
        node = _child(node, key)
    return out or "<top level>"


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds (``list[ClaimSpec] | None``: ClaimSpec), if any."""
    if get_origin(annotation) is None and isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_inner_model, get_args(annotation)) if m is not None), None)


def _walk(model: type[BaseModel], keys: tuple) -> tuple[type[BaseModel] | None, str]:
    """The model whose fields lie at ``keys`` (None below a field that holds none) and the
    description of the deepest field on the way that has one (else the top model's ``what``)."""
    text = model.what
    for key in keys:
        if model is not None and isinstance(key, str) and key in model.model_fields:
            text = model.model_fields[key].description or text
            model = _inner_model(model.model_fields[key].annotation)
    return model, text


def _order(error: dict) -> tuple[bool, int]:
    return len(error["loc"]) > 1, {"extra_forbidden": 0, "missing": 1}.get(error["type"], 2)


def validated(model: type[M], raw: Any, path: Path | str, prefix: str = "") -> M:
    """``raw`` validated as ``model``; else the :class:`SpecError` of its first error: a top-level
    one first (a key the model lacks, then a missing one, then the others in the order of the
    fields), then the same order below.

    Raises:
        SpecError: naming ``path``, the key path (after ``prefix``) and what is allowed there.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = min(err.errors(), key=_order)
    keys, kind, at = tuple(first["loc"]), first["type"], first.get("ctx", {}).get("error")
    if isinstance(at, At):
        keys, expected = keys + at.keys, at.expected
    elif kind == "extra_forbidden":
        allowed = list(_walk(model, keys[:-1])[0].model_fields)
        expected = f"one of {', '.join(allowed)}{suggest(str(keys[-1]), allowed, n=1)}"
    elif kind == "missing":
        expected = "to be present"
    elif kind == "model_type":
        expected = _walk(model, keys)[0].what
    else:
        expected = _walk(model, keys)[1]
    raise SpecError(path, key_path(raw, keys, prefix), expected)
