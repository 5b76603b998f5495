"""Your own deep net as the teacher: a torch.export file (.pt2), a TorchScript file (.pt, .ts), any PyTorch-flavour
MLflow model (`models:/...`, `runs:/...`) logged by any project, or a state dict (teacher.checkpoint) for a net built
from config (teacher.net, Hydra's instantiate). It is checked on this data once, then becomes a teacher
run of its own (role teacher, its source and sha256 as tags, its accuracy on this data's splits), so students, reuse,
the report and Figure 3 treat it as any teacher."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path

import mlflow.artifacts
import mlflow.pytorch
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from shallowmimic.checks import build
from shallowmimic.data import ArrayDataModule
from shallowmimic.errors import UserError
from shallowmimic.tracking.keys import NOTE, ROLE, SELECT_ON, TEST_ACC, VARIANT
from shallowmimic.tracking.registry import teacher_run_id
from shallowmimic.tracking.search import get_run
from shallowmimic.tracking.store import Store, using_store

# the tags of an external teacher's run (NET: the teacher.net config a state dict's net is built from, as JSON)
SOURCE, SHA, INPUTS, NET = "teacher.source", "teacher.sha256", "teacher.inputs", "teacher.net"
PROBE_ROWS = 64


class FromStandardised(nn.Module):
    """An external net that was trained on raw inputs, fed our standardised ones: undoes the standardisation first."""

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        """(B, *in_shape) standardised -> the net's (B, C) logits on the raw inputs."""
        return self.net(x * self.std + self.mean)


def our_teacher(client: MlflowClient, source: str) -> str | None:
    """The teacher run of ours whose model a models:/ URI names (it teaches from its checkpoint, as teacher.run_id
    does), or None: the net comes from elsewhere (a file, a runs:/ URI, a model other code logged)."""
    if not source.startswith("models:/"):
        return None
    run = get_run(client, teacher_run_id(client, source) or "")
    ours = run is not None and run.data.tags.get(ROLE) == "teacher" and SOURCE not in run.data.tags
    return run.info.run_id if ours else None


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes, in name order). The file MLflow adds to a
    registered model's download names the version or alias asked for, not the net: it is left out, so one net
    has one hash by whichever URI it is named."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.name != REGISTERED_MODEL_META_FILE_NAME]
    for file in sorted(p for p in files if p.is_file()):
        h.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def in_eval(net: nn.Module) -> nn.Module:
    """The net in eval mode, frozen (a torch.export module has no train/eval switch: it was exported in one)."""
    try:
        net.eval()
    except NotImplementedError:
        pass
    for parameter in net.parameters():  # one by one: a TorchScript module has no requires_grad_()
        parameter.requires_grad_(False)
    return net


