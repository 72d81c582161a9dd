"""Config loading shared by every binary: YAML with Dragonfly's camelCase keys into frozen dataclass trees.

Load → convert → validate. Each dataclass field is snake_case and read from its camelCase key (or
``field(metadata={"key": ..., "aliases": (...)})`` for irregular names). Sizes, durations and rates parse from
human strings. Unknown keys are logged, not fatal, so operators can reuse Dragonfly's files; a bad value raises
``ConfigError`` naming the file and the dotted key.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import logging
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dragonfly.common.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Size(int):
    """A byte count; YAML accepts ``4MiB``, ``1.5GB``, ``512KB`` or a plain integer."""


class Duration(float):
    """A duration in seconds; YAML accepts ``30s``, ``5m``, ``1h30m``, ``250ms`` or a number of seconds."""


class Rate(float):
    """Bytes per second; YAML accepts ``20MiB/s``, ``800Mbit``, ``50GB/s`` or a number; 0 means unlimited."""


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"^{_NUMBER}\s*([a-zA-Z]*)$")
_DURATION_PART_RE = re.compile(rf"{_NUMBER}\s*(ns|us|µs|ms|s|m|h|d)")


def parse_size(value: str | int | float) -> int:
    """Parse a byte count such as ``4MiB`` (binary) or ``4MB`` (decimal)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 4MiB, got {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != int(value):
            raise ValueError(f"expected a non-negative whole number of bytes, got {value!r}")
        return int(value)
    match = _SIZE_RE.match(value.strip())
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 512KiB, 4MiB or 1GB, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: str | int | float) -> float:
    """Parse a duration such as ``30s``, ``1h30m`` or ``250ms`` into seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return float(value)
    text = value.strip()
    total, pos = 0.0, 0
    for match in _DURATION_PART_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 250ms, 30s, 5m or 1h30m, got {value!r}")
    return total


def parse_rate(value: str | int | float) -> float:
    """Parse a bandwidth into bytes per second: ``20MiB/s`` and ``50GB/s`` are bytes, ``800Mbit`` is bits."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate such as 20MiB/s, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative rate, got {value!r}")
        return float(value)
    text = value.strip().lower().removesuffix("/s")
    bits = text.endswith(("bit", "bps"))
    text = text.removesuffix("bit").removesuffix("bps")
    match = _SIZE_RE.match(text)
    unit = match.group(2) if match else None
    if match and unit in _SIZE_UNITS and not (bits and unit.endswith("b")):
        amount = float(match.group(1)) * _SIZE_UNITS[unit]
        return amount / 8 if bits else amount
    raise ValueError(f"expected a rate such as 20MiB/s, 1GB/s or 800Mbit, got {value!r}")


def camel_case(name: str) -> str:
    """Return the camelCase YAML key of a snake_case field name."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _convert(tp: Any, value: Any, key: str, path: str | None) -> Any:
    """Convert one YAML value to the annotated type, raising ConfigError that names the key."""
    origin = typing.get_origin(tp)
    try:
        if tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            non_none = [a for a in args if a is not type(None)]
            if len(non_none) == 1:
                return _convert(non_none[0], value, key, path)
            raise ValueError(f"unsupported union type {tp}")
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"expected a mapping (section), got {type(value).__name__}")
            return _build(typing.cast(type, tp), value, key, path)
        if origin in (list, tuple):
            (item_tp, *_rest) = typing.get_args(tp) or (Any,)
            if value is None:
                value = []
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ValueError(f"expected a list, got {type(value).__name__}")
            items = [_convert(item_tp, v, f"{key}[{i}]", path) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            key_tp, val_tp = typing.get_args(tp) or (str, Any)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"expected a mapping, got {type(value).__name__}")
            return {
                _convert(key_tp, k, f"{key}.{k}", path): _convert(val_tp, v, f"{key}.{k}", path)
                for k, v in value.items()
            }
        if tp is Size:
            return Size(parse_size(value))
        if tp is Duration:
            return Duration(parse_duration(value))
        if tp is Rate:
            return Rate(parse_rate(value))
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"expected true or false, got {value!r}")
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {value!r}")
            return float(value)
        if tp is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError(f"expected a string, got {value!r}")
            return str(value)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            try:
                return tp(value)
            except ValueError:
                choices = ", ".join(repr(m.value) for m in tp)
                raise ValueError(f"expected one of {choices}, got {value!r}") from None
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), key=key, path=path) from None
    raise ConfigError(f"unsupported config type {_describe(tp)}", key=key, path=path)


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, path: str | None) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known: set[str] = set()
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        names = (field.metadata.get("key", camel_case(field.name)), *field.metadata.get("aliases", ()))
        known.update(names)
        present = [n for n in names if n in data]
        if not present:
            continue
        yaml_key = present[0]
        dotted = f"{prefix}.{yaml_key}" if prefix else yaml_key
        kwargs[field.name] = _convert(hints[field.name], data[yaml_key], dotted, path)
    collected = _UNKNOWN_KEYS.get()
    for unknown in sorted(set(map(str, data)) - known):
        dotted = f"{prefix}.{unknown}" if prefix else unknown
        if collected is not None:
            collected.append(dotted)
        else:
            log.warning("config %s: unknown key %s ignored", path or "<defaults>", dotted)
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), key=prefix or None, path=path) from None
    return obj


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


#: Keys of the file being loaded that no field reads; reported together in one warning (Dragonfly's files carry many
#: keys of features this implementation does not have).
_UNKNOWN_KEYS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("unknown_config_keys", default=None)


def load_config(cls: type[T], path: str | os.PathLike[str] | None, *, overrides: Mapping[str, Any] | None = None) -> T:
    """Load ``path`` (None = defaults only), apply ``overrides`` (a camelCase mapping), convert and validate.

    Keys no field reads are listed in one warning: ``config FILE: keys not implemented here, ignored: a.b, c``.
    """
    import yaml

    data: dict[str, Any] = {}
    where = os.fspath(path) if path is not None else None
    if where is not None:
        try:
            text = Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path=where) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", path=where) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"the top level must be a mapping, got {type(loaded).__name__}", path=where)
        data = dict(loaded)
    if overrides:
        data = _merge(data, overrides)
    unknown: list[str] = []
    token = _UNKNOWN_KEYS.set(unknown)
    try:
        result = _build(cls, data, "", where)
    finally:
        _UNKNOWN_KEYS.reset(token)
    if unknown:
        log.warning("config %s: keys not implemented here, ignored: %s", where or "<defaults>", ", ".join(unknown))
    return result
