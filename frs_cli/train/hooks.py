"""What the trainer does around its steps besides stepping: metrics, checkpoints, evaluation, progress, Ctrl-C.

A hook implements any of five calls, each given the ``Trainer`` (``frs_cli.train.loop``), whose public
fields (``epoch``, ``step``, ``iteration``, ``last``, ``eval_metrics``, ``optimizer``, ...) it may read:

    before_train   once, before the first step (after a resumed state is restored)
    before_epoch   at the start of every epoch run, ``trainer.step`` = the step it starts from
    after_step     after every optimizer step, ``trainer.last`` = that step's record (the trainer may have
                   launched the next step on the device already, unless ``wants_state`` said otherwise)
    after_epoch    after the epoch's last step
    after_train    once, for every hook whose ``before_train`` returned, also when training failed
                   (``trainer.finished`` says whether every epoch ran): release what ``before_train`` took.
                   Each hook's ``after_train`` runs even when another's fails; the first failure is raised.

A sixth, ``wants_state(trainer, step) -> bool``, is asked of every hook once a step is launched, before its
``after_step``: whether that ``after_step`` (``step`` = steps done in the epoch once it finishes) will read or save
the model, optimizer, schedule or RNG state. If any hook says yes, the trainer waits for the step before it launches
the next, so the state is exactly that step's; otherwise it launches the next step first and runs the hooks while
the device works. ``Hook`` says yes: a hook that only reads ``trainer.last`` overrides it to say no.

Calls run in the order the hooks were given; an exception from a hook stops training and propagates as it
is. The order of the built-in hooks is part of the behaviour: a step is shown and logged before a checkpoint
is written, and a checkpoint before a Ctrl-C is honoured; an epoch's bar stops before its state is saved and
its state is saved before it is evaluated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from frs_cli.dist import DistContext, barrier, broadcast_object
from frs_cli.errors import Interrupted, TrainingError
from frs_cli.files import atomic_path, plural, storage_errors
from frs_cli.progress import Progress
from frs_cli.signals import sigint_handled
from frs_cli.train.checkpoint import TRAINING_SAVE_HINT, atomic_save, load_training_state, rng_state, set_rng_state
from frs_cli.train.metrics_log import METRICS_FILE, MetricsLog
from frs_cli.train.readback import HostCopy
from frs_cli.train.rundir import check_resumed_epoch

if TYPE_CHECKING:
    from frs_cli.train.loop import Trainer

log = logging.getLogger(__name__)


class Hook:
    """The hook protocol, every call a no-op: subclass and implement what you need."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_epoch(self, trainer: Trainer) -> None:
        pass

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        """Whether ``after_step`` after step ``step`` of the epoch reads or saves the training state (see above)."""
        return True

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_epoch(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of ``folder``, None when there is none."""
    try:
        st = folder.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class TrainingState:
    """The run's ``last.pt``: what trains (the objective's ``checkpointed()`` modules), optimizer, LR schedule,
    AMP scaler, RNG, and the position (epochs done, steps into the next). ``saved_at`` is that position once a
    state is in ``path`` (restored or written by this process), else None."""

    def __init__(self, path: Path, trainer: Trainer):
        self.path = Path(path)
        self.trainer = trainer
        self.saved_at: tuple[int, int] | None = None
        # the run folder as it was when the run began (None: not made yet): a state is never saved into a folder
        # removed or replaced meanwhile, where it would stand without the run's recipe and metrics
        self.folder = _folder_identity(self.path.parent) if trainer.ctx.is_main else None

    def _check_folder(self) -> None:
        now = _folder_identity(self.path.parent)
        if self.folder is None:
            self.folder = now
        elif now != self.folder:
            raise TrainingError(f"--out {str(self.path.parent)!r}: the run folder was removed or replaced while the "
                                "run went on (its recipe.json and metrics.jsonl with it); stopping without saving "
                                "into it", hint="start the run again in a new --out")

    def save(self, epoch: int, epoch_step: int) -> None:
        t = self.trainer
        if t.ctx.is_main:
            self._check_folder()
            atomic_save({
                "modules": {n: m.state_dict() for n, m in t.objective.checkpointed().items()},
                "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                "scaler": t.scaler.state_dict(), "rng": rng_state(), "epoch": epoch, "epoch_step": epoch_step,
                "iters_per_epoch": t.iters_per_epoch, "world_size": t.ctx.world_size,
            }, self.path, TRAINING_SAVE_HINT)
        self.saved_at = (epoch, epoch_step)

    def restore(self) -> tuple[int, int]:
        """Load the saved state into the trainer; the (epoch, step) it continues from. TrainingError when the
        state does not fit this run (another model, batch size, world size or dataset, or fewer epochs)."""
        t = self.trainer
        state = load_training_state(self.path)
        try:
            for name, module in t.objective.checkpointed().items():
                module.load_state_dict(state["modules"][name])
            t.optimizer.load_state_dict(state["optimizer"])
            t.scheduler.load_state_dict(state["scheduler"])
            t.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"--resume: the state in {str(self.path)!r} does not fit this run's model "
                                f"({str(exc).strip().splitlines()[0][:200]})",
                                hint="resume with the recipe the run started with") from None
        set_rng_state(state["rng"])
        epoch, step = self.saved_at = state["epoch"], state["epoch_step"]
        if state.get("world_size", t.ctx.world_size) != t.ctx.world_size:  # recorded since frs saved it
            n = state["world_size"]
            raise TrainingError(
                f"--resume: the run started with {plural(n, 'process')} of {t.cfg.batch_size} images a step each "
                f"({plural(state['iters_per_epoch'], 'iteration')} per epoch), this run has "
                f"{plural(t.ctx.world_size, 'process')} ({plural(t.iters_per_epoch, 'iteration')} per epoch): its "
                "schedule and data order follow the processes",
                hint=f"resume it with {n} processes (torchrun --nproc-per-node {n}, or as many across hosts)" if n > 1
                else "resume it in one process, without torchrun")
        if state["iters_per_epoch"] != t.iters_per_epoch:
            raise TrainingError(f"--resume: the state was saved with {state['iters_per_epoch']} iterations per epoch, "
                                f"this run has {t.iters_per_epoch} (batch size, world size or dataset changed)")
        check_resumed_epoch(epoch, step, t.cfg.epochs)
        return epoch, step

    def stopped_at_once(self, epoch: int, step: int) -> Interrupted:
        """The second Ctrl-C: what was saved, if anything, and how to go on."""
        where = f"stopped at once at epoch {epoch + 1}, iteration {step}, without saving"
        if self.saved_at is None or not self.path.is_file():
            return Interrupted(f"{where}; no state was saved yet",
                               hint="run the same command again to start the run from the beginning")
        done, into = self.saved_at
        at = f"epoch {done + 1}, iteration {into}" if into else f"the end of epoch {done}"
        return Interrupted(f"{where}; the last saved state ({at}) is in {self.path}",
                           hint="run the same command with --resume to continue from it")


class ProgressHook(Hook):
    """One progress task per epoch, in images; each step advances it and shows the step's numbers."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def before_epoch(self, trainer: Trainer) -> None:
        per_step = trainer.cfg.batch_size * trainer.ctx.world_size
        self.progress.start(f"epoch {trainer.epoch + 1}/{trainer.cfg.epochs}", trainer.iters_per_epoch * per_step,
                            completed=trainer.step * per_step, unit="img")

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        return False

    def after_step(self, trainer: Trainer) -> None:
        self.progress.update(trainer.last.images, **trainer.last.fields())

    def after_epoch(self, trainer: Trainer) -> None:
        self.progress.stop()

    def after_train(self, trainer: Trainer) -> None:
        self.progress.stop()  # a failed epoch's task


