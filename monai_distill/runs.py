"""Shared run infrastructure of every bundle: one run per output directory, a visible status, clean CLI errors.

A workflow wraps the body of its ``run()`` in :func:`guarded_run`::

    with guarded_run(self.output_dir, final_artefacts=("synthetic.pt", "metrics.json")):
        ...  # the work

which gives it

- a lock, ``output_dir/.run.lock`` (:class:`OutputDirLock`): a second run on the same directory stops at once with
  a message naming the holder (pid, host, command); a lock left by a killed run (same host, process gone) is taken
  over with a warning;
- a status, ``output_dir/status.json`` (:func:`run_status`): ``running`` while it works, then ``finished`` or
  ``failed`` (with the one-line error; the traceback goes to ``output_dir/error.log``); the final artefacts a failed
  run wrote are moved into ``output_dir/failed/`` so that nothing left in ``output_dir`` looks like a finished result.

Bundles build their workflow as a callable (``"_mode_": "callable"``) and run it through :func:`cli_main`
(``"run": ["$monai_distill.runs.cli_main(@workflow)"]``): any error ends the process with exit code 1 and the
project's message as the last line of stderr (``monai-distill: error: ...``) instead of MONAI's generic
``Failed to evaluate ConfigExpression``. Python-API users calling ``Workflow(...).run()`` get the exception itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .utils import atomic_write_json, check_output_dir

__all__ = [
    "ERROR_LOG",
    "FAILED_DIR",
    "LOCK_NAME",
    "STATUS_NAME",
    "TRACEBACK_ENV",
    "MultiProcessError",
    "OutputDirLock",
    "RunError",
    "cli_call",
    "cli_main",
    "error_message",
    "guarded_run",
    "one_line_errors",
    "read_status",
    "refuse_multiprocess_without_config",
    "run_status",
    "set_determinism",
]

logger = logging.getLogger("monai_distill")

LOCK_NAME = ".run.lock"
STATUS_NAME = "status.json"
ERROR_LOG = "error.log"
FAILED_DIR = "failed"
# Set to 1 to get the original exception and its traceback from cli_main instead of the one-line message.
TRACEBACK_ENV = "MONAI_DISTILL_TRACEBACK"
# A lock file younger than this that cannot be read is being written by another process, not left by a dead one.
_LOCK_GRACE_SECONDS = 5.0


class RunError(Exception):
    """A user-facing error: the message names the culprit (option or file), what was expected and what was found."""


class MultiProcessError(RunError, RuntimeError):
    """Several processes were started (``torchrun``) but the bundle's multi-GPU config was not given."""


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _host() -> str:
    return socket.gethostname()


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        argv[0] = "-m monai.bundle"
    return " ".join([Path(sys.executable).name, *argv])


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    # A killed child that its parent has not reaped yet is a zombie: gone for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def error_message(error: BaseException) -> str:
    """One line for the user: the project's own message, or ``Type: message`` for anything unexpected."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])  # str(KeyError) wraps the message in quotes
    else:
        text = str(error)
    text = " ".join(text.split())
    expected = (RunError, ValueError, KeyError, FileNotFoundError, PermissionError, TypeError, FloatingPointError)
    if not text:
        return type(error).__name__
    return text if isinstance(error, expected) else f"{type(error).__name__}: {text}"


def read_status(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``status.json`` of ``output_dir``, or ``None`` when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(output_dir) / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------------------------------
class OutputDirLock:
    """One run per output directory: ``output_dir/.run.lock`` holds ``{pid, host, started, command}``.

    The lock file is created atomically (``O_CREAT | O_EXCL``). A lock held by a live process makes
    :meth:`acquire` raise a :class:`RunError` naming the directory, the holder and what to do. A stale lock (its
    process is gone on this host, or the file is unreadable and older than a few seconds) is taken over with a
    logged warning. A lock from another host cannot be checked and counts as held. Leaving the context removes it.

    Args:
        output_dir: the directory (created if needed; it must be writable).
        command: recorded in the lock; default: this process's command line.
    """

    def __init__(self, output_dir: str | os.PathLike, command: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self.command = command if command is not None else _command()
        self.info: dict[str, Any] = {}
        self._held = False

    def _create(self) -> bool:
        """Try to create the lock file; ``False`` if it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _holder(self) -> dict[str, Any] | None:
        """The JSON of the existing lock; ``None`` if it is unreadable (corrupt, or vanished meanwhile)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stale_reason(self, holder: dict[str, Any] | None) -> str | None:
        """Why the existing lock is stale, or ``None`` if its holder may still be running."""
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it vanished"
            return f"it is unreadable and {age:.0f} s old" if age > _LOCK_GRACE_SECONDS else None
        try:
            pid = int(holder.get("pid"))
        except (TypeError, ValueError):
            return "it names no valid pid"
        if holder.get("host") == _host() and not _pid_alive(pid):
            return f"its process {pid} on {holder.get('host')} is no longer running"
        return None

    def acquire(self) -> OutputDirLock:
        """Take the lock (see the class docstring).

        Raises:
            RunError: another live run holds the directory.
            PermissionError: the directory cannot be created or written.
        """
        check_output_dir(self.output_dir)
        self.info = {"pid": os.getpid(), "host": _host(), "started": _now(), "command": self.command}
        for _ in range(5):
            if self._create():
                self._held = True
                return self
            holder = self._holder()
            reason = self._stale_reason(holder)
            if reason is None:
                who = holder or {}
                raise RunError(
                    f"output_dir '{self.output_dir}' is in use by another run (pid {who.get('pid', '?')} on host "
                    f"{who.get('host', '?')}, started {who.get('started', '?')}: {who.get('command', '?')}); "
                    "wait for it to finish or choose another --output_dir. If no such run is active, delete "
                    f"'{self.path}'."
                )
            # Take it over: rename it away first, so that of two processes taking over only one succeeds.
            aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            logger.warning("output_dir %s: taking over a stale lock (%s)%s", self.output_dir, reason,
                           f"; it was {holder}" if holder is not None else "")
        raise RunError(f"output_dir '{self.output_dir}': could not take the lock '{self.path}' (others keep taking "
                       "it); retry, or choose another --output_dir.")

    def release(self) -> None:
        """Remove the lock file if this object holds it (and it is still ours)."""
        if not self._held:
            return
        self._held = False
        holder = self._holder()
        if holder is None or (holder.get("pid") == os.getpid() and holder.get("host") == _host()):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------------------------------
def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _quarantine(output_dir: Path, names: Iterable[str], before: dict[str, tuple | None]) -> list[str]:
    """Move the artefacts this run wrote (new or changed since ``before``) into ``output_dir/failed/``."""
    moved = []
    for name in names:
        src = output_dir / name
        now = _fingerprint(src)
        if now is None or now == before.get(name):
            continue
        dst = output_dir / FAILED_DIR / name
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(src, dst)
            moved.append(f"{FAILED_DIR}/{name}")
        except OSError as e:  # never hide the run's own error behind this one
            logger.warning("could not move %s to %s: %s", src, dst, e)
    return moved


@contextmanager
def run_status(output_dir: str | os.PathLike, final_artefacts: Iterable[str] = (),
               extra: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Record the run in ``output_dir/status.json``: ``running``, then ``finished`` or ``failed``.

    On an exception (also ``KeyboardInterrupt``) the status gets ``error`` (one line), ``error_type`` and ``ended``,
    the full traceback goes to ``output_dir/error.log``, and every file of ``final_artefacts`` that this run wrote
    (absent or different when it started) is moved into ``output_dir/failed/`` (listed under ``moved_to_failed``);
    then the exception propagates. Files of an earlier run that this run did not touch stay where they are.

    Args:
        output_dir: the run's directory (created if needed).
        final_artefacts: names, relative to ``output_dir``, of what a finished run leaves (``synthetic.pt``, ...).
        extra: further fields for ``status.json`` (e.g. the workflow's name).

    Yields:
        The status dict (callers may add fields; they are written with the final status).
    """
    out = check_output_dir(output_dir)
    names = list(dict.fromkeys(str(n) for n in final_artefacts))
    before = {n: _fingerprint(out / n) for n in names}
    status: dict[str, Any] = {"status": "running", "pid": os.getpid(), "host": _host(), "started": _now(),
                              "command": _command(), **(extra or {})}
    status_path = out / STATUS_NAME
    atomic_write_json(status, status_path)
    (out / ERROR_LOG).unlink(missing_ok=True)  # an earlier run's error no longer describes this directory
    try:
        yield status
    except BaseException as e:
        status.update(status="failed", error=error_message(e), error_type=type(e).__name__, ended=_now())
        try:
            (out / ERROR_LOG).write_text(
                f"{status['started']} -> {status['ended']}  {status['command']}\n\n"
                + "".join(traceback.format_exception(type(e), e, e.__traceback__))
            )
            status["error_log"] = ERROR_LOG
            moved = _quarantine(out, names, before)
            if moved:
                status["moved_to_failed"] = moved
            atomic_write_json(status, status_path)
            e._monai_distill_error_log = str(out / ERROR_LOG)  # type: ignore[attr-defined]
        except OSError as write_error:
            logger.warning("could not record the failure in %s: %s", out, write_error)
        raise
    status.update(status="finished", ended=_now())
    atomic_write_json(status, status_path)


