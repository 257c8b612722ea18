"""torch.distributed under ``torchrun``: who this process is, and the few collectives the stages use.

``torchrun --nproc-per-node N -m infoq_deploy profile ...`` (or ``finetune``) starts N copies of the
command with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment; ``world()`` joins them in a
gloo process group on first use, and is a world of one otherwise, so a stage's code is the same
whether or not it is distributed. Gloo also all-reduces CUDA tensors (DDP on GPUs), more slowly
than NCCL, which would need each rank's device set before the group exists.

The collectives carry Python objects (``all_gather_object``): what the
stages exchange is small (ΔSMI values per run, activation ranges, a selection of observers), never
activations. A ``UserError`` (or a crash) on one rank must not leave the others waiting for it at
the next collective until gloo's timeout, so every exchange carries an error slot: ``on_main`` and
``gather`` raise the same one-sentence error on every rank.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from infoq_deploy.core.errors import UserError

T = TypeVar("T")

# The subcommands that know how to split their work; any other under torchrun would run N times
DISTRIBUTED_COMMANDS = ("profile", "finetune")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD: World | None = None


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def world() -> World:
    """This process's rank and the number of processes; joins the process group on first call."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched():
        _WORLD = World()
        return _WORLD
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run the command without torchrun")
    if not dist.is_initialized():
        try:
            # the agent's store outlives a restart (torchrun --max-restarts): without a prefix per
            # attempt, a restarted rank can read a dead rank's address from the attempt before
            store, rank, size = next(dist.rendezvous("env://"))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend="gloo", store=dist.PrefixStore(f"infoq-deploy/attempt-{attempt}", store),
                                    rank=rank, world_size=size)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"could not join the torchrun process group ({' '.join(str(exc).split())[:200]}); "
                            "check torchrun's --rdzv/--master settings") from None
        atexit.register(_leave)
    _WORLD = World(dist.get_rank(), dist.get_world_size())
    return _WORLD


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _exchange(payload, w: World) -> list:
    import torch.distributed as dist

    out: list = [None] * w.size
    dist.all_gather_object(out, payload)
    return out


def _raise_first(results: list) -> None:
    for rank, (status, value) in enumerate(results):
        if status == "error":
            raise UserError(value)
        if status == "crash":
            raise UserError(f"rank {rank} of the torchrun job failed ({value}); see its output above")


def _run(fn: Callable[[], T]):
    try:
        return ("ok", fn()), None
    except UserError as exc:
        return ("error", str(exc)), exc
    except Exception as exc:  # a bug on this rank: the others stop with a sentence, this one re-raises
        return ("crash", f"{type(exc).__name__}: {exc}"[:300]), exc


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` computed once, on rank 0, and the same value returned on every rank."""
    w = world()
    if not w.distributed:
        return fn()
    result, exc = _run(fn) if w.main else (None, None)
    results = _exchange(result, w)
    if exc is not None and results[0][0] == "crash":
        raise exc
    _raise_first(results[:1])
    return results[0][1]


def gather(fn: Callable[[], T]) -> list[T]:
    """``fn()`` on every rank; every rank gets the list of all ranks' values, in rank order."""
    w = world()
    if not w.distributed:
        return [fn()]
    result, exc = _run(fn)
    results = _exchange(result, w)
    if exc is not None and result[0] == "crash":
        raise exc
    _raise_first(results)
    return [value for _, value in results]


def shard(items: Sequence[T], costs: Sequence[float], w: World | None = None) -> list[T]:
    """This rank's contiguous run of ``items`` (kept in order), the runs about equal in total cost.

    Contiguous, because a sweep in cut order advances its shared prefix once per shard; balanced
    by cost, because a perturbation near the input evaluates a longer suffix than one near the
    output. The split depends only on (items, costs, size), so every rank computes the same one.
    """
    w = w or world()
    if w.size == 1:
        return list(items)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    bounds = [0]
    for r in range(1, w.size):  # the cut whose prefix cost is nearest r/size of the total
        target = prefix[-1] * r / w.size
        best = min(range(bounds[-1], len(items) + 1), key=lambda b: (abs(prefix[b] - target), b))
        bounds.append(best)
    bounds.append(len(items))
    return list(items[bounds[w.rank]:bounds[w.rank + 1]])


def all_sum(values: Sequence[float]) -> list[float]:
    """Each value summed over the ranks (float64), on every rank."""
    w = world()
    if not w.distributed:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    """Wait for every rank (rank 0 has written what the others are about to read)."""
    if world().distributed:
        import torch.distributed as dist

        dist.barrier()
