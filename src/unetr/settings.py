"""Settings as users write them: typed values from ``--set key=value`` and YAML, and the JSON/YAML files the
stages exchange (plan.json, config.json, dataset.json).

Every value is converted to its field's type (``1e-4`` is a float even though YAML reads it as a string;
``true``/``false``/``1``/``0`` are booleans; lists become tuples); a value that is not one fails with one
line naming the key, the expected type and the value, and an unknown key gets the closest valid names.
:mod:`unetr.config` re-exports these names.
"""

from __future__ import annotations

import difflib
import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from unetr.fsutil import atomic_write_text

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotated type ``tp`` (bool, int, float, str, tuples, Optional); ``ValueError`` naming
    ``key``, the expected type and the value when it is not one."""
    def fail() -> ValueError:
        return ValueError(f"{key}: expected {_type_name(tp)}, got {value!r}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise fail()
    if tp is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is float:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML reads 1e-4 as a string
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if args and len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args)) if args else tuple(value)
        if args and args[-1] is not Ellipsis and len(set(args)) == 1 and not isinstance(value, (str, dict)):
            return _coerce(value, args[0], key)  # one number for every axis: the class expands it
        raise fail()
    return value


def coerce_fields(cls: type, data: Mapping[str, Any], source: str = "") -> dict:
    """Check ``data``'s keys against ``cls``'s fields (an unknown key gets the closest valid names) and convert
    every value to its field's type: ``--set lr=1e-4``, ``lr: 1e-4`` in YAML and ``--set flag=true`` all
    arrive as the right type. ``source`` prefixes the key in messages (``--set plan.``)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    out = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
            raise ValueError(f"unknown {cls.__name__} field {source}{key}{hint}")
        out[key] = _coerce(value, hints[key], f"{source}{key}")
    return out


def save_json(path: Union[str, Path], data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _read_text(path: Path, kind: str) -> str:
    """A settings file's text, or one clear error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a {kind} file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 {kind}") from None


def load_json(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        return json.loads(_read_text(path, "JSON"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_yaml(path: Union[str, Path]) -> dict:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(_read_text(path, "YAML"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_set(items: Optional[Sequence[str]]) -> dict:
    """Parse ``key=value`` strings (``--set lr=3e-4 --set roi=[64,64,64]``); values are read as YAML."""
    import yaml

    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


__all__ = ["coerce_fields", "load_json", "load_yaml", "parse_set", "save_json"]
