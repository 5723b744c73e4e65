"""The one way a configuration file is read: YAML in, a validated pydantic model out.

Every file in ``configs/`` (the pool spec, prices, limits) is a model with ``extra="forbid"``
loaded through ``load_model``, so a typo or a wrong type fails at start-up with one line naming
the file, the key path and what was expected::

    configs/prices.yaml: prices[2].completion_per_million: must be quoted (a YAML float would lose digits)
    configs/local.yaml: pools[0].queue.max_wait_s: Input should be greater than 0 (got -1)
    configs/local.yaml: pools[0].qeue: unknown key; expected one of served_name, model, …

The CLI prints a ``ConfigError`` as that line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)
_MAX_SHOWN = 60  # characters of a bad value quoted in a message


class ConfigError(ValueError):
    """A configuration file or setting is unfit to start with; the message is one line that
    names the file (or variable), the key path and what was expected."""


def read_yaml(path: Path) -> Any:
    """The parsed YAML document at ``path`` (an empty file is an empty mapping)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    return {} if raw is None else raw


def load_model(path: Path, model: type[M]) -> M:
    """Read, parse and validate the file at ``path`` as ``model``, or raise ``ConfigError``."""
    return validate(read_yaml(path), model, str(path))


def validate(raw: object, model: type[M], source: str) -> M:
    """Validate an already parsed document; errors are reported as coming from ``source``."""
    if not isinstance(raw, dict):
        keys = ", ".join(model.model_fields)
        raise ConfigError(f"{source}: expected a mapping with the keys {keys}, not {_shown(raw)}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc, model)}") from None


def describe(
    error: ValidationError,
    model: type[BaseModel] | None = None,
    written_as: Callable[[str], str] = str,
) -> str:
    """Every problem in ``error`` on one line: ``key.path[0].key: what was expected``.

    With the ``model`` that was validated, unknown keys list the keys expected there, and the
    member names pydantic puts in the location of a union (``port.int``, ``port.str``) are dropped,
    the members' complaints joined with "or" under the one key path. ``written_as`` spells a
    top-level key as it was given (settings: ``port`` → ``GATEWAY_PORT``).
    """
    problems: dict[str, list[str]] = {}
    for detail in error.errors():
        loc = _loc(detail)
        if model is not None:
            loc = _without_union_members(model, loc)
        if loc and isinstance(loc[0], str):
            loc = (written_as(loc[0]), *loc[1:])
        path = key_path(loc)
        problems.setdefault(path, []).append(_problem(detail, model))
    return "; ".join(
        f"{path}: {', or '.join(found)}" if path else ", or ".join(found) for path, found in problems.items()
    )


def key_path(loc: Sequence[int | str]) -> str:
    """``("pools", 0, "queue", "max_wait_s")`` → ``pools[0].queue.max_wait_s``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _loc(detail: ErrorDetails) -> tuple[int | str, ...]:
    """The error's location; a validator that checks a whole mapping names the bad key in
    ``ctx["key"]`` (see ``gateway.config.limits``)."""
    key = detail.get("ctx", {}).get("key")
    return (*detail["loc"], key) if isinstance(key, str) else tuple(detail["loc"])


def _problem(detail: ErrorDetails, model: type[BaseModel] | None) -> str:
    kind, ctx = detail["type"], detail.get("ctx", {})
    if kind == "extra_forbidden":
        expected = _fields_at(model, detail["loc"][:-1]) if model is not None else None
        return f"unknown key; expected one of {', '.join(expected)}" if expected else "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":  # a validator's own ValueError: its message says what is expected
        return str(ctx.get("error", detail["msg"]))
    if "key" in ctx or isinstance(detail["input"], dict | list):
        return detail["msg"]
    return f"{detail['msg']} (got {_shown(detail['input'])})"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _fields_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str] | None:
    """The keys the model nested at ``loc`` takes, or None when ``loc`` names no model."""
    current: Any = model
    for part in loc:
        current = _inner(current, part)
    current = _without_none(current)
    return list(current.model_fields) if _is_model(current) else None


def _without_union_members(model: type[BaseModel], loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """``loc`` without the union member names pydantic inserts after a union-typed key."""
    kept: list[int | str] = []
    current: Any = model
    for part in loc:
        if current is not None and _is_union(current):
            current = None  # ``part`` names a member: drop it, and stop following types
            continue
        kept.append(part)
        current = _inner(current, part) if current is not None else None
    return tuple(kept)


def _inner(annotation: Any, part: int | str) -> Any:
    """The type found one step (a key, an index) inside ``annotation``."""
    annotation = _without_none(annotation)
    if _is_model(annotation) and isinstance(part, str):
        field = annotation.model_fields.get(part)
        return field.annotation if field is not None else None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and isinstance(part, int):
        return args[0]
    if origin is dict and len(args) == 2 and isinstance(part, str):
        return args[1]
    return None


def _without_none(annotation: Any) -> Any:
    """``X | None`` → ``X``; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    """A union of several types besides None (``int | str``): pydantic names the member tried."""
    annotation = _without_none(annotation)
    return get_origin(annotation) in (Union, types.UnionType)


def _is_model(annotation: Any) -> bool:
    annotation = _without_none(annotation)
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: the parser's complaint and where (its own text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())
