"""Value checks that constructors call on their own arguments (each raises BadValue naming the argument), and the
builder that turns them into one line naming the config key."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from shallowmimic.errors import BadValue, UserError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(key: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """An integer >= minimum (or None if optional)."""
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        raise BadValue(key, value, f"an integer >= {minimum}" + (" or null" if optional else ""))


def number(key: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
           optional: bool = False) -> None:
    """A finite number in [low, high] ((low, high] if low_open), or None if optional."""
    if value is None and optional:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value <= high
    if not (ok and (value > low if low_open else value >= low)):
        bound = f"a number {'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
        raise BadValue(key, value, bound + (" or null" if optional else ""))


def int_list(key: str, value: Any) -> None:
    """A non-empty list of positive integers."""
    if not (isinstance(value, Sequence | ListConfig) and not isinstance(value, str) and len(value) > 0
            and all(_is_int(v) and v > 0 for v in value)):
        raise BadValue(key, value, "a non-empty list of positive integers")


def choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    """One of `allowed`."""
    if value not in allowed:
        raise BadValue(key, value, f"one of {', '.join(map(str, allowed))}")


def flag(key: str, value: Any) -> None:
    """True or False."""
    if not isinstance(value, bool):
        raise BadValue(key, value, "true or false")


def path(key: str, value: Any, optional: bool = True) -> None:
    """A path given as a string (whether it exists is the reader's check, at load time)."""
    if not (isinstance(value, str) or (value is None and optional)):
        raise BadValue(key, value, "a path")


def writable_folder(key: str, value: Any) -> None:
    """A folder that exists, or can be made because its nearest existing ancestor is a writable folder."""
    folder = Path(str(value))
    nearest = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if nearest is None or not nearest.is_dir() or not os.access(nearest, os.W_OK):
        raise BadValue(key, value, "a writable folder (or one that can be created)")


def build(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config group's object; what its constructor refuses comes out as one line naming the group's
    key (`model.width=0: ...`), and a net that cannot take the data as one line naming the net."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, BadValue):
            raise cause.under(group) from None
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, ValueError | RuntimeError | TypeError):  # e.g. CNN2D on sequences, a pool too big
            raise UserError(f"{group}={node._target_.rsplit('.', 1)[-1]}: {cause}") from None
        if cause is None or isinstance(cause, ImportError | AttributeError):  # the _target_ itself is not there
            target(group, node)
        raise


def target(group: str, node: DictConfig) -> None:
    """The node's `_target_` names an importable class or function; else one line naming the key."""
    parts = str(node._target_).split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes of it
        try:
            obj = importlib.import_module(".".join(parts[:split]))
            break
        except ImportError as err:
            why = str(err)
    else:
        raise UserError(f"{group}._target_={node._target_}: cannot be imported ({why}); give the dotted path of a "
                        "class or function of an installed module")
    for name in parts[split:]:
        if not hasattr(obj, name):
            raise UserError(f"{group}._target_={node._target_}: {'.'.join(parts[:split])} has no {name}; give the "
                            "dotted path of a class or function of an installed module")
        obj = getattr(obj, name)
