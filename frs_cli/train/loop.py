"""The one training loop. Plain GT training and distillation share it; only the objective differs.

Read it top to bottom: ``fit`` builds a ``Trainer`` (optimizer, LR schedule, AMP scaler), maybe restores a
saved state, and runs it with its hooks (``frs_cli.train.hooks``: progress, metrics, checkpoints, evaluation,
Ctrl-C, the final model files). ``Trainer.run_step`` is one optimizer step. Under torchrun the objective is
wrapped in DDP and each process sees its own share of every epoch; losses (and FRS's N_l) are per process, as
in the original.

The saved state (``last.pt``: the objective's checkpointed modules, optimizer, LR schedule, AMP scaler, RNG,
epoch and position in the epoch's view order) is written at step boundaries only: at each epoch end, every
``checkpoint_every`` steps, and on Ctrl-C. ``resume`` continues from it to the same weights an uninterrupted
run reaches, whenever the process was stopped or killed.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from frs_cli.data.canvas_batches import CanvasBatchSampler, RunBatches, view_canvases
from frs_cli.data.coco import Batch, ViewSampler, collate
from frs_cli.data.geometry import view_name
from frs_cli.data.packed import WORKER_HOLD, hold_in_worker
from frs_cli.data.prefetch import DevicePrefetcher
from frs_cli.dist import DistContext, mean_across
from frs_cli.errors import TrainingError
from frs_cli.files import plural
from frs_cli.progress import NullProgress, Progress
from frs_cli.train.checkpoint import LAST
from frs_cli.train.config import TrainConfig
from frs_cli.train.hooks import (
    CheckpointHook,
    EvalHook,
    Hook,
    InterruptHook,
    MetricsHook,
    OutputsHook,
    ProgressHook,
    TrainingState,
)
from frs_cli.train.readback import HostCopy
from frs_cli.train.schedule import build_optimizer, build_scheduler
from frs_cli.train.step_graphs import StepGraphs

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from frs_cli.train.objectives import Objective


def train_channels_last(objective: Objective) -> None:
    """``train.channels_last``: what trains (the objective's ``checkpointed`` modules: the student, the adapters)
    laid out channels-last, so that their 4-D weights, and with them their gradients, are NHWC; the teacher's side
    is left as it was built."""
    for module in objective.checkpointed().values():
        module.to(memory_format=torch.channels_last)


@dataclass
class FitResult:
    epochs: int
    iterations: int  # of the whole schedule
    iterations_run: int  # stepped in this call (a resumed run: since it resumed)
    seconds: float  # of this call
    images_per_second: float
    last_losses: dict[str, float]
    eval_metrics: dict | None
    data_wait_share: float


@dataclass
class StepRecord:
    """One finished optimizer step, as hooks see it."""

    iteration: int  # global index of the step (epoch * iters_per_epoch + step within the epoch)
    losses: dict[str, float]  # the objective's named terms
    loss: float  # their sum, the minimised value
    images: int  # images of the step over all processes
    data_seconds: float  # waiting for the batch
    seconds: float  # its share of the epoch's wall time (its batch, its step, the hooks before it; ``Trainer._finish``)
    lr: float = math.nan  # the first parameter group's learning rate after the step's scheduler update

    def fields(self) -> dict[str, float]:
        """What progress shows and metrics log of every step: each term, ``loss`` and ``img_s``."""
        return {**self.losses, "loss": self.loss, "img_s": self.images / self.seconds}


def flip_views(hflip_prob: float, resolution: int = 100) -> tuple[str, ...]:
    """Views to choose from uniformly so that an image is flipped with probability ``hflip_prob``: ``orig`` and
    ``hflip`` repeated in the ratio of the nearest fraction k/n with n <= ``resolution`` (within 0.5/resolution
    of ``hflip_prob``; 0.5 gives exactly ``("orig", "hflip")``, 0 ``("orig",)``, 1 ``("hflip",)``)."""
    share = Fraction(hflip_prob).limit_denominator(resolution)
    flips, n = share.numerator, share.denominator
    return ("orig",) * (n - flips) + ("hflip",) * flips


def training_views(hflip_prob: float, min_sizes, geometry) -> tuple[str, ...]:
    """Views to choose from uniformly per image and epoch: ``flip_views(hflip_prob)`` at each of ``min_sizes`` (the
    recipe's ``train.min_sizes``; empty: ``geometry.min_size`` alone), so that the flip and the short side are
    drawn independently, the short side uniformly."""
    sizes = tuple(min_sizes) or (geometry.min_size,)
    return tuple(view_name(flip, size, geometry) for size in sizes for flip in flip_views(hflip_prob))


def autocast_context(device: torch.device, enabled: bool, dtype_name: str):
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


class PendingLosses:
    """One step's losses on their way to the host: copied off the device as the step ends, without waiting for it.

    ``read()`` waits for that step alone, not for the steps launched after it; the copy is taken at once because a
    replayed CUDA graph's outputs are overwritten by its next replay. On the CPU it is a plain copy."""

    def __init__(self, losses: dict[str, Tensor], loss: Tensor):
        self.names = list(losses)
        self._copy = HostCopy(torch.stack([t.detach().float().reshape(()) for t in (*losses.values(), loss)]))

    def ready(self) -> bool:
        """Whether the step is done without waiting for it (on the CPU, always: its launch ran it)."""
        return self._copy.ready()

    def read(self) -> tuple[dict[str, float], float]:
        """The named terms and their sum (as the step summed them) as floats."""
        values = self._copy.tolist()
        return dict(zip(self.names, values[:-1], strict=True)), values[-1]


@dataclass
class _Launched:
    """A step on the device whose losses the host has not read yet."""

    iteration: int
    done: int  # the epoch's steps done once it has finished (its own index in the epoch, plus one)
    losses: PendingLosses
    images: int
    data_seconds: float
    lr: float
    launched_at: float  # time.perf_counter() once the host had launched it


def make_loader(dataset, batches: Iterable[list], workers: int, device: torch.device, hold: int = WORKER_HOLD):
    """The training DataLoader over ``batches`` (lists of keys; the trainer's: ``RunBatches``, the rest of its run);
    each worker keeps its last ``hold`` batches (``train.worker_hold``)."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=functools.partial(hold_in_worker, hold) if workers > 0 else None,
    )


def _warn_long_warmups(table: str, cfg: TrainConfig, distill_cfg, steps: int) -> None:
    """One warning per warm-up longer than the whole run of ``steps`` steps: the LR's (``cfg``, of recipe table
    ``table``) never reaches its value, the FRS terms' (``distill_cfg``: an FRS objective's ``DistillConfig``)
    never their full weight."""
    for key, length, what in ((f"{table}.warmup_iters", cfg.warmup_iters, f"the LR never reaches {table}.lr"),
                              ("distill.warmup_iters", getattr(distill_cfg, "warmup_iters", None),
                               "the FRS terms never reach their full weight")):
        if length is not None and length > steps:
            log.warning("%s = %d is longer than the whole run (%s), so %s", key, length, plural(steps, "step"), what)


class Trainer:
    """Steps an ``Objective`` over ``dataset`` (indexed by ``(position, view)``) for ``cfg.epochs`` epochs.

    Hooks read its public fields: ``epoch`` (0-based, the epoch running), ``step`` (steps done in it),
    ``iteration``, ``last`` (the latest ``StepRecord``), ``eval_metrics``, ``finished``, and ``objective``,
    ``optimizer``, ``scheduler``, ``scaler``, ``cfg``, ``ctx``, ``iters_per_epoch``, ``batches`` (the epoch's
    batches of keys), ``loader`` (the DataLoader whose workers serve every epoch), ``graphs`` (``StepGraphs``
    under ``train.cuda_graphs``, else None). With ``cfg.group_by_canvas``
    the dataset also gives ``geometry_of(position, view)``. ``table``: the recipe table ``cfg`` came from
    (``train``, or ``teacher_train`` for ``frs train --role teacher``), named in errors about its keys.
    """

    def __init__(self, objective: Objective, dataset, cfg: TrainConfig, ctx: DistContext, views: Sequence[str],
                 table: str = "train"):
        self.cfg, self.ctx, self.dataset = cfg, ctx, dataset
        sampler = ViewSampler(len(dataset), views, shuffle=True, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
        canvases = view_canvases(dataset, views) if cfg.group_by_canvas else None
        self.batches = CanvasBatchSampler(sampler, cfg.batch_size, canvases)
        self.iters_per_epoch = len(self.batches)
        if self.iters_per_epoch < 1:
            raise TrainingError(f"{table}: {len(sampler)} images per process is fewer than one batch of "
                                f"{cfg.batch_size}", hint=f"lower {table}.batch_size or use more images")
        if ctx.is_main:
            _warn_long_warmups(table, cfg, getattr(objective, "cfg", None), self.iters_per_epoch * cfg.epochs)
        self.objective = objective.to(ctx.device)
        if cfg.channels_last:
            train_channels_last(objective)
        self.optimizer = build_optimizer(objective, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.iters_per_epoch)
        self.use_amp = cfg.amp and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.use_amp and cfg.amp_dtype == "float16")
        # train.cuda_graphs: one process (DDP's hooks are not captured), no loss scaling (its scale changes per step)
        graphs = (cfg.cuda_graphs and ctx.device.type == "cuda" and not ctx.distributed and not self.scaler.is_enabled()
                  and hasattr(objective, "graph_inputs"))
        self.graphs = StepGraphs(objective) if graphs else None
        self.model: nn.Module = objective
        self.epoch, self.step = 0, 0
        self.last: StepRecord | None = None
        self.eval_metrics: dict | None = None
        self.finished = False
        self.images_seen, self.data_seconds, self.step_seconds = 0, 0.0, 0.0
        self._t_prev = 0.0  # where the wall-time share of ``last`` ended (``_finish``)
        self._running = 0  # the step of the epoch launched last (the one a second Ctrl-C stops in)
        # the rest of the run's batches as one stream (RunBatches): its DataLoader, the prefetcher over it and the
        # (epoch, step) its next batch is for; made by the first epoch, its workers serve every later one
        self._loader, self._feed, self._feed_at = None, None, None

    @property
    def iteration(self) -> int:
        """Global index of the step after ``last`` (the next one whose losses the hooks will see)."""
        return self.epoch * self.iters_per_epoch + self.step

    def run_step(self, batch: Batch, it: int) -> tuple[dict[str, Tensor], Tensor]:
        """One optimizer step on ``batch`` as iteration ``it``: forward (autocast), backward, clip, update. Returns
        the objective's named loss terms and their sum, still on the device: nothing here waits for it. With
        ``train.cuda_graphs`` a batch of one canvas runs forward and backward as one replayed CUDA graph
        (``StepGraphs``), which sets the gradients the backward would have."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.ctx.device, self.use_amp, self.cfg.amp_dtype):
            graphed = self.graphs.step(batch, it) if self.graphs is not None else None
            if graphed is None:
                losses = self.model(batch, it)
        if graphed is not None:
            losses, loss = graphed
        else:
            loss = sum(losses.values())
            self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.objective.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, loss

    def read_losses(self, losses: PendingLosses, it: int) -> tuple[dict[str, float], float]:
        """Step ``it``'s terms and their sum as floats (the host's one wait for the device in a step), or
        TrainingError when the sum is not finite. The check comes after the update: the host never waits for a
        forward pass before launching the backward one. The update a non-finite loss made is never saved: each
        step's losses are read before any hook sees it, and a hook that saves the state makes the trainer
        wait for the step before it launches the next (``Hook.wants_state``)."""
        values, total = losses.read()
        if not math.isfinite(total):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise TrainingError(f"train: non-finite loss at epoch {self.epoch + 1}, iteration {it}: {terms}",
                                hint="lower the learning rate or check the data")
        return values, total

    def run_epoch(self, hooks: Sequence[Hook]) -> None:
        """The steps of ``self.epoch`` from ``self.step`` on, each followed by the hooks' ``after_step``.

        The host runs one step ahead of the hooks: it launches step k on the device, then reads step k-1's losses
        and runs its hooks while the device works on step k, so that the device does not idle while the host
        waits and then launches. It waits for step k itself before launching k+1 when a hook will read or save
        the training state after step k (``Hook.wants_state``) and at the epoch's last step; the state a hook
        sees is then exactly that step's."""
        self.batches.set_epoch(self.epoch, start=self.step * self.cfg.batch_size)
        batches = self._feed_from(self.epoch, self.step)
        self.model.train()
        self._t_prev = time.perf_counter()
        launched, pending = self.step, None
        self._running = self.step
        while launched < self.iters_per_epoch:
            waited = batches.data_seconds
            batch = next(batches, None)
            if batch is None:
                break
            self._feed_at = (self.epoch, launched + 1) if launched + 1 < self.iters_per_epoch else (self.epoch + 1, 0)
            t_data = batches.data_seconds - waited
            it = self.epoch * self.iters_per_epoch + launched
            self._running = launched
            lr = self.optimizer.param_groups[0]["lr"]  # the step's own: run_step moves the schedule on after it
            losses, loss = self.run_step(batch, it)
            launched += 1
            step = _Launched(it, launched, PendingLosses(losses, loss), len(batch.image_ids) * self.ctx.world_size,
                             t_data, lr, time.perf_counter())
            if pending is not None:  # the step before, while the device runs this one
                self._finish(pending, hooks)
            pending = step
            wanted = [hook.wants_state(self, launched) for hook in hooks]  # every hook asked, every step
            if launched == self.iters_per_epoch or any(wanted):
                self._finish(pending, hooks)
                pending = None
        if pending is not None:
            self._finish(pending, hooks)

    @property
    def loader(self) -> torch.utils.data.DataLoader | None:
        """The training DataLoader, whose one iteration serves the rest of the run (``RunBatches``); None before
        the first epoch and once ``stop_workers`` has let it go."""
        return self._loader

    def _feed_from(self, epoch: int, step: int) -> DevicePrefetcher:
        """The batches from step ``step`` of epoch ``epoch`` on, each copied to the device on a side stream while
        the step before it runs: the run's stream as it stands when it is there, else a new one from there."""
        if self._feed is None or self._feed_at != (epoch, step):
            self.stop_workers()
            run = RunBatches(self.batches, epoch, step * self.cfg.batch_size, self.cfg.epochs)
            self._loader = make_loader(self.dataset, run, self.cfg.workers, self.ctx.device, self.cfg.worker_hold)
            self._feed, self._feed_at = DevicePrefetcher(self._loader, self.ctx.device), (epoch, step)
        return self._feed

    def stop_workers(self) -> None:
        """Let the training DataLoader and its workers go; the next epoch starts new ones. ``train`` calls it as
        it ends, however it ends."""
        if self._feed is not None:
            self._feed.close()  # its iterator (the workers) is let go even where a traceback holds the prefetcher
        self._loader, self._feed, self._feed_at = None, None, None

    def _finish(self, step: _Launched, hooks: Sequence[Hook]) -> None:
        """Read a launched step's losses, record it as ``last`` and run the hooks' ``after_step``.

        The step's ``seconds`` is its share of the epoch's wall time: from where the share of the step before it
        ended (the epoch's start for the first) to when the step was done. A step the host did not have to wait
        for was done once its launch returned (on the CPU the launch runs it): its share ends there, not when it
        is read, which is after the next step has run (one step ahead) or at once (the epoch's last step). A step
        the host waits for ends when the wait does. The shares follow one another, so their sum is the time the
        epoch's steps took, and each one's ``img_s`` is images over the time they took."""
        ready = step.losses.ready()
        values, total = self.read_losses(step.losses, step.iteration)
        self.step = step.done
        end = step.launched_at if ready and step.launched_at >= self._t_prev else time.perf_counter()
        step_time, self._t_prev = end - self._t_prev, end
        self.images_seen += step.images
        self.data_seconds += step.data_seconds
        self.step_seconds += step_time
        self.last = StepRecord(step.iteration, values, total, step.images, step.data_seconds, step_time, step.lr)
        for hook in hooks:
            hook.after_step(self)

    def train(self, hooks: Sequence[Hook], state: TrainingState, start: tuple[int, int] = (0, 0)) -> None:
        """Every epoch from ``start`` (epoch, step) with ``hooks``; ``state`` names what a second Ctrl-C left."""
        if self.ctx.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None)
        started: list[Hook] = []
        try:
            for hook in hooks:
                hook.before_train(self)
                started.append(hook)
            for epoch in range(start[0], self.cfg.epochs):
                self.epoch, self.step = epoch, start[1] if epoch == start[0] else 0
                for hook in hooks:
                    hook.before_epoch(self)
                try:
                    self.run_epoch(hooks)
                except KeyboardInterrupt:  # the second Ctrl-C (hooks.StopRequest)
                    raise state.stopped_at_once(self.epoch, self._running) from None
                for hook in hooks:
                    hook.after_epoch(self)
            self.finished = True
        finally:
            self.stop_workers()
            _after_train(started, self)


