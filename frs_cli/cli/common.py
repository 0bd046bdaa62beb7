"""What every command shares: the one place errors become exit codes, consoles, logging, recipe loading."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from frs_cli.errors import JOB_STOPPED, FrsError, Interrupted, job_marker
from frs_cli.files import name_too_long, plural

PIPE_WIDTH = 160  # columns a table may take in a log or pipe (where rich would assume 80)


class _ResultConsole(Console):
    """stdout: a terminal's own width; in a log or pipe at least PIPE_WIDTH, so that a table keeps its text."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)

    @size.setter
    def size(self, value) -> None:
        Console.size.fset(self, value)


console = _ResultConsole(soft_wrap=True)  # a result line is one line in a log or pipe, never broken at 80 columns
err_console = Console(stderr=True)


def say(line: str) -> None:
    """Print a result line as it is: a path in it may hold brackets (``run[v2]``), which rich would read as markup
    and drop."""
    console.print(line, markup=False, highlight=False)


def own_width(out: Console) -> int:
    """The width rich lays ``out`` out at by itself: a terminal's; in a log or pipe COLUMNS, else 80 (``console``'s
    PIPE_WIDTH aside), for output that wraps cleanly at any width (a table of prose) and so need not pass 80."""
    return Console.size.fget(out).width

PIPELINE_HELP = "Recipe: an installed name (frs recipe list) or the path of a TOML file."
SET_HELP = "Override a recipe key, e.g. --set train.epochs=2 (repeatable)."

# Options several commands take, the same everywhere (defaults of their parameters).
PIPELINE = typer.Option(..., "--pipeline", "-p", help=PIPELINE_HELP)
OVERRIDES = typer.Option([], "--set", help=SET_HELP)
DEVICE = typer.Option(None, help="cpu, cuda or cuda:N (GPU N; under torchrun each process uses GPU LOCAL_RANK) "
                                  "(default: cuda when available).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Also print informational notes on stderr (warnings are "
                                                      "always printed).")
RESUME_RUN = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
NO_EVAL = typer.Option(False, "--no-eval", help="Skip COCO evaluation on the val split; with --resume also the final "
                                                 "evaluation an earlier attempt did not record (one warning says so).")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


_times_reported: dict[str, int] = {}
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # ANSI escape sequences (colours, bold)


