"""The bench's command line: measure each shape, record it as a role=bench MLflow run, print the table."""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Metric

from shallowmimic.bench import scale
from shallowmimic.bench.contenders import bench_config, lightning_sps, make_net, plain_sps, random_data
from shallowmimic.bench.extras import extras
from shallowmimic.bench.timing import Spread, fmt, interleaved, paired_ratios, table
from shallowmimic.errors import redact
from shallowmimic.nets import n_params
from shallowmimic.tracking.descriptions import git_commit, variant
from shallowmimic.tracking.run import Run
from shallowmimic.tracking.store import open_store


@dataclass(frozen=True)
class Shape:
    """One student and its data: input dimension, hidden width, bottleneck rank, batch size, training rows."""

    name: str
    in_dim: int
    width: int
    rank: int | None
    batch: int
    inputs: int


# MNIST-1D's mimic: 40 inputs, ~200k training + transfer rows an epoch; the paper's TIMIT mimic: 1845 inputs, a
# 250-unit bottleneck, 8192 hidden units (rows cut to an epoch of seconds on a CPU)
SHAPES = {"mnist1d": Shape("mnist1d", 40, 2048, None, 256, 200_000),
          "paper": Shape("paper", 1845, 8192, 250, 256, 12_800)}
KEYS = {"in": "in_dim", "w": "width", "k": "rank", "b": "batch", "n": "inputs"}


def parse_shape(text: str) -> Shape:
    """A preset (mnist1d, paper), optionally changed: `mnist1d:n=50000`, or given whole: `in=40,w=64,k=4,b=256,n=2000`
    (k=none: no bottleneck)."""
    base, _, spec = text.partition(":") if text.split(":")[0] in SHAPES else ("mnist1d", ":", text)
    fields = {**SHAPES[base].__dict__, "name": text}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise argparse.ArgumentTypeError(f"{item}: keys are {', '.join(KEYS)}")
        fields[KEYS[key]] = None if value.lower() in ("none", "null") else int(value)
    return Shape(**fields)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults take about four minutes on 2 CPU cores."""
    p = argparse.ArgumentParser(prog="python -m shallowmimic.bench", description=sys.modules["shallowmimic.bench"]
                                .__doc__.split("\n")[0])
    p.add_argument("--shape", type=parse_shape, nargs="+", default=[SHAPES["mnist1d"], SHAPES["paper"]],
                   help="mnist1d, paper, either with changes (paper:n=25600), or in=40,w=64,k=none,b=256,n=2000")
    p.add_argument("--repeats", type=int, default=5, help="rounds of (a) (b) (c), interleaved, and a closing (a)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per repeat, at least (whole epochs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: as train.py, outputs/mlflow.db)")
    p.add_argument("--outputs", default=None, help="outputs folder (default: the project's outputs/)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="Hydra overrides of the composed train config, e.g. loop.steps_per_batch=8 loop.compile=true")
    p.add_argument("--against", nargs="+", default=[], metavar="KEY=VALUE",
                   help="also (b) with these overrides instead, interleaved, e.g. loop.steps_per_batch=8: "
                        "prints (b)/(b') round by round")
    p.add_argument("--profile", action="store_true", help="also one (b) fit under Lightning's SimpleProfiler")
    p.add_argument("--extras", action="store_true", help="also cached vs online targets, and GFLOP/s vs a matmul")
    p.add_argument("--online-steps", type=int, default=100, help="--extras: steps per epoch, cached vs online")
    p.add_argument("--matmul-seconds", type=float, default=0.5, help="--extras: time spent measuring the matmul")
    scale.add_arguments(p)
    return p.parse_args(argv)


def measure(shape: Shape, args: argparse.Namespace, run_id: str, cfg: object) -> dict[str, float]:
    """(a), (b) and (c) interleaved over `args.repeats` rounds; medians, spreads and paired ratios as metrics."""
    data, val = random_data(shape.inputs, shape.in_dim), random_data(max(500, shape.inputs // 100), shape.in_dim, 1)
    # one plain epoch untimed: warms the BLAS threads, and sizes a repeat to at least min_seconds of whole epochs
    started = time.perf_counter()
    plain_sps(make_net(cfg, shape.in_dim), data, shape.batch, 2, max_steps=max(1, shape.inputs // shape.batch // 4))
    epoch_s = (time.perf_counter() - started) * 4 / 2
    epochs = 1 + max(1, math.ceil(args.min_seconds / epoch_s))  # + 1 warm-up epoch
    run_dir = Path(cfg.paths.outputs) / "bench" / run_id
    contenders = {"plain": lambda: plain_sps(make_net(cfg, shape.in_dim), data, shape.batch, epochs),
                  "lightning": lambda: lightning_sps(cfg, data, run_id, epochs)}
    if args.against:  # (b'), right after (b): the same shape with the --against overrides
        other = bench_config(shape.width, shape.rank, shape.batch, args.tracking_uri, args.outputs,
                             [*args.set, *args.against])
        contenders["against"] = lambda: lightning_sps(other, data, run_id, epochs)
    contenders["full"] = lambda: lightning_sps(cfg, data, run_id, epochs, val=val, run_dir=run_dir)
    results = interleaved(contenders, args.repeats)
    spreads = {name: Spread.of(values) for name, values in results.items()} | {
        f"ratio_{name}_plain": ratio for name, ratio in paired_ratios(results, "plain").items()}
    if args.against:  # by round, neighbours in time; (b) always goes first: swap --set and --against to check order
        spreads["ratio_lightning_against"] = Spread.of(
            [ours / theirs for ours, theirs in zip(results["lightning"], results["against"], strict=True)])
    metrics = {"bench/epochs_timed": float(epochs - 1), "bench/plain_epoch_s": shape.inputs / spreads["plain"].median,
               "bench/full_epoch_s": shape.inputs / spreads["full"].median}
    for name, s in spreads.items():
        key = name if name.startswith("ratio") else f"{name}_sps"
        metrics |= {f"bench/{key}": s.median, f"bench/{key}_low": s.low, f"bench/{key}_high": s.high}
    if args.extras:
        metrics |= extras(cfg, data, spreads["plain"].median, args.online_steps, args.matmul_seconds)
    if args.profile:  # where (b)'s time goes, by Lightning hook: logged with the run, its head printed
        lightning_sps(cfg, data, run_id, epochs, profile=run_dir)
        report = run_dir / "fit-profile.txt"
        open_store(cfg.logger).client.log_artifact(run_id, str(report))
        head = "\n".join(report.read_text().splitlines()[:24])
        print(f"\n{shape.name}: Lightning's SimpleProfiler of one (b) fit\n{head}")
    return metrics


def bench_one(shape: Shape, args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    """Measure one shape as a role=bench MLflow run; return its name and metrics."""
    cfg = bench_config(shape.width, shape.rank, shape.batch, args.tracking_uri, args.outputs, args.set)
    store = open_store(cfg.logger)
    client = store.client
    params = {"shape": shape.name, "in_dim": str(shape.in_dim), "width": str(shape.width), "rank": str(shape.rank),
              "batch_size": str(shape.batch), "n_inputs": str(shape.inputs), "repeats": str(args.repeats),
              "torch_threads": str(torch.get_num_threads()), "overrides": " ".join(args.set),
              "against": " ".join(args.against),
              "steps_per_batch": str(cfg.loop.steps_per_batch), "compile": str(cfg.loop.compile),
              "n_params": str(n_params(make_net(cfg, shape.in_dim)))}
    tags = {"role": "bench", "git_commit": git_commit(), "tracking_uri": redact(str(cfg.logger.tracking_uri)),
            "inputs": "random", "variant": variant(cfg), "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "stderr_tty": str(sys.stderr.isatty())}  # a progress bar costs more drawing to a terminal than a file
    name = f"{shape.name} {variant(cfg)} b={shape.batch}"
    run_id = store.start_run(f"bench {name}", tags, params)
    with Run(client, run_id, Path(cfg.paths.outputs) / "bench", resumed=False).closing():
        metrics = measure(shape, args, run_id, cfg)
        metrics["bench/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        metrics["bench/load_1m"] = os.getloadavg()[0]
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    return name, metrics


COLUMNS = [("plain/s (a)", "plain_sps", "{:,.0f}"), ("lightning/s (b)", "lightning_sps", "{:,.0f}"),
           ("full/s (c)", "full_sps", "{:,.0f}"), ("(b)/(a)", "ratio_lightning_plain", "{:.3f}"),
           ("(c)/(a)", "ratio_full_plain", "{:.3f}")]


def logged(metrics: dict[str, float], key: str) -> Spread:
    """The spread a shape's run logged as bench/<key>, bench/<key>_low and bench/<key>_high."""
    return Spread(*(metrics[f"bench/{key}{end}"] for end in ("", "_low", "_high")))


