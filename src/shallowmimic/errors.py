"""The user's mistakes: one line naming the key or file, a non-zero exit, no traceback, no run created."""

from __future__ import annotations

import re
from typing import Any

from hydra.errors import CompactHydraException


class UserError(Exception):
    """A mistake in the user's input: reported as one line, with a non-zero exit and no traceback."""


class BadValue(UserError):
    """A config value a constructor refuses: `key=value: must be <allowed>`. The key is the constructor's argument;
    whoever built the object from a config group prefixes the group (`width` -> `model.width`)."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value}: must be {allowed}")

    def under(self, group: str) -> BadValue:
        """The same error with its key inside `group`."""
        return BadValue(f"{group}.{self.key}", self.value, self.allowed)


class JobRefused(CompactHydraException):
    """A multirun job stopped by a user's mistake, after printing its own line: Hydra raises the first such job once
    the others ran, and prints a compact exception as its message alone, without a traceback."""

    def __init__(self, job: str) -> None:
        super().__init__(f"job {job} was refused (its error line is above); the multirun's other jobs ran")


def redact(uri: str) -> str:
    """Text with the password of any URI in it (scheme://user:password@host) replaced, fit for logs and params."""
    # greedy to the token's last '@': a password may hold '/', ':' or an unescaped '@'
    return re.sub(r"//([^:/@\s]+):[^\s]*@", r"//\1:***@", uri)
