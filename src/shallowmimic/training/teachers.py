"""Find a teacher run (or an ensemble of them) in MLflow, load its best checkpoint, and extract + cache its logits
over the transfer set; an ensemble's targets are the mean of its members' logits, as in the paper."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import ListConfig, OmegaConf
from torch import Tensor, nn

from shallowmimic import checks
from shallowmimic.cache import Allocate, cached_maps, digest_arrays, folder_digest, release, spec_key
from shallowmimic.data import ArrayDataModule
from shallowmimic.data.mapped import Standardised
from shallowmimic.errors import BadValue, UserError
from shallowmimic.tracking.keys import ROLE
from shallowmimic.tracking.search import original, teacher_ids
from shallowmimic.tracking.store import Store
from shallowmimic.training.external import SOURCE, load_external

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/best.ckpt"  # artifact paths every teacher run logs
CONFIG = "config.yaml"
SPLIT = "data.split_sha256"  # the param naming a run's train/validation/test splits


def find_teacher(client: MlflowClient, run_id: str) -> Run:
    """The FINISHED teacher run `run_id`."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"teacher.run_id={run_id}: no such run in the tracking store; "
                        "give the id of a finished teacher run (see `make ui`)") from None
    if run.data.tags.get(ROLE) != "teacher" or run.info.status != "FINISHED":
        raise UserError(f"teacher.run_id={run_id}: run is a {run.data.tags.get('role')} run in state "
                        f"{run.info.status}; it must be a FINISHED teacher run")
    return original(client, run)


def check_keys(run_ids: str | Sequence[str] | None, ensemble: int) -> None:
    """The teacher.* keys: run ids of letters and digits (a list: an ensemble), or the newest `ensemble` runs."""
    checks.integer("teacher.ensemble", ensemble)
    ids = list(run_ids) if isinstance(run_ids, Sequence | ListConfig) and not isinstance(run_ids, str) else [run_ids]
    if run_ids is not None and not (ids and all(isinstance(i, str) and i.isalnum() for i in ids)):
        raise BadValue("teacher.run_id", run_ids, "null or an MLflow run id (letters and digits), or a list of them")
    if run_ids is not None and ensemble != 1:
        raise BadValue("teacher.ensemble", ensemble, "1 when teacher.run_id names the teachers (list them all)")