def main(argv: list[str] | None = None) -> list[tuple[str, dict[str, float]]]:
    """Run every shape, print the table, return (run name, metrics) per shape (or, with --scale, the memory bench's
    figures)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale is not None:
        return [("scale", scale.run_scale(args))]
    rows = [bench_one(shape, args) for shape in args.shape]
    cells = [[name, *(fmt(logged(m, k), f) for _, k, f in COLUMNS),
              f"{m['bench/plain_epoch_s']:.2f}", f"{m['bench/full_epoch_s']:.2f}"] for name, m in rows]
    print(f"\nsamples/s of student training, median [min-max] of {args.repeats} interleaved repeats of "
          f"{', '.join(str(int(m['bench/epochs_timed'])) for _, m in rows)} timed epoch(s) each; "
          f"{torch.get_num_threads()} torch threads; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(["shape", *(h for h, _, _ in COLUMNS), "epoch s (a)", "epoch s (c)"], cells))
    print("(a) plain PyTorch loop; (b) our Lightning path, training only; (c) the full path of `train` (validation, "
          "checkpoints, MLflow logging each epoch). Goals: (b)/(a) >= 0.95, (c)/(a) >= 0.9; ratios by round, "
          "over the mean of the (a) either side.")
    busiest = max(float(m["bench/load_1m"]) for _, m in rows)
    # the load average counts the bench's own torch threads: beyond them, other jobs took cores (spreads widen,
    # threads spin-wait on each other)
    if busiest - torch.get_num_threads() > 0.5:
        print(f"warning: load average up to {busiest:.1f} on {os.cpu_count()} cores with "
              f"{torch.get_num_threads()} torch thread(s) here: other work shared the machine, "
              "so these figures are noisy (see the spreads); rerun on a quiet machine"
              + (" or with --threads 1" if torch.get_num_threads() > 1 else ""))
    if args.against:
        for name, m in rows:
            print(f"{name}: (b)/(b') {fmt(logged(m, 'ratio_lightning_against'), '{:.3f}')} by round, (b') = (b) with "
                  f"{' '.join(args.against)}")
    if args.extras:
        print(table(["shape", "cached/online", "GFLOP/s", "matmul GFLOP/s", "(d) ratio"], [
            [n, f"{m['bench/ratio_cached_online']:.2f}", f"{m['bench/gflops']:.1f}", f"{m['bench/matmul_gflops']:.1f}",
             f"{m['bench/ratio_gflops_matmul']:.2f}"] for n, m in rows]))
    return rows
