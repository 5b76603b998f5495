"""Checks of the keys that configure what no constructor of ours receives: torch's optimizer, Lightning's Trainer,
the tracking store, paths, seed and role. Our own objects (nets, data, objectives) check their arguments.
Nothing heavy is imported here: train.py runs these checks before it imports torch, Lightning and MLflow."""

from __future__ import annotations

from omegaconf import DictConfig

from shallowmimic import checks
from shallowmimic.errors import BadValue, UserError, redact

PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
ROLES = ("teacher", "baseline", "mimic", "kd")
URI_SCHEMES = ("sqlite:///", "http://", "https://", "file:", "postgresql", "mysql", "databricks")


def check(cfg: DictConfig) -> None:
    """Raise BadValue on the first bad value, before any work."""
    checks.choice("role", cfg.role, ROLES)
    allowed = [cfg.objective.role] if "role" in cfg.objective else ["teacher", "baseline"]
    if cfg.role not in allowed:  # a student's role is its objective's
        raise BadValue("role", cfg.role, f"{' or '.join(allowed)} with objective={cfg.objective.name}")
    checks.number("optimizer.lr", cfg.optimizer.get("lr"), 0, low_open=True)
    checks.number("optimizer.weight_decay", cfg.optimizer.get("weight_decay", 0.0), 0)
    trainer = cfg.trainer
    checks.integer("trainer.max_epochs", trainer.max_epochs)
    checks.choice("trainer.precision", trainer.precision, PRECISIONS)
    checks.choice("trainer.accelerator", trainer.accelerator, ACCELERATORS)
    devices = trainer.devices
    if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool)
                                  and (devices >= 1 or devices == -1))):
        raise BadValue("trainer.devices", devices, "an integer >= 1, -1 (all) or auto")
    checks.integer("trainer.num_nodes", trainer.get("num_nodes"), optional=True)
    check_device(trainer.accelerator, devices)
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise BadValue("seed", seed, "an integer from 0 to 2**32 - 1")
    checks.integer("threads", cfg.threads, optional=True)
    checks.choice("teacher.inputs", cfg.teacher.get("inputs") or "raw", ["raw", "standardised"])
    checks.integer("loop.steps_per_batch", cfg.loop.steps_per_batch)
    checks.flag("loop.compile", cfg.loop.compile)
    for key in ("outputs", "cache"):
        checks.writable_folder(f"paths.{key}", cfg.paths[key])
    checks.flag("reuse", cfg.get("reuse", True))
    if cfg.resume is not None and not isinstance(cfg.resume, str):
        raise BadValue("resume", cfg.resume, "null or the path of a run dir or .ckpt file")
    if cfg.logger.get("run_id") is not None and rank() == 0:
        raise BadValue("logger.run_id", cfg.logger.run_id, "null (rank 0 hands it to the DDP ranks it starts); to "
                       "continue a run use resume=")
    uri = str(cfg.logger.tracking_uri)
    if not uri.startswith(URI_SCHEMES):
        raise BadValue("logger.tracking_uri", redact(uri), f"a tracking URI starting with {', '.join(URI_SCHEMES)}")


def rank() -> int:
    """This process's global rank (Lightning's reading of the launcher's environment)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only  # seconds to import: only when asked

    return rank_zero_only.rank


def check_device(accelerator: str, devices: int | str) -> None:
    """A GPU trainer on a machine without (enough) GPUs: refused now, not as a traceback inside Lightning."""
    if accelerator not in ("gpu", "cuda"):
        return
    import torch  # seconds to import: only for a GPU trainer
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found == 0:
        raise UserError(f"trainer.accelerator={accelerator}: no CUDA GPU on this machine (torch "
                        f"{torch.__version__}); use trainer=cpu (or trainer=ddp_cpu for several processes)")
    if isinstance(devices, int) and devices > found:
        raise UserError(f"trainer.devices={devices}: this machine has {found} GPU(s); use at most {found} or -1")