def find_teachers(store: Store, run_ids: str | Sequence[str] | None, newest: int, dm: ArrayDataModule) -> list[Run]:
    """The teacher runs named by `run_ids` (one id, a list, or ids joined by commas), each checked against this data;
    or else the `newest` FINISHED teacher runs of the experiment that fit this data (teacher.ensemble: two or more
    make an ensemble). Newer teachers that do not fit (another study's splits, say) are passed over."""
    ids = teacher_ids(run_ids)
    if len(set(ids)) < len(ids):
        raise UserError(f"teacher.run_id={','.join(ids)}: a run appears twice; list each ensemble member once")
    if ids:
        named = [find_teacher(store.client, run_id) for run_id in ids]
        for run in named:
            check_teacher(store.client, run, dm)
        return named
    found = store.search("tags.role = 'teacher' and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=max(50, 4 * newest))
    # a sweep that reused a teacher lists it again: count each trained teacher once
    candidates = list({r.info.run_id: r for r in (original(store.client, r) for r in found)}.values())
    runs, misfits = [], []
    for run in candidates:
        if len(runs) == newest:
            break
        why = misfit(store.client, run, dm)
        if why is None:
            runs.append(run)
        else:
            misfits.append((run, why))
    if not runs and misfits:
        newest_run, why = misfits[0]
        raise UserError(f"teacher.run_id=null: none of the {len(misfits)} finished teacher runs for this dataset fits "
                        f"this run; the newest, {newest_run.info.run_id}: {why}")
    if not runs:
        raise UserError("teacher.run_id=null: no finished teacher run for this dataset in the tracking store; "
                        "train one first (`make teacher`) or set teacher.run_id")
    if len(runs) < newest:
        raise UserError(f"teacher.ensemble={newest}: only {len(runs)} finished teacher run(s) for this dataset in the "
                        "tracking store; train more (`make teacher ARGS='-m seed=0,1,2,3'`) or set teacher.run_id")
    return runs


def _shape_str(shape: Sequence[int]) -> str:
    """(3, 32, 32) -> '3x32x32', as runs log `data.in_shape`."""
    return "x".join(map(str, shape))


def data_params(dm: ArrayDataModule) -> dict[str, str]:
    """What a net built for this data depends on, logged as params on every run so a student can check its
    teacher against its own data."""
    return {"data.in_shape": _shape_str(dm.in_shape), "data.num_classes": str(dm.num_classes),
            SPLIT: dm.split_key()}


def check_teacher(client: MlflowClient, run: Run, dm: ArrayDataModule) -> None:
    """Refuse, before the student's run exists, a teacher that does not fit this data (`misfit`)."""
    if (why := misfit(client, run, dm)) is not None:
        raise UserError(f"teacher.run_id={run.info.run_id}: {why}")


def misfit(client: MlflowClient, run: Run, dm: ArrayDataModule) -> str | None:
    """Why a teacher run cannot teach on this data, or None: trained on other data, on the same data with other
    classes, input shape or splits (it may have trained on the student's validation or test points), or its
    checkpoint and config are gone from the store."""
    ours = {"data.name": dm.name} | data_params(dm)
    for key, value in ours.items():
        theirs = run.data.params.get(key)  # absent on runs logged before these params existed
        if theirs is not None and theirs != value:
            why = " (other train/validation/test splits: it may have trained on this run's validation or test " \
                  "points)" if key == SPLIT else ""
            return f"teacher was trained with {key}={theirs}, this run has {key}={value}{why}"
    if SOURCE in run.data.tags:  # an external teacher: its net is at its source, not in checkpoint artifacts
        return None
    for path in (CHECKPOINT, CONFIG):
        folder = path.rpartition("/")[0] or None
        if path not in {a.path for a in client.list_artifacts(run.info.run_id, folder)}:
            return f"the teacher run has no artifact {path} (deleted?); train the teacher again or name another run"
    return None


def weights_digest(state: dict[str, Tensor]) -> str:
    """sha256 of a state dict's names and tensors: equal weights give equal keys, whatever else the checkpoint file
    holds (paths, loop state), so a retrained but identical teacher reuses its cached logits."""
    return digest_arrays({name: t.detach().cpu().numpy() for name, t in state.items()})


def load_teacher(client: MlflowClient, run: Run, dm: ArrayDataModule) -> tuple[nn.Module, str]:
    """The teacher's net in eval mode with its best weights, and the sha256 of those weights (an external teacher's:
    its net as its source holds it, fed our inputs as it saw them, and the sha256 of that source)."""
    if SOURCE in run.data.tags:
        return load_external(client, run, dm)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(client.download_artifacts(run.info.run_id, CHECKPOINT, tmp))
        cfg = OmegaConf.load(client.download_artifacts(run.info.run_id, CONFIG, tmp))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net = instantiate(cfg.model, in_shape=dm.in_shape, num_classes=dm.num_classes)
    weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    net.load_state_dict(weights)
    return net.eval().requires_grad_(False), weights_digest(weights)


def teacher_device(accelerator: str) -> torch.device:
    """Where the teacher runs over the transfer set: the GPU when the trainer trains on one, else the CPU."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


BATCH_BYTES_CPU = 64 << 20  # a CPU batch's largest activation: larger ones are fresh pages to fault in every batch
MAX_ROWS = 65_536


def rows_per_batch(net: nn.Module, probe: Tensor, device: torch.device) -> int:
    """Rows per teacher batch sized by memory, not a fixed count: the net's largest activation per row (measured on
    the probe rows by forward hooks) fills at most 64 MiB on the CPU (a 2-D CNN's first convs at 4096 rows were
    hundreds of MB each, and faulting in those pages cost minutes of system time), a quarter of the free memory
    on a GPU. A net whose layers cannot be hooked (TorchScript) gets 4096 rows."""
    largest = [0]

    def measure(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    hooks = [m.register_forward_hook(measure) for m in net.modules() if not isinstance(m, torch.jit.ScriptModule)]
    try:
        net(probe.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    if not largest[0]:
        return 4096
    budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else BATCH_BYTES_CPU
    return int(np.clip(budget * len(probe) // (2 * largest[0]), 1, MAX_ROWS))  # 2: a layer's input and output


@torch.no_grad()
def _logits(net: nn.Module, x: Tensor | Standardised, batch_size: int | None = None,
            device: torch.device | str = "cpu", out: np.ndarray | None = None) -> np.ndarray:
    """The net's fp32 logits for `x` (a memory-mapped source is read a batch at a time), run on `device` in batches
    sized by memory (rows_per_batch) unless `batch_size` is given, written as they come into `out` (a memory map:
    its written pages are released as it fills) or into one new array (no list of parts and a concatenated copy)."""
    net, start, device = net.to(device), 0, torch.device(device)
    batch_size = batch_size or rows_per_batch(net, next(iter(x.split(8))), device)
    for part in x.split(batch_size):
        z = net(part.to(device, non_blocking=True)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(x), z.shape[1]), np.float32)
        out[start : start + len(z)] = z
        start += len(z)
        if isinstance(out, np.memmap) and (start // batch_size) % 16 == 0:  # written pages count in RSS until released
            out.flush()
            release(out)
    return out


def teacher_logits(net: nn.Module, weights_sha: str, dm: ArrayDataModule, cache_dir: str | Path,
                   device: torch.device | str = "cpu") -> tuple[dict[str, np.ndarray], str, bool]:
    """The teacher's logits for every split the mimic uses, from a cache keyed by the weights' hash and the
    data spec (deterministic, un-augmented inputs only), computed once. Returns the logits as memory maps of the
    cache (a paper-scale transfer set's are GBs), the cache's sha256, and whether it was a hit."""
    folder = Path(cache_dir) / f"logits-{spec_key({'teacher_weights': weights_sha, 'data': dm.spec()})}"
    inputs = dm.teacher_inputs()

    def build(allocate: Allocate) -> None:
        log.info("running the teacher over %d inputs", sum(len(v) for v in inputs.values()))
        for split, x in inputs.items():  # the teacher was built with the data's classes (check_teacher)
            _logits(net, x, device=device, out=allocate(split, (len(x), dm.num_classes), np.float32))

    arrays, hit = cached_maps(folder, build)
    _check_rows(folder, arrays, inputs)
    return arrays, folder_digest(folder), hit


def _check_rows(path: Path, arrays: dict[str, np.ndarray], inputs: dict[str, Tensor | Standardised]) -> None:
    """Refuse cached logits whose splits or row counts differ from the inputs they are keyed by."""
    if {k: len(v) for k, v in arrays.items()} != {k: len(v) for k, v in inputs.items()}:
        raise RuntimeError(f"logits cache {path} does not match the inputs it is keyed by; delete it")


def ensemble_logits(client: MlflowClient, runs: Sequence[Run], dm: ArrayDataModule, cache_dir: str | Path,
                    device: torch.device | str = "cpu") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The teachers' logits for every split the student uses (memory maps of the cache; the mean over the runs for an
    ensemble, as in the paper) and the student's lineage tags: members' weight digests, the targets' sha256, cache
    hit or miss."""
    members = [load_teacher(client, run, dm) for run in runs]
    digests = [digest for _, digest in members]
    if len(members) == 1:
        logits, sha, hit = teacher_logits(*members[0], dm, cache_dir, device)
    else:
        # the mean is cached too, keyed by the members' weights as a set (sorted: the order given does not matter,
        # and summing in one fixed order gives the same bits every time)
        key = spec_key({"ensemble_weights": sorted(digests), "data": dm.spec()})
        folder = Path(cache_dir) / f"logits-{key}"
        ordered = sorted(members, key=lambda m: m[1])

        def build(allocate: Allocate) -> None:
            each = [teacher_logits(net, digest, dm, cache_dir, device)[0] for net, digest in ordered]
            for split in each[0]:
                mean_logits([m[split] for m in each], allocate(split, tuple(each[0][split].shape), np.float32))

        arrays, hit = cached_maps(folder, build)
        _check_rows(folder, arrays, dm.teacher_inputs())
        logits, sha = arrays, folder_digest(folder)
    tags = {"teacher_weights_sha256": ",".join(digests), "teacher_logits_sha256": sha,
            "logits_cache": "hit" if hit else "miss"}
    return logits, tags


def mean_logits(logits: Sequence[np.ndarray], out: np.ndarray, rows: int = 65_536) -> np.ndarray:
    """The ensemble's targets: the members' logits averaged (in float64, stored as float32) into `out`, a block of
    rows at a time (a whole stack of paper-scale members would not fit in memory)."""
    for start in range(0, len(out), rows):
        out[start : start + rows] = np.stack([m[start : start + rows] for m in logits]).mean(0, dtype=np.float64)
    return out