def load_script(path: str) -> nn.Module:
    """A TorchScript file; torch's deprecation of TorchScript is for those who write it: users still hold such files."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        return torch.jit.load(path, map_location="cpu")


def load_source(client: MlflowClient, source: str, net: dict | None = None) -> tuple[nn.Module, str]:
    """The net a file or MLflow model URI of the client's store holds (or, given `net`, the net that config builds
    with the weights of the state dict at `source`), and its sha256; one line naming the key when it cannot be."""
    if net is not None:
        return load_state_dict(Path(source), net)
    key = f"teacher.model={source}"
    try:
        if source.startswith(("models:/", "runs:/")):
            with using_store(client):  # MLflow resolves a URI in the global store, which may be another one
                local = Path(mlflow.artifacts.download_artifacts(source))  # once: hashed, then loaded from here
            return in_eval(mlflow.pytorch.load_model(str(local))), sha256_of(local)
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{key}: no such file; give a .pt2 (torch.export), .pt or .ts (TorchScript) file or a "
                            "model URI (models:/..., runs:/...)")
        loader = {".pt2": lambda p: torch.export.load(p).module(), ".pt": load_script, ".ts": load_script}
        if path.suffix not in loader:
            raise UserError(f"{key}: {path.suffix or 'no suffix'} is not a model file we load; give .pt2, .pt or .ts")
        return in_eval(loader[path.suffix](str(path))), sha256_of(path)
    except ModuleNotFoundError as err:  # a pickled model whose class is not importable here
        raise UserError(f"{key}: the model needs module {err.name!r}, which is not installed here; install it or "
                        "log the model as pt2 (serialization_format='pt2'), which needs no classes") from None
    except MlflowException as err:
        raise UserError(f"{key}: not a PyTorch model in this store ({err.message.splitlines()[0][:160]})") from None
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{key}: cannot be loaded as a PyTorch model ({str(err).splitlines()[0][:160]})") from None


def load_state_dict(path: Path, net_cfg: dict) -> tuple[nn.Module, str]:
    """teacher.net built by Hydra's instantiate, with the weights of the state dict at `path` (a plain
    `torch.save(net.state_dict())`, or a Lightning checkpoint's `state_dict` with its attribute prefix), and the
    sha256 of the file and the config together."""
    key = f"teacher.checkpoint={path}"
    if not path.is_file():
        raise UserError(f"{key}: no such file; give a state dict (torch.save(net.state_dict(), path)) or a .ckpt")
    net = build("teacher.net", OmegaConf.create(net_cfg))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs on load
    except (RuntimeError, OSError, pickle.UnpicklingError) as err:
        raise UserError(f"{key}: not a state dict torch.load reads ({str(err).splitlines()[0][:160]})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"{key}: holds a {type(state).__name__}, not a state dict (a dict of tensors)")
    misfit = f"{key}: its weights do not fit teacher.net={net_cfg['_target_']}"
    try:
        missing, unexpected = net.load_state_dict(without_prefix(state, net.state_dict().keys()), strict=False)
    except RuntimeError as err:  # a tensor of another shape: torch lists each under a heading line
        first = (str(err).strip().splitlines()[1:] or [str(err)])[0]
        raise UserError(f"{misfit} ({first.strip()[:200]})") from None
    if missing or unexpected:
        raise UserError(f"{misfit} (missing: {', '.join(missing[:4]) or 'none'}; unexpected: "
                        f"{', '.join(unexpected[:4]) or 'none'})")
    config = json.dumps(net_cfg, sort_keys=True).encode()
    return in_eval(net), hashlib.sha256(sha256_of(path).encode() + config).hexdigest()


def without_prefix(state: dict[str, Tensor], names: Iterable[str]) -> dict[str, Tensor]:
    """The state dict with the prefix a wrapper gave its keys removed (`net.`, `model.`: a LightningModule's
    attribute), when that makes them the net's own names; else as it is."""
    names = set(names)
    if set(state) == names:
        return state
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state}):
        inner = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if set(inner) == names:
            return inner
    return state


def given(teacher: DictConfig) -> list[tuple[str, dict | None]]:
    """The nets teacher.model (one, or a list) and teacher.checkpoint with teacher.net name, as (source, net
    config) pairs; one line when one of the two checkpoint keys comes without the other."""
    models = teacher.get("model")
    models = [] if models is None else [models] if isinstance(models, str) else list(models)
    checkpoint, net = teacher.get("checkpoint"), teacher.get("net")
    if (checkpoint is None) != (net is None):
        missing = "teacher.net" if net is None else "teacher.checkpoint"
        raise UserError(f"{missing}=null: teacher.checkpoint and teacher.net come together (a state dict and the "
                        "{_target_: your_pkg.YourNet, ...} config that builds its net)")
    if net is not None and "_target_" not in net:
        raise UserError("teacher.net: needs a _target_ (the class that builds the net, e.g. "
                        "teacher.net={_target_:my_pkg.MyNet,width:64})")
    pairs: list[tuple[str, dict | None]] = [(str(m), None) for m in models]
    return pairs + ([(str(checkpoint), OmegaConf.to_container(net, resolve=True))] if checkpoint else [])


def fed(net: nn.Module, dm: ArrayDataModule, inputs: str) -> nn.Module:
    """The net as it takes our standardised inputs: behind FromStandardised when it was made for raw ones."""
    return FromStandardised(net, dm.mean, dm.std) if inputs == "raw" else net


