"""Process-group setup for torchrun (one process per GPU), and the few collectives the loops need."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from frs_cli.errors import ConfigError, FrsError, mark_job_stopped
from frs_cli.signals import ignore_closed_pipes


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - a torch.device is immutable
    local_world_size: int = 1  # processes of the job on this host (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def check_device(device: str | None) -> torch.device:
    """The device ``device`` asks for, checked before any work; ConfigError (one line) when it cannot be used.

    None: CUDA when available, else the CPU. "cpu". "cuda": a GPU (under torchrun each process takes GPU
    LOCAL_RANK). "cuda:N": GPU N of this machine, in a single process only (under torchrun LOCAL_RANK picks the
    GPU). The result's index is None where LOCAL_RANK decides.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available on this machine", hint="use --device cpu")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"--device {device}: expected cpu or cuda under torchrun, where each process uses GPU "
                          f"LOCAL_RANK, got a GPU index")
    if index >= count:
        raise ConfigError(f"--device {device}: expected a GPU index below {count} (this machine has {count} CUDA "
                          f"device{'s' if count != 1 else ''}), got {index}")
    return torch.device("cuda", index)


def setup(device: str | None = None) -> DistContext:
    """Read torchrun's environment; join the process group when there are several processes.

    ``device``: "cpu", "cuda", "cuda:N" or None (CUDA when available), checked by ``check_device``. On CUDA each
    process uses GPU LOCAL_RANK (0 without torchrun) unless "cuda:N" names one. NCCL on CUDA, gloo on CPU.
    """
    ignore_closed_pipes()
    wanted = check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = wanted.type == "cuda"
    if use_cuda:
        dev = torch.device("cuda", local_rank if wanted.index is None else wanted.index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                      device_id=dev if use_cuda else None)
    return DistContext(rank, world_size, local_rank, dev, local_world_size)


@contextlib.contextmanager
def process_group(device: str | None = None) -> Iterator[DistContext]:
    """``setup`` on entry, ``teardown`` on exit (also on error): what each command runs inside. After an error,
    a teardown that fails too (the group lost a process) leaves the first error to be reported."""
    ctx = setup(device)
    try:
        yield ctx
    except BaseException as exc:
        if isinstance(exc, (FrsError, KeyboardInterrupt)):  # a reason this process prints: the others stay quiet
            mark_job_stopped()
        with contextlib.suppress(Exception):
            teardown(ctx)
        raise
    teardown(ctx)


# what a collective says when another process of the job is gone (gloo's transport, NCCL, the TCP store)
_PEER_GONE = re.compile(r"connection (?:reset|closed|refused)|broken pipe|communicator was aborted|"
                        r"remote process exited|socket timeout|recv\b.*\bfailed|gloo/transport", re.IGNORECASE)
_COLLECTIVE = re.compile(r"gloo|nccl|c10d|processgroup", re.IGNORECASE)


def lost_a_peer(exc: BaseException) -> bool:
    """Whether ``exc``, met by one process of a torchrun job, is a collective failing because another process of
    the job stopped (its own error, if any, is that process's to report)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if isinstance(exc, getattr(torch_dist, "DistError", ())):  # DistBackendError, DistNetworkError, ...
        return True
    text = str(exc)  # a collective's error names its library: another connection's (a remote store's) does not
    return isinstance(exc, RuntimeError) and bool(_COLLECTIVE.search(text)) and bool(_PEER_GONE.search(text))


def _dotted(table: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}``."""
    out = {}
    for key, value in table.items():
        out.update(_dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


# recipe keys each process of a job may set for itself: its own loader's and writers' processes, which no other
# process waits on
PER_PROCESS = ("train.workers", "train.worker_hold", "teacher_train.workers", "teacher_train.worker_hold",
               "cache.workers", "cache.write_processes")


def check_same_job(ctx: DistContext, command: str, settings: dict) -> None:
    """Under torchrun, that every process runs the same job: ``settings`` (name -> value: the resolved recipe,
    the output, the data's digest; tables of them named by dotted keys, ``train.lr``) alike on every rank, but
    for PER_PROCESS keys.
    ConfigError on every rank, naming the first setting that differs and two ranks' values, instead of ranks that
    train apart or wait for each other for ever."""
    if not ctx.distributed:
        return
    mine = {k: v for k, v in _dotted(settings).items() if k not in PER_PROCESS}
    everyone = all_gather_objects(ctx, mine)
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], start=1):
        for key in [*first, *(k for k in theirs if k not in first)]:
            if first.get(key) != theirs.get(key):
                raise ConfigError(f"{command}: the processes of this torchrun job differ in {key}: rank 0 has "
                                  f"{first.get(key)!r}, rank {rank} has {theirs.get(key)!r}",
                                  hint="start every process with the same command, recipe and data")


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        torch_dist.barrier()


def all_gather_objects(ctx: DistContext, obj) -> list:
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj):
    if not ctx.distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    torch_dist.all_reduce(t)
    return {k: v / ctx.world_size for k, v in zip(keys, t.tolist())}


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
