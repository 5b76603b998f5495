"""SIGTERM (what SLURM and Kubernetes send on pre-emption) and SIGINT (Ctrl-C) end a job as an interruption: its
MLflow run KILLED, its last checkpoint kept, exit status 128 + the signal's number, as shells report it."""

from __future__ import annotations

import signal
from types import FrameType

received: int | None = None  # the first signal this process got, if any


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt once, for either signal: Lightning stops a fit on it as it does on Ctrl-C; a second
    signal during the shutdown is ignored so that the run's status is still written."""
    global received
    if received is None:
        received = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Handle SIGTERM and SIGINT in this process (Lightning chains its own SIGTERM handler with ours)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)


def exit_status() -> int:
    """After a signal: 128 + its number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + received