class MetricsHook(Hook):
    """``metrics.jsonl`` (and TensorBoard) on the main process: a step record every ``log_every`` iterations
    and at each epoch's last step; ``eval()`` adds an evaluation's record."""

    def __init__(self, out_dir: Path, tensorboard: bool, is_main: bool, resumed_at: tuple[int, int] | None = None):
        self.out_dir, self.tensorboard, self.is_main = Path(out_dir), tensorboard, is_main
        self.resumed_at = resumed_at  # (epochs done, steps into the next) of the state a resume continues from
        self.log: MetricsLog | None = None

    def before_train(self, trainer: Trainer) -> None:
        with storage_errors(str(self.out_dir / METRICS_FILE)):
            if self.is_main and self.resumed_at is not None:
                epoch, step = self.resumed_at
                trim_metrics(self.out_dir / METRICS_FILE, epoch * trainer.iters_per_epoch + step, epoch)
            self.log = MetricsLog(self.out_dir, tensorboard=self.tensorboard) if self.is_main else None

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        return False

    def after_step(self, trainer: Trainer) -> None:
        last = trainer.last
        if self.log and (last.iteration % trainer.cfg.log_every == 0 or trainer.step == trainer.iters_per_epoch):
            self.log.step({"epoch": trainer.epoch + 1, "iter": last.iteration, "lr": last.lr, **last.fields(),
                           "data_wait": last.data_seconds / last.seconds})

    def eval(self, epoch: int, metrics: dict, iteration: int) -> None:
        if self.log:
            self.log.eval(epoch, metrics, iteration=iteration)

    def evaluated(self, epoch: int) -> bool:
        """Whether ``metrics.jsonl`` holds an evaluation after ``epoch`` epochs (read by the main process)."""
        path = self.out_dir / METRICS_FILE
        if not (self.is_main and path.is_file()):
            return False
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "eval" in record and record.get("epoch") == epoch:
                    return True
        return False

    def after_train(self, trainer: Trainer) -> None:
        if self.log:
            self.log.close()


