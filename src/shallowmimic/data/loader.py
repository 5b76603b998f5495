"""Batches served from in-memory tensors (or sources that gather rows by index: data/mapped.py), a batch (or a chunk
of several batches) at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

Batch = dict[str, Tensor]  # x: inputs, y: labels (-1: none), z: the teacher's logits


class Chunk(list):
    """Several consecutive batches, served as one loader item. Lightning moves an item that has a `to` method by
    calling it: one call here, where Lightning's walk over every tensor of every batch took ~40% of its per-item
    time (a profile of the bench's fit); a tensor already on the device (a loader moved at train start) is kept."""

    def to(self, device: torch.device | str) -> Chunk:
        return Chunk({k: v.to(device) for k, v in batch.items()} for batch in self)


class InMemoryLoader:
    """Serves batches sliced from in-memory tensors, a batch at a time (no per-sample collation).

    Shuffles with a generator seeded by (seed, epoch) so every DDP rank draws the same permutation, then each
    rank takes its own stride of it. With `steps` > 1 each item is a list of up to `steps` consecutive batches
    (the same batches, in the same order): the training step takes one optimizer step per batch, so Lightning's
    per-item hooks run once for several steps. `to(device)` moves the tensors once, so slicing happens there.
    A value that is not a Tensor (mapped.Standardised, mapped.Concat) is asked for each batch's rows by index
    instead of gathered whole once per epoch: a memory-mapped transfer set is never copied whole.
    """

    def __init__(self, tensors: Batch, batch_size: int, shuffle: bool, seed: int = 0, steps: int = 1) -> None:
        self.tensors, self.batch_size, self.shuffle, self.seed, self.steps = tensors, batch_size, shuffle, seed, steps
        self.epoch = 0

    def to(self, device: torch.device | str) -> InMemoryLoader:
        """Hold the tensors on `device` (a copy there; the caller's tensors stay where they are)."""
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return self

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _n_local(self) -> int:
        n = len(next(iter(self.tensors.values())))
        rank, world = self._rank_world()
        if self.shuffle:
            n -= n % world  # training: every rank takes the same number of steps, or DDP's all-reduce hangs
        return len(range(rank, n, world))

    @property
    def steps_per_epoch(self) -> int:
        """Batches (optimizer steps, in training) per epoch on this rank."""
        return -(-self._n_local() // self.batch_size)

    def __len__(self) -> int:
        return -(-self.steps_per_epoch // self.steps)

    def _batches(self) -> Iterator[Batch]:
        values = self.tensors
        n = len(next(iter(values.values())))
        rank, world = self._rank_world()
        eager = {k: v for k, v in values.items() if isinstance(v, Tensor)}  # the others gather rows per batch
        order = None
        if self.shuffle or world > 1:
            order = torch.arange(n)
            if self.shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
                order = order[: n - n % world]
            order = order[rank::world]  # evaluation: strided, so every sample is scored exactly once
            # one gather per epoch of the in-memory tensors, then cheap views
            eager = {k: v[order.to(v.device)] for k, v in eager.items()}
        self.epoch += 1
        lazy = [k for k in values if k not in eager]
        for i in range(0, n if order is None else len(order), self.batch_size):
            batch = {k: eager[k][i : i + self.batch_size] for k in eager}
            if lazy:  # rows by index, asked of each source that is not a Tensor
                idx = torch.arange(i, min(i + self.batch_size, n)) if order is None else order[i : i + self.batch_size]
                batch |= {k: values[k][idx] for k in lazy}
            yield batch

    def __iter__(self) -> Iterator[Batch] | Iterator[Chunk]:
        if self.steps == 1:
            yield from self._batches()
            return
        chunk = Chunk()
        for batch in self._batches():
            chunk.append(batch)
            if len(chunk) == self.steps:
                yield chunk
                chunk = Chunk()
        if chunk:
            yield chunk
