"""Throughput of student training against a plain PyTorch loop, on the same data, model and batch size.

    python -m shallowmimic.bench                        # MNIST-1D's shape and the paper's, ~4 minutes on 2 cores
    python -m shallowmimic.bench --shape mnist1d --repeats 5 --extras
    python -m shallowmimic.bench --shape paper:n=25600 mnist1d:b=1024
    python -m shallowmimic.bench --shape mnist1d --against loop.steps_per_batch=8   # (b) vs (b'), same rounds
    python -m shallowmimic.bench --scale               # peak RSS at paper scale: 1M x 1845 pool (bench/scale.py)

(a) a plain loop, (b) our Lightning path training only, (c) the full path `train` runs each epoch (validation,
checkpoints, MLflow logging): see contenders.py. They run interleaved (a b c a b c ... a) for several repeats of at
least --min-seconds each; the table gives medians with their min-max, and (b)/(a), (c)/(a) by round, each over the
mean of the (a) either side, so a drift of the machine's speed hits every contender alike. Inputs are random
(already standardised) with random logits: speed does not depend on the values. Each shape is one MLflow run
tagged role=bench, in the store train.py uses, with the load average before and after. With another job on the
cores, `--threads 1` gives steadier figures.
"""

from shallowmimic.bench.cli import SHAPES, main, parse_shape
from shallowmimic.bench.contenders import bench_config, lightning_sps, plain_sps, random_data
from shallowmimic.bench.extras import linear_macs

__all__ = ["SHAPES", "bench_config", "lightning_sps", "linear_macs", "main", "parse_shape", "plain_sps",
           "random_data"]
