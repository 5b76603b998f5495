"""Validate a composed config before any work starts: one line naming the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from shallowmimic.nets import ACTIVATIONS
from shallowmimic.system import LOSSES
from shallowmimic.tracking import UserError

PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1, optional: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise UserError(f"{key}={value}: must be {allowed}")


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...] | list[str]) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        raise UserError(f"{key}={value}: must be one of {', '.join(map(str, allowed))}")


def check(cfg: DictConfig) -> None:
    """Raise UserError on the first bad value."""
    if "width" in cfg.model:
        _positive_int(cfg, "model.width")
        _positive_int(cfg, "model.rank", optional=True)
    if "activation" in cfg.model:
        _choice(cfg, "model.activation", list(ACTIVATIONS))
    _choice(cfg, "objective.name", list(LOSSES))
    _positive_int(cfg, "trainer.max_epochs")
    _positive_int(cfg, "data.batch_size")
    _positive_int(cfg, "data.eval_batch_size")
    _positive_int(cfg, "data.val_size")
    _positive_int(cfg, "data.transfer_size", minimum=0)
    _choice(cfg, "trainer.precision", PRECISIONS)
    lr = _get(cfg, "optimizer.lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise UserError(f"optimizer.lr={lr}: must be a number > 0")
    if not isinstance(_get(cfg, "seed"), int):
        raise UserError(f"seed={_get(cfg, 'seed')}: must be an integer")
    n_train = int(cfg.data.num_samples * cfg.data.train_split)
    if not 0 < cfg.data.val_size < n_train:
        raise UserError(f"data.val_size={cfg.data.val_size}: must be between 1 and {n_train - 1} "
                        f"(the training split has {n_train} samples)")