def first_to_report(line: str) -> bool:
    """Whether this process prints ``line``: always in a one-process run; under torchrun only the first of the job's
    processes on this host to report that same line for the n-th time (each rank meets the same bad input and would
    print it again; a line only one rank meets is printed by that rank). A marker file per line, occurrence and job
    decides, in the folder torchrun keeps for this attempt of the job (beside each process's error file; else the
    temp directory); if it cannot be made, the line is printed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    _times_reported[line] = occurrence = _times_reported.get(line, 0) + 1
    try:
        os.close(os.open(job_marker(line, occurrence), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def fail(message: str, code: int = 1):
    """Print ``message`` as one ``error:`` line (as it is: brackets in it are text, not markup) and exit. Under
    torchrun the job prints each distinct line once, not once per process (``first_to_report``). Terminal control
    codes a library put in its message (torch's pickle errors bold some words) are dropped: a log stays text."""
    message = _CONTROL.sub("", message)
    first_to_report(JOB_STOPPED)  # the job has said why it stops: the processes it leaves behind stay quiet
    if first_to_report(f"error: {message}"):
        err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turn FrsError into one line on stderr and exit 1; Ctrl-C into a clean stop with exit 130; under torchrun a
    collective that failed because another process of the job stopped into one line saying so, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        kwargs = {k: _home(v) for k, v in kwargs.items()}
        with _peer_loss_reported_before_sigterm():
            try:
                return fn(*args, **kwargs)
            except Interrupted as exc:
                _quiet_after_interrupt()
                first_to_report(JOB_STOPPED)
                if first_to_report(f"interrupted: {exc}"):
                    err_console.print(f"[yellow]interrupted:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
                raise typer.Exit(_stopped_status()) from None
            except KeyboardInterrupt:
                _quiet_after_interrupt()
                first_to_report(JOB_STOPPED)
                if first_to_report("interrupted"):
                    err_console.print("[yellow]interrupted[/]", highlight=False)
                raise typer.Exit(_stopped_status()) from None
            except FrsError as exc:
                fail(str(exc).replace("\n", " "))
            except OSError as exc:  # a name too long for the file system, wherever it was met: one line, no traceback
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                fail(str(name_too_long(exc)))
            except Exception as exc:
                if not _lost_a_peer(exc):
                    raise
                _peer_stopped(exc)

    return wrapper


def _peer_loss_reported_before_sigterm():
    """Under torchrun, a process whose collective failed because another process of the job died says so
    (``_peer_stopped``) even when torchrun's SIGTERM lands first, as it leaves the loop and the process group; any
    other SIGTERM outside the training loop still ends it at once (``signals.sigterm_spared_while``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    from frs_cli.signals import sigterm_spared_while

    return sigterm_spared_while(_lost_a_peer)


def _lost_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure because another process of this torchrun job stopped. Only where
    ``frs_cli.dist`` was imported (else no collective ran), which is not imported here: one process never imports
    torch for it, and a signal handler that asks imports nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = sys.modules.get("frs_cli.dist")
    return dist is not None and dist.lost_a_peer(exc)


def _peer_stopped(exc: Exception):
    """Exit 1 from a process whose collective failed because another process of the job stopped: one line, unless
    a process of the job on this host has already said why it stops (its refusal, its Ctrl-C: it marks that before
    it leaves the group, ``dist.process_group``), not a traceback."""
    if first_to_report(JOB_STOPPED):
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        rank = os.environ.get("RANK", "?")
        line = (f"another process of this torchrun job stopped, so process {rank} cannot go on ({reason}); its own "
                "error, if it gave one, says why; what was saved is kept, and --resume continues where the command "
                "has it")
        err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def _home(value):
    """A path argument starting with ``~`` as the home's: the shell expands ``~`` only at a word's start, so
    ``--out=~/run`` or a quoted ``'~/run'`` reaches frs as typed, and a folder named ``~`` would be made in the
    current one (which ``rm -rf ~`` then meets). Other values as they are."""
    if isinstance(value, Path) and str(value).startswith("~"):
        return Path(os.path.expanduser(value))
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if isinstance(value, list) and any(isinstance(v, Path) for v in value):  # several paths (frs report RUN...)
        return [_home(v) for v in value]
    return value


def _stopped_status() -> int:
    """The exit status of a command a signal stopped: 128 + its number, as a shell reports a process the signal
    ended (130 for Ctrl-C, 143 for SIGTERM)."""
    from frs_cli import errors

    return 128 + (errors.stop_signal or signal.SIGINT)


def _quiet_after_interrupt() -> None:
    """After a Ctrl-C the store's reads or writes still scheduled on zarr's event loop are dropped at exit, and
    asyncio logs each as "Task was destroyed but it is pending!": dozens of lines after the one that matters."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def setup_logging(verbose: bool) -> None:
    """Warnings (and with ``verbose`` notes) on stderr: through rich in a terminal; in a log file or pipe one plain
    line per record, ``warning: ...``, never wrapped (as the progress lines there)."""
    from rich.logging import RichHandler

    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    handler.addFilter(_OncePerJob())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)


class _OncePerJob(logging.Filter):
    """Under torchrun, a warning or note every process logs alike is printed once (``first_to_report``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return first_to_report(f"{record.levelname}: {record.getMessage()}")


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}".replace("\n", " ")


def load(pipeline: str, overrides: list[str] | None):
    from frs_cli.config import load_recipe

    return load_recipe(pipeline, overrides or [])


def progress_for_rank():
    """On the main process a rich bar (terminal) or plain progress lines (a log file or pipe); silence elsewhere."""
    from frs_cli.cli.progress import LineProgress, RichProgress
    from frs_cli.progress import NullProgress

    if not is_main_process():
        return NullProgress()
    return RichProgress(console=err_console) if err_console.is_terminal else LineProgress(console=err_console)


def metrics_table(title: str, rows: dict[str, dict[str, float | None]]):
    """A rich table: one row per model, one column per COCO metric (shown in %; "–" where undefined)."""
    from rich.table import Table

    from frs_cli.eval.coco_eval import METRIC_KEYS, format_metric

    table = Table("model", *METRIC_KEYS, title=escape(title))  # a title or model named by a path, as it is
    for name, m in rows.items():
        table.add_row(escape(name), *(format_metric((m or {}).get(k)) for k in METRIC_KEYS))
    return table


def iterations_run(fit) -> str:
    """``N iterations``, or for a resumed run ``N of its M iterations``: the ones this call stepped (its time and
    rate are theirs)."""
    total = plural(fit.iterations, "iteration")
    return total if fit.iterations_run == fit.iterations else f"{fit.iterations_run} of its {total}"


def _done_before_resume(fit, final_files) -> str:
    """What a resume of a run with every epoch done did: it stepped nothing; it ran the final evaluation (when it
    did) and wrote the final files."""
    evaluated = "evaluated the model and " if fit.eval_metrics is not None else ""
    return (f"its {plural(fit.iterations, 'iteration')} ran before this resume, none now; {evaluated}wrote "
            f"{' and '.join(final_files)}")


def print_complete(out, epochs: int) -> None:
    """The line of a training job whose run in ``out`` had finished its ``epochs`` already (main process)."""
    if is_main_process():
        say(f"run {str(out)!r} is already complete ({plural(epochs, 'epoch')}); nothing written")


def print_run(summary, done: str, val_split: str, row: str, data_wait: bool = False) -> None:
    """The closing lines of a training job on the main process: ``done`` (what was trained), iterations, time,
    rate (and the share of step time spent waiting for data), the model file; the val metrics under ``row``.
    A resume of a run whose every epoch was done steps nothing: its line says so, and what the call did instead."""
    if not is_main_process():
        return
    fit = summary.fit
    rate = f"{fit.images_per_second:.1f} img/s" + (f", data wait {100 * fit.data_wait_share:.1f}% of step time"
                                                   if data_wait else "")
    if fit.iterations_run == 0 < fit.iterations:
        say(f"{done}: {_done_before_resume(fit, summary.final_files)} -> {summary.out_dir}")
    else:
        say(f"{done}: {iterations_run(fit)} in {fit.seconds:.0f} s ({rate}) -> {summary.model_file}")
    if fit.eval_metrics:
        console.print(metrics_table(f"{val_split} split", {row: fit.eval_metrics}))
