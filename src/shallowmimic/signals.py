"""SIGTERM (what SLURM and Kubernetes send on pre-emption) and SIGINT (Ctrl-C) end a job as an interruption: its
MLflow run KILLED, its last checkpoint kept, exit status 128 + the signal's number, as shells report it."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

received: int | None = None  # the first signal this process got, if any
stopping = False  # the job is shutting down after a signal or an exit: later signals are ignored


def _in_store(frame: FrameType | None) -> bool:
    """Whether this thread is inside the tracking store's database code (a SQLite transaction may be open)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(("sqlalchemy", "mlflow.store", "sqlite3")):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt once, for either signal: Lightning stops a fit on it as it does on Ctrl-C. A signal
    that lands inside a store write is sent again 50 ms later: raised there, it can leave SQLite's write lock held by
    a transaction nobody ends, and the run's KILLED status then waits for that lock until "database is locked"."""
    global received
    if stopping:
        return
    received = received or signum  # Lightning may stop the fit first (its SIGTERM handler): the exit still says why
    if _in_store(frame):
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    stop()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop() -> None:
    """From now on signals are ignored, so that a shutdown under way still writes the run's status."""
    global stopping
    stopping = True


def install() -> None:
    """Handle SIGTERM and SIGINT in this process (Lightning chains its own SIGTERM handler with ours)."""
    global stopping
    stopping = False
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)


def exit_status() -> int:
    """After a signal: 128 + its number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + received
