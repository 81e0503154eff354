"""Validating plain dicts (from YAML) into dataclasses, with errors that name the key path."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, Optional, Union

from ..errors import ConfigError, closest

_MISSING = dataclasses.MISSING


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def check_value(value: Any, annotation, path: str) -> Any:
    """Check ``value`` against a type annotation; return it, converted where YAML is looser (int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(value, option, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}{closest(str(value), map(str, args))}")
        return value
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [check_value(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = [m.value for m in annotation]
        if value not in allowed and value not in list(annotation):
            raise ConfigError(f"{path}: {value!r} is not one of {allowed}{closest(str(value), map(str, allowed))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value  # other annotations (callables, torch types) are checked by their consumer


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_keys(data: dict, allowed, path: str, renamed: Optional[dict[str, str]] = None) -> None:
    """Every key of ``data`` must be ``allowed``; a key in ``renamed`` (old name -> new) is pointed to its new name."""
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            hint = f" (did you mean '{renamed[key]}'?)" if key in (renamed or {}) else closest(str(key), allowed)
            raise ConfigError(f"unknown key '{where}'{hint}: allowed keys are {sorted(allowed)}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and missing keys are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, path, getattr(cls, "renamed_keys", None))
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = check_value(data[name], hints[name], key_path)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"missing key '{key_path}': {f.metadata.get('help', 'required')}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path or cls.__name__}: {str(e).splitlines()[0]}") from None


def fields_of(obj, cls) -> dict[str, Any]:
    """The values of ``cls``'s fields on ``obj``: a stage config's part that is the method's own config (it subclasses it)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}


def to_dict(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