def trim_metrics(path: Path, steps_done: int, epochs_done: int) -> None:
    """``metrics.jsonl`` cut back to what a resume from a state after ``steps_done`` steps (``epochs_done`` whole
    epochs) keeps: the records of later steps and evaluations were written by the attempt a kill stopped after its
    last saved state, and the resumed run writes them again (before: twice, nothing telling the attempts apart)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def kept(line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False  # a line the kill cut short
        if not isinstance(record, dict):
            return True
        if "eval" in record:
            return int(record.get("epoch", 0)) <= epochs_done
        return "iter" not in record or int(record["iter"]) < steps_done

    keep = [line if line.endswith("\n") else line + "\n" for line in lines if kept(line)]
    if keep != lines:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(keep), encoding="utf-8")


class CheckpointHook(Hook):
    """The training state at every epoch end and every ``every`` steps inside an epoch (0: epoch ends only)."""

    def __init__(self, state: TrainingState, every: int):
        self.state, self.every = state, every

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        """Whether a checkpoint is due after this step (the epoch's last is saved by ``after_epoch``)."""
        return bool(self.every) and step % self.every == 0 and step < trainer.iters_per_epoch

    def after_step(self, trainer: Trainer) -> None:
        if self.wants_state(trainer, trainer.step):
            self.state.save(trainer.epoch, trainer.step)  # a kill from here on loses at most `every` steps

    def after_epoch(self, trainer: Trainer) -> None:
        self.state.save(trainer.epoch + 1, 0)
        barrier(trainer.ctx)


class EvalHook(Hook):
    """``evaluate(objective)`` after every ``every`` epochs (0: none) and after the last one, on every process;
    the main process shows the metrics and logs them (``trainer.eval_metrics`` keeps the latest). With ``evaluate``
    None (``--no-eval``) nothing is evaluated; a resume with every epoch done and no final evaluation recorded calls
    ``skipped(epochs)`` on the main process instead: the final files follow unevaluated."""

    def __init__(self, evaluate: Callable[[nn.Module], dict | None] | None, every: int, progress: Progress,
                 metrics: MetricsHook, resumed_at: tuple[int, int] | None = None,
                 skipped: Callable[[int], None] | None = None):
        self.evaluate, self.every, self.progress, self.metrics = evaluate, every, progress, metrics
        self.resumed_at = resumed_at  # (epochs done, steps into the next) of the state a resume continues from
        self.skipped = skipped

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        return False

    def before_train(self, trainer: Trainer) -> None:
        """A resume from the end of an epoch whose evaluation is due but not in ``metrics.jsonl`` (it failed, or the
        run stopped before it): that evaluation now, before the next epoch or, with every epoch done, before the
        final files are written, as the run that was never stopped made it."""
        done, step = self.resumed_at or (0, 0)
        if self.evaluate is None:  # --no-eval: a final evaluation not recorded is skipped, with a word
            if (done, step) == (trainer.cfg.epochs, 0) and self.skipped and trainer.ctx.is_main \
                    and not self.metrics.evaluated(done):
                self.skipped(done)
        elif (step == 0 and self._due(done, trainer.cfg.epochs)
                and not broadcast_object(trainer.ctx, self.metrics.evaluated(done))):
            self._evaluate(trainer, done)

    def after_epoch(self, trainer: Trainer) -> None:
        done = trainer.epoch + 1
        if self.evaluate is not None and self._due(done, trainer.cfg.epochs):
            self._evaluate(trainer, done)

    def _due(self, done: int, epochs: int) -> bool:
        """Whether an evaluation follows epoch ``done`` (1-based): every ``every`` epochs, and after the last."""
        return done > 0 and (done == epochs or bool(self.every and done % self.every == 0))

    def _evaluate(self, trainer: Trainer, done: int) -> None:
        trainer.eval_metrics = metrics = self.evaluate(trainer.objective)
        if trainer.ctx.is_main and metrics is not None:
            from frs_cli.eval.coco_eval import format_metric  # in percent, as every table shows them

            self.progress.log(f"epoch {done}, val box mAP (%): " + "  ".join(
                f"{k} {format_metric(v)}" for k, v in metrics.items()))
            self.metrics.eval(done, metrics, iteration=done * trainer.iters_per_epoch)


class OutputsHook(Hook):
    """The final model files, written by ``save(objective, out_dir)`` on the main process once training finished
    (also when a resumed run had no epoch left to run)."""

    def __init__(self, save: Callable[[nn.Module, Path], None], out_dir: Path):
        self.save, self.out_dir = save, Path(out_dir)

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        return False

    def after_train(self, trainer: Trainer) -> None:
        if not trainer.finished:
            return
        if trainer.ctx.is_main:
            self.save(trainer.objective, self.out_dir)
        barrier(trainer.ctx)


class StopRequest:
    """Ctrl-C as a request: the step in flight finishes, then the loop saves and stops at a step boundary.

    Stopping inside a step would save half-updated state (BatchNorm statistics already moved by the forward,
    or parameters mid-update). A second Ctrl-C stops at once, without saving (``KeyboardInterrupt``).
    """

    def __init__(self):
        self.requested = False
        self._agreeing: HostCopy | None = None  # under torchrun, the agreement in flight

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if signum == signal.SIGTERM:
            log.warning("terminated (SIGTERM): stopping after this step and saving the state (a second signal "
                        "stops at once, without saving)")
        else:
            log.warning("stopping after this step (Ctrl-C again to stop at once, without saving)")

    @contextlib.contextmanager
    def installed(self):
        with sigint_handled(self._handler):
            yield self

    def agreed(self, ctx: DistContext) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step). Called once a step
        on every process. Under torchrun the answer is the one all processes reached at the call before: each
        call starts the next agreement on the device without waiting for it, and reads the last one, which the
        device finished with the step before. The host so never waits for the step in flight, and a request is
        honoured one step later than in a single process."""
        if not ctx.distributed:
            return self.requested
        import torch.distributed as torch_dist

        decided = self._agreeing is not None and self._agreeing.tolist()[0] > 0
        flag = torch.full((1,), 1.0 if self.requested else 0.0, device=ctx.device)  # no copy from the host
        torch_dist.all_reduce(flag, async_op=True).wait()  # on a GPU the stream waits, not the host
        self._agreeing = HostCopy(flag)
        return decided


class InterruptHook(Hook):
    """Ctrl-C during training: after the step in flight, every process saves the state and raises Interrupted."""

    def __init__(self, state: TrainingState):
        self.state = state
        self.stop = StopRequest()
        self._stop_after: tuple[int, int] | None = None  # (epoch, step) the processes agreed to stop after
        self._installed = contextlib.ExitStack()

    def before_train(self, trainer: Trainer) -> None:
        self._installed.enter_context(self.stop.installed())

    def wants_state(self, trainer: Trainer, step: int) -> bool:
        """Whether the processes agreed to stop after this step, decided before the next one is launched."""
        self._stop_after = (trainer.epoch, step) if self.stop.agreed(trainer.ctx) else None
        return self._stop_after is not None

    def after_step(self, trainer: Trainer) -> None:
        if self._stop_after == (trainer.epoch, trainer.step):
            self.state.save(trainer.epoch, trainer.step)
            barrier(trainer.ctx)  # no process exits (and gets torchrun to end the others) before the state is saved
            raise Interrupted(f"stopped at epoch {trainer.epoch + 1}, iteration {trainer.step}; state saved to "
                              f"{self.state.path}", hint="run the same command with --resume to continue")

    def after_train(self, trainer: Trainer) -> None:
        self._installed.close()
