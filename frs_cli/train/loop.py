"""The one training loop. Plain GT training and distillation share it; only the objective differs.

Read it top to bottom: build optimizer and schedule, maybe resume, then per epoch a sampler position, a
loader, the steps, a checkpoint and (maybe) an evaluation. Under torchrun the objective is wrapped in DDP and
each process sees its own share of every epoch; losses (and FRS's N_l) are per process, as in the original.

The saved state (``last.pt``: trainable modules, optimizer, LR schedule, AMP scaler, RNG, epoch and position
in the epoch's view order) is written at step boundaries only: at each epoch end, every
``checkpoint_every`` steps, and on Ctrl-C. ``resume`` continues from it to the same weights an uninterrupted
run reaches, whenever the process was stopped or killed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from frs_cli.data.coco import ViewSampler, collate
from frs_cli.dist import DistContext, barrier, mean_across
from frs_cli.errors import Interrupted, TrainingError
from frs_cli.files import storage_errors
from frs_cli.progress import NullProgress, Progress
from frs_cli.train.checkpoint import LAST, atomic_save, load_training_state, rng_state, set_rng_state
from frs_cli.train.config import TrainConfig
from frs_cli.train.metrics_log import MetricsLog
from frs_cli.train.rundir import check_resumed_epoch
from frs_cli.train.schedule import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    epochs: int
    iterations: int
    seconds: float
    images_per_second: float
    last_losses: dict[str, float]
    eval_metrics: dict | None
    data_wait_share: float


def _trainable_children(objective: nn.Module) -> dict[str, nn.Module]:
    """The parts of an objective that train and are checkpointed (never the teacher side)."""
    return {name: m for name, m in objective.named_children() if name != "source"}


def autocast_context(device: torch.device, enabled: bool, dtype_name: str):
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, drop_last: bool = True):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=drop_last,
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
    )


class StopRequest:
    """Ctrl-C as a request: the step in flight finishes, then the loop saves and stops at a step boundary.

    Stopping inside a step would save half-updated state (BatchNorm statistics already moved by the forward,
    or parameters mid-update). A second Ctrl-C stops at once, without saving.
    """

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (Ctrl-C again to stop at once, without saving)")

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def agreed(self, ctx: DistContext) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        if not ctx.distributed:
            return self.requested
        import torch.distributed as torch_dist

        flag = torch.tensor([1.0 if self.requested else 0.0], device=ctx.device)
        torch_dist.all_reduce(flag)
        return bool(flag.item() > 0)


def _stopped_at_once(epoch: int, step: int, saved_at, state_path: Path) -> Interrupted:
    """The second Ctrl-C: what was saved, if anything, and how to go on."""
    where = f"stopped at once at epoch {epoch + 1}, iteration {step}, without saving"
    if saved_at is None or not state_path.is_file():
        return Interrupted(f"{where}; no state was saved yet",
                           hint="run the same command again to start the run from the beginning")
    done, into = saved_at
    at = f"epoch {done + 1}, iteration {into}" if into else f"the end of epoch {done}"
    return Interrupted(f"{where}; the last saved state ({at}) is in {state_path}",
                       hint="run the same command with --resume to continue from it")


def fit(
    objective: nn.Module,
    dataset,
    cfg: TrainConfig,
    ctx: DistContext,
    out_dir: Path,
    *,
    views=("orig", "hflip"),
    resume: bool = False,
    save_outputs: Callable[[nn.Module, Path], None] | None = None,
    resumed: Callable[[], None] | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``objective`` on ``dataset`` (indexed by ``(position, view)``) for ``cfg.epochs`` epochs.

    ``views``: the views an image may be shown in, one chosen uniformly per image and epoch (orig/hflip
    = random flip with p 0.5); ``save_outputs(objective, out_dir)`` writes the final model files (main
    process); ``resumed()`` is called once a saved state is restored and checked (``resume``);
    ``evaluate(objective)`` returns val metrics (called on every process, used from the main one).
    """
    progress = progress or NullProgress()
    out_dir = Path(out_dir)
    device = ctx.device
    sampler = ViewSampler(len(dataset), views, shuffle=True, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    iters_per_epoch = len(sampler) // cfg.batch_size
    if iters_per_epoch < 1:
        raise TrainingError(f"train: {len(sampler)} images per process is fewer than one batch of {cfg.batch_size}",
                            hint="lower train.batch_size or use more images")
    objective.to(device)
    optimizer = build_optimizer(objective.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, iters_per_epoch)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and cfg.amp_dtype == "float16")
    start_epoch, start_step = 0, 0
    state_path = out_dir / LAST

    saved_at = None  # (epochs done, steps into the next) of the state in state_path, once there is one
    if resume:
        state = load_training_state(state_path)
        try:
            for name, module in _trainable_children(objective).items():
                module.load_state_dict(state["modules"][name])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"--resume: the state in {str(state_path)!r} does not fit this run's model "
                                f"({str(exc).strip().splitlines()[0][:200]})",
                                hint="resume with the recipe the run started with") from None
        set_rng_state(state["rng"])
        start_epoch, start_step = saved_at = state["epoch"], state["epoch_step"]
        if state["iters_per_epoch"] != iters_per_epoch:
            raise TrainingError(f"--resume: the state was saved with {state['iters_per_epoch']} iterations per epoch, "
                                f"this run has {iters_per_epoch} (batch size, world size or dataset changed)")
        check_resumed_epoch(start_epoch, start_step, cfg.epochs)
        if resumed is not None:
            resumed()
        progress.log(f"resumed from {state_path} at epoch {start_epoch + 1}, iteration {start_step}")

    def save_state(epoch: int, epoch_step: int) -> None:
        nonlocal saved_at
        if ctx.is_main:
            atomic_save({
                "modules": {n: m.state_dict() for n, m in _trainable_children(objective).items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch, "epoch_step": epoch_step,
                "iters_per_epoch": iters_per_epoch,
            }, state_path)
        saved_at = (epoch, epoch_step)

    model = objective
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    with storage_errors(str(out_dir / "metrics.jsonl")):
        metrics_log = MetricsLog(out_dir, tensorboard=cfg.tensorboard) if ctx.is_main else None
    t_start, images_seen, wait_total, step_total = time.perf_counter(), 0, 0.0, 0.0
    last_losses: dict[str, float] = {}
    eval_metrics = None
    stop = StopRequest()
    handlers = contextlib.ExitStack()
    handlers.enter_context(stop.installed())
    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch, start=start_step * cfg.batch_size)
            loader = make_loader(dataset, sampler, cfg.batch_size, cfg.workers, device)
            model.train()
            per_step = cfg.batch_size * ctx.world_size
            progress.start(f"epoch {epoch + 1}/{cfg.epochs}", iters_per_epoch * per_step,
                           completed=start_step * per_step, unit="img")
            step = start_step
            t_prev = time.perf_counter()
            batches = iter(loader)
            try:
                while step < iters_per_epoch:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    if batch is None:
                        break
                    batch = batch.to(device)
                    t_data = time.perf_counter() - t0
                    it = epoch * iters_per_epoch + step
                    with autocast_context(device, use_amp, cfg.amp_dtype):
                        losses = model(batch, it)
                    loss = sum(losses.values())
                    if not torch.isfinite(loss):
                        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                        raise TrainingError(f"train: non-finite loss at epoch {epoch + 1}, iteration {it}: {terms}",
                                            hint="lower the learning rate or check the data")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    now = time.perf_counter()
                    step_time, t_prev = now - t_prev, now
                    wait_total += t_data
                    step_total += step_time
                    images_seen += len(batch.image_ids) * ctx.world_size
                    last_losses = {k: float(v.detach()) for k, v in losses.items()}
                    fields = {**last_losses, "loss": float(loss.detach()), "img_s": len(batch.image_ids) * ctx.world_size / step_time}
                    progress.update(len(batch.image_ids) * ctx.world_size, **fields)
                    if metrics_log and (it % cfg.log_every == 0 or step == iters_per_epoch):
                        metrics_log.step({"epoch": epoch + 1, "iter": it, "lr": optimizer.param_groups[0]["lr"],
                                          **fields, "data_wait": t_data / step_time})
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < iters_per_epoch:
                        save_state(epoch, step)  # a kill from here on loses at most checkpoint_every steps
                    if stop.agreed(ctx):
                        save_state(epoch, step)
                        raise Interrupted(f"stopped at epoch {epoch + 1}, iteration {step}; state saved to {state_path}",
                                          hint="run the same command with --resume to continue")
            except KeyboardInterrupt:
                raise _stopped_at_once(epoch, step, saved_at, state_path) from None
            finally:
                progress.stop()
            start_step = 0
            save_state(epoch + 1, 0)
            barrier(ctx)
            last_epoch = epoch + 1 == cfg.epochs
            if evaluate is not None and (last_epoch or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
                eval_metrics = evaluate(objective)
                if ctx.is_main and eval_metrics is not None:
                    progress.log(f"epoch {epoch + 1}: " + "  ".join(
                        f"{k} {v:.3f}" if v is not None else f"{k} \u2013" for k, v in eval_metrics.items()))
                    metrics_log.eval(epoch + 1, eval_metrics, iteration=(epoch + 1) * iters_per_epoch)
        if ctx.is_main and save_outputs is not None:
            save_outputs(objective, out_dir)
        barrier(ctx)
    finally:
        handlers.close()
        if metrics_log:
            metrics_log.close()
    seconds = time.perf_counter() - t_start
    last_losses = mean_across(ctx, last_losses)
    return FitResult(
        epochs=cfg.epochs, iterations=cfg.epochs * iters_per_epoch, seconds=seconds,
        images_per_second=images_seen / seconds if seconds > 0 else math.nan, last_losses=last_losses,
        eval_metrics=eval_metrics, data_wait_share=wait_total / step_total if step_total else 0.0,
    )