@contextmanager
def guarded_run(output_dir: str | os.PathLike, final_artefacts: Iterable[str] = (),
                extra: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """:class:`OutputDirLock` + :func:`run_status` around a workflow's ``run()`` body.

    Under ``torch.distributed`` only rank 0 locks and writes the status (the ranks of one job share the directory);
    other ranks get an empty dict.

    Args:
        output_dir: the run's directory.
        final_artefacts: see :func:`run_status`.
        extra: see :func:`run_status`.
    """
    if not _is_main_process():
        yield {}
        return
    with OutputDirLock(output_dir), run_status(output_dir, final_artefacts, extra) as status:
        yield status


# ---------------------------------------------------------------------------------------------------------------------
# multi-process launch
# ---------------------------------------------------------------------------------------------------------------------
def refuse_multiprocess_without_config(bundle_name: str, multi_gpu_config: str = "multi_gpu_train.json") -> None:
    """Raise if ``torchrun`` started several processes but nobody initialised ``torch.distributed``.

    Each process would otherwise run the whole job and all of them would write the same files.

    Args:
        bundle_name: the bundle (or workflow) named in the message.
        multi_gpu_config: the bundle's config that calls ``init_process_group``.

    Raises:
        MultiProcessError: ``$WORLD_SIZE`` > 1 without an initialised process group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        world = int(text)
    except ValueError:
        raise MultiProcessError(f"$WORLD_SIZE must be a whole number, got '{text}'.") from None
    if world > 1:
        raise MultiProcessError(
            f"WORLD_SIZE={world} but torch.distributed is not initialised, so every process of {bundle_name} would "
            f"run the whole job and write the same files: under torchrun add configs/{multi_gpu_config} to the "
            f"--config_file list (e.g. --config_file \"['.../configs/train.json','.../configs/{multi_gpu_config}']\")."
        )


# ---------------------------------------------------------------------------------------------------------------------
# bundle entry point
# ---------------------------------------------------------------------------------------------------------------------
@contextmanager
def _cli_errors() -> Iterator[None]:
    """Turn any ``Exception`` into ``SystemExit("monai-distill: error: <message>")`` (see :func:`cli_main`)."""
    try:
        yield
    except Exception as e:
        if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes"):
            raise
        logger.debug("run failed", exc_info=True)
        message = error_message(e)
        log = getattr(e, "_monai_distill_error_log", None)
        if log and message.startswith(f"{type(e).__name__}:"):  # unexpected error: point at the traceback
            message += f" (traceback in {log})"
        line = f"monai-distill: error: {message}"
        _record_for_torchrun(line)
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(line) from e


def _record_for_torchrun(line: str) -> None:
    """Under ``torchrun`` (which prints its own failure summary last) put ``line`` into that summary.

    torchrun gives each worker an error file (``$TORCHELASTIC_ERROR_FILE``) and shows its ``py_callstack`` as the
    failed rank's ``traceback``.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    with suppress(OSError):
        Path(path).write_text(json.dumps(data))


def cli_main(factory: Callable[[], Any]) -> Any:
    """Build the workflow with ``factory()`` and run it; any error exits with the project's message as last line.

    Bundle configs declare their workflow with ``"_mode_": "callable"`` (MONAI then gives a ``functools.partial``)
    and run ``"$monai_distill.runs.cli_main(@workflow)"``. An exception is logged with its traceback at DEBUG
    level (the run's ``error.log`` has it too once the run had started), then turned into
    ``SystemExit("monai-distill: error: <message>")``: exit code 1, and the message is the last line on stderr.
    ``SystemExit`` is not an ``Exception``, so MONAI's ``Failed to evaluate ConfigExpression`` wrapper lets it
    through. With ``$MONAI_DISTILL_TRACEBACK=1`` the original exception propagates instead.

    Args:
        factory: builds the workflow (a class or partial), or an already built object with ``run()``.

    Returns:
        What the workflow's ``run()`` returns.
    """
    with _cli_errors():
        built = isinstance(factory, type) or not hasattr(factory, "run")
        workflow = factory() if built else factory
        return workflow.run()


def _config_entry(tb: Any) -> str | None:
    """The id of the innermost config item MONAI was building when the error was raised (e.g. ``network_def``)."""
    from monai.bundle.config_item import ConfigItem

    entry = None
    for frame, _ in traceback.walk_tb(tb):
        item = frame.f_locals.get("self")
        if isinstance(item, ConfigItem):
            entry = item.get_id()
    return entry


def one_line_errors() -> None:
    """The first ``initialize`` step of the bundles: an error MONAI raises while it builds a config entry (a
    ``_target_`` that cannot be imported, arguments a class refuses) ends like :func:`cli_main`'s errors, with
    ``monai-distill: error: config entry '<id>': <message>`` as the last line and exit code 1.

    Config entries (``network_def``, ``head_def``, ...) are resolved by MONAI's ``ConfigParser`` before
    :func:`cli_main` receives the workflow, so their errors would otherwise end in MONAI's traceback. This sets
    ``sys.excepthook`` for the rest of the process (the traceback is logged at DEBUG level; with
    ``$MONAI_DISTILL_TRACEBACK=1`` it is printed as usual). Calling it again changes nothing.
    """
    previous = sys.excepthook
    if getattr(previous, "_monai_distill", False):
        return

    def hook(exc_type: type[BaseException], error: BaseException, tb: Any) -> None:
        wanted = os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes")
        if wanted or not isinstance(error, Exception):
            previous(exc_type, error, tb)
            return
        logger.debug("config entry failed", exc_info=(exc_type, error, tb))
        entry = _config_entry(tb)
        message = error_message(error)
        if isinstance(error, ImportError):
            message = message.rstrip(".") + "; is its module importable from the current directory or PYTHONPATH?"
        line = f"monai-distill: error: {f'config entry {entry!r}: ' if entry else ''}{message}"
        _record_for_torchrun(line)
        sys.stdout.flush()
        print(line, file=sys.stderr)
        sys.stderr.flush()

    hook._monai_distill = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def cli_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` for a bundle's ``initialize`` step, with :func:`cli_main`'s error handling."""
    with _cli_errors():
        return fn(*args, **kwargs)


def set_determinism(seed: Any) -> None:
    """The bundles' ``initialize`` step ``$monai_distill.runs.set_determinism(@seed)``.

    Checks ``--seed`` (a whole number >= 0; ``abc`` or ``1.5`` name the option) and calls
    ``monai.utils.set_determinism``; errors end the process like :func:`cli_main`.
    """
    from monai.utils import set_determinism as monai_set_determinism

    from .checks import option_int

    with _cli_errors():
        monai_set_determinism(seed=option_int(seed, "seed", minimum=0))
