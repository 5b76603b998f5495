"""Hydra entry point: fit one teacher, baseline or mimic, test it once, and record it in MLflow.

    python -m shallowmimic.train experiment=teacher
    python -m shallowmimic.train experiment=mimic model.width=8192 model.rank=32
    python -m shallowmimic.train -m experiment=mimic model.width=512,2048 model.rank=null,32

The job itself reads top to bottom in pipeline.py. This module imports nothing heavy (no torch, Lightning or
MLflow), so `--help`, `--cfg job` and Hydra's own errors answer at once.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from shallowmimic import conf_dir, settings, signals
from shallowmimic.errors import JobRefused, UserError


@hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run one job and return its best validation accuracy (the value a sweeper such as Optuna maximises); a
    user's mistake ends it with one line on stderr and exit status 2."""
    signals.install()
    try:
        settings.check(cfg)  # the keys checked without torch: a mistake there answers in a second
        from shallowmimic.training.pipeline import train  # torch, Lightning, MLflow: only for a job that runs

        return train(cfg)["val/best_acc"]
    except UserError as err:
        job = HydraConfig.get().job
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one line per refused job; Hydra goes on with the others
            print(f"error: job {job.num} ({job.override_dirname}): {err}", file=sys.stderr, flush=True)
            raise JobRefused(str(job.num)) from None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit):
        if signals.received is None:
            raise
        sys.exit(signals.exit_status())  # a sweep stops here too: its parent run is closed KILLED


if __name__ == "__main__":
    main()
