"""The Lightning logger of our runs: MLflow's, at the optimizer step, skipping the points a resumed run logged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, set[int]]:
    """The steps at which each metric of the run was already logged."""
    return {key: {m.step for m in client.get_metric_history(run_id, key)}
            for key in client.get_run(run_id).data.metrics}


class StepOnceMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that drops the points already `logged` (same metric, same step): a resumed run re-runs the
    stretch between its last checkpoint and the crash without logging any step twice.

    Every point is logged at `optimizer_step()` (the LightningModule's global_step), as Lightning users read
    MLflow's step axis: the step Lightning passes counts loader items, and an item here is several optimizer steps
    (loop.steps_per_batch)."""

    def __init__(self, *args: Any, logged: dict[str, set[int]], optimizer_step: Callable[[], int],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logged, self.optimizer_step = logged, optimizer_step

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        step = self.optimizer_step()
        fresh = {k: v for k, v in metrics.items() if step not in self.logged.get(k, ())}
        if fresh:
            super().log_metrics(fresh, step)