def probe(net: nn.Module, dm: ArrayDataModule, key: str) -> None:
    """Refuse, in one line naming `key`, a net (fed our inputs) that does not take this data or does not give logits
    for its classes."""
    x = dm.splits["val"]["x"][:PROBE_ROWS]
    shape = "(N, " + ", ".join(map(str, dm.in_shape)) + ")"
    with torch.no_grad():
        try:
            first, second = net(x), net(x)
        except Exception as err:  # the net's own error: a shape it refuses, a dtype
            raise UserError(f"{key}: the net refuses inputs of shape {shape} ({str(err).splitlines()[0][:160]})") \
                from None
    if not isinstance(first, Tensor) or tuple(first.shape) != (len(x), dm.num_classes):
        got = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise UserError(f"{key}: its output is {got} for inputs {shape}; it must be (N, {dm.num_classes}), one logit "
                        f"per class of {dm.name}")
    if not torch.isfinite(first).all():
        raise UserError(f"{key}: its outputs are not finite (NaN or inf) on {dm.name}'s validation rows")
    if ((first >= 0) & (first <= 1)).all() and torch.allclose(first.sum(1), torch.ones(len(x)), atol=1e-4):
        raise UserError(f"{key}: its outputs look like probabilities (rows in [0, 1] summing to 1); give a net that "
                        "returns logits or log-probabilities (drop its final softmax)")
    if not torch.equal(first, second):
        raise UserError(f"{key}: two forward passes over the same inputs differ after eval(): the net keeps "
                        "randomness (dropout in training mode, sampling); its logits cannot be cached as targets")


def accuracy(net: nn.Module, dm: ArrayDataModule, split: str, batch: int = 1024) -> float:
    """The net's accuracy (fed our inputs) on one of this data's splits."""
    x, y = dm.splits[split]["x"], dm.splits[split]["y"]
    with torch.no_grad():
        hits = sum(int((net(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
                   for i in range(0, len(y), batch))
    return hits / len(y)


def teacher_run(store: Store, source: str, net_cfg: dict | None, inputs: str, data_params: dict[str, str],
                dm: ArrayDataModule) -> Run:
    """The teacher run of an external net on this data: the one made before for the same net (sha256), inputs and
    splits, or a new one, with the net checked and its accuracy measured once."""
    net, sha = load_source(store.client, source, net_cfg)
    split = data_params["data.split_sha256"]
    done = store.search(f"tags.`{SHA}` = '{sha}' and tags.`{INPUTS}` = '{inputs}' and "
                        f"params.`data.split_sha256` = '{split}' and attributes.status = 'FINISHED'",
                        order_by=["attributes.start_time ASC"], max_results=1)
    if done:
        return done[0]
    params = {"data.name": dm.name, "model.name": type(net).__name__, "teacher.inputs": inputs,
              "n_params": str(sum(p.numel() for p in net.parameters()))} | data_params  # all frozen: count them all
    net = fed(net, dm, inputs)
    key = f"teacher.model={source}" if net_cfg is None else f"teacher.checkpoint={source}"
    probe(net, dm, key)
    name = source.split(":/", 1)[1] if source.startswith(("models:/", "runs:/")) else Path(source).name
    tags = {ROLE: "teacher", SOURCE: source, SHA: sha, INPUTS: inputs, VARIANT: f"external {name}",
            NOTE: f"**teacher** from `{source}` (sha256 `{sha[:12]}`), fed {inputs} inputs of **{dm.name}**: an "
                  "external net, measured once on this data's splits."}
    tags |= {NET: json.dumps(net_cfg, sort_keys=True)} if net_cfg is not None else {}
    run_id = store.start_run(f"teacher external {name}", tags, params)
    val, test = accuracy(net, dm, "val"), accuracy(net, dm, "test")
    for key, value in {SELECT_ON: val, "val/acc": val, TEST_ACC: test}.items():
        store.client.log_metric(run_id, key, value)
    store.client.set_terminated(run_id, "FINISHED")
    return store.client.get_run(run_id)


def load_external(client: MlflowClient, run: Run, dm: ArrayDataModule) -> tuple[nn.Module, str]:
    """An external teacher run's net, fed our standardised inputs, and the digest its logits cache is keyed by."""
    source, sha, inputs = (run.data.tags[k] for k in (SOURCE, SHA, INPUTS))
    net, now = load_source(client, source, json.loads(run.data.tags[NET]) if NET in run.data.tags else None)
    if now != sha:
        raise UserError(f"teacher.run_id={run.info.run_id}: its source {source} changed since it was measured "
                        f"(sha256 {now[:12]}, was {sha[:12]}); give it again as teacher.model= "
                        "(or teacher.checkpoint=)")
    return fed(net, dm, inputs), hashlib.sha256(f"{sha} {inputs}".encode()).hexdigest()