def _after_train(hooks, trainer: Trainer) -> None:
    """Every hook's ``after_train``, even when one of them fails; the first failure is raised after all ran."""
    error = None
    for hook in hooks:
        try:
            hook.after_train(trainer)
        except BaseException as exc:  # noqa: BLE001 (re-raised below, once every hook has let go)
            error = error or exc
    if error is not None:
        raise error


def _resumed_line(path: Path, start: tuple[int, int], epochs: int) -> str:
    """What a resume logs once its saved state is restored: the epoch and step it continues from, or that the run
    finished every epoch (its final evaluation or model files were not written: they follow, nothing is trained)."""
    if start == (epochs, 0):
        return f"resumed from {path}: the run already finished its {plural(epochs, 'epoch')}; nothing to train"
    return f"resumed from {path} at epoch {start[0] + 1}, iteration {start[1]}"


def fit(
    objective: Objective,
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
    hooks: Sequence[Hook] = (),
    table: str = "train",
    started: Callable[[], None] | None = None,
    skipped_eval: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``objective`` on ``dataset`` (indexed by ``(position, view)``) for ``cfg.epochs`` epochs.

    ``views``: the views an image may be shown in, one chosen uniformly per image and epoch (orig/hflip
    = random flip with p 0.5; ``flip_views`` gives another probability); ``save_outputs(objective, out_dir)``
    writes the final model files (main process); ``resumed()`` is called once a saved state is restored and
    checked (``resume``); ``evaluate(objective)`` returns val metrics (called on every process, used from the
    main one); ``hooks`` run after the built-in ones; ``table``: the recipe table ``cfg`` came from (``Trainer``);
    ``started()`` is called once the trainer is built, before anything is restored or written: a setting no run
    can use (a batch larger than the split) is refused before the caller makes the run directory.
    ``skipped_eval(epochs)`` is called on the main process when a resume finds every epoch done and no final
    evaluation in ``metrics.jsonl`` while ``evaluate`` is None (``--no-eval``): the final files follow unevaluated
    (``EvalHook`` decides both).
    """
    progress = progress or NullProgress()
    out_dir = Path(out_dir)
    trainer = Trainer(objective, dataset, cfg, ctx, views, table)
    if started is not None:
        started()
    state = TrainingState(out_dir / LAST, trainer)
    start = (0, 0)
    if resume:
        start = state.restore()
        if resumed is not None:
            resumed()
        progress.log(_resumed_line(state.path, start, cfg.epochs))
    metrics = MetricsHook(out_dir, cfg.tensorboard, ctx.is_main, resumed_at=start if resume else None)
    built_in: list[Hook] = [ProgressHook(progress), metrics, CheckpointHook(state, cfg.checkpoint_every),
                            EvalHook(evaluate, cfg.eval_every, progress, metrics, resumed_at=start if resume else None,
                                     skipped=skipped_eval)]
    if save_outputs is not None:
        built_in.append(OutputsHook(save_outputs, out_dir))
    built_in.append(InterruptHook(state))  # lets go of Ctrl-C after the final files are written
    t_start = time.perf_counter()
    trainer.train([*built_in, *hooks], state, start)
    seconds = time.perf_counter() - t_start
    return FitResult(
        epochs=cfg.epochs, iterations=cfg.epochs * trainer.iters_per_epoch, seconds=seconds,
        iterations_run=max(0, (cfg.epochs - start[0]) * trainer.iters_per_epoch - start[1]),
        images_per_second=trainer.images_seen / seconds if seconds > 0 else math.nan,
        last_losses=mean_across(ctx, trainer.last.losses if trainer.last else {}), eval_metrics=trainer.eval_metrics,
        data_wait_share=trainer.data_seconds / trainer.step_seconds if trainer.step_seconds else 0.0,
    )
