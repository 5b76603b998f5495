"""Quiet runs: `make run` prints our lines and Lightning's progress bar. Each library line below is silenced at its
source (its logger, warning or switch), with why; anything else a library says still gets through."""

from __future__ import annotations

import logging
import os
import warnings

# Lightning's rank-zero INFO: "GPU available"/"TPU available", the litlogger tip, "Restoring states from the
# checkpoint", "`Trainer.fit` stopped": every job says them; its warnings go through `warnings`, untouched here.
# Both names: mlflow.pytorch imports the standalone pytorch_lightning package, which logs under its own.
QUIET_LOGGERS = {
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "pytorch_lightning.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.seed": logging.WARNING,  # "Seed set to 0": the seed is a logged param
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables", "Updating database tables"
    "alembic.runtime.migration": logging.WARNING,  # the schema migrations behind those lines
    # "Started/Stopping/Successfully terminated system metrics monitoring", "Skip logging GPU metrics"
    "mlflow.system_metrics.system_metrics_monitor": logging.WARNING,
}

WARNINGS = [
    # Lightning 2.6 builds torch's LeafSpec, deprecated in torch 2.13: Lightning's to change, not ours
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # our System logs once per epoch (system.py), so the per-step logging interval never applies to it
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    # resume= continues in the interrupted run's dir, whose checkpoints/ holds its best.ckpt and last.ckpt
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
]


def silence() -> None:
    """Apply the above (idempotent; a user's own MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # MLflow's tqdm bar for every download, a teacher's checkpoint and config included: two bars per student
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
