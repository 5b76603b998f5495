"""System metrics during fit: MLflow's own monitor (CPU, memory, disk, network; GPU where its driver library is
present) sampling into the run as `system/*`, switched by `logger.system_metrics`."""

from __future__ import annotations

import importlib.util
import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from shallowmimic.tracking.run import Run

log = logging.getLogger(__name__)


class SystemMetrics(Callback):
    """Rank 0 samples the machine every `interval` seconds from fit start to fit end (a resumed run goes on from
    its last step)."""

    def __init__(self, run: Run, tracking_uri: str, interval: float) -> None:
        self.run, self.tracking_uri, self.interval = run, tracking_uri, interval
        self.monitor = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # imported here: it imports psutil, which system_metrics() checks for first
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if trainer.is_global_zero:
            self.monitor = SystemMetricsMonitor(self.run.run_id, sampling_interval=self.interval,
                                                resume_logging=self.run.resumed, tracking_uri=self.tracking_uri)
            self.monitor.start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stop()  # a failed or interrupted fit: the thread stops before the run is closed

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None


def system_metrics(logger_cfg: DictConfig, run: Run) -> list[Callback]:
    """The monitor as a callback when `logger.system_metrics` is on (and psutil, which it reads, is installed)."""
    if not logger_cfg.get("system_metrics"):
        return []
    if importlib.util.find_spec("psutil") is None:  # a dependency of ours: missing only in an older environment
        log.warning("logger.system_metrics=true needs psutil (pip install psutil): no system metrics for this run")
        return []
    return [SystemMetrics(run, str(logger_cfg.tracking_uri), float(logger_cfg.system_metrics_interval))]
