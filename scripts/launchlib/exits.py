"""How the launcher ends: one-line errors, signals, exit codes.

The launcher reports every failure in one line on stderr, prefixed with the
program's name, and keeps orbax's many log records and tracebacks for
`--verbosity=1`. After a failed or abandoned save, orbax leaves non-daemon
threads (and an asyncio loop) behind, so the launcher exits with `os._exit`
(`exit_now`) rather than waiting for them.
"""

from __future__ import annotations

import logging as py_logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from absl import app
from absl import logging

# Exit status of a failed verification, save or flag.
FAILED = 1
# After SIGINT or SIGTERM, how long the save may take to abandon its writes
# and remove its staging directory before the launcher does it and exits.
INTERRUPT_GRACE_S = 3.0


def stderr(line: str) -> None:
  """Writes `PROGRAM: line` to stderr, flushed."""
  sys.stderr.write(f"{os.path.basename(sys.argv[0])}: {line}\n")
  sys.stderr.flush()


def exit_now(status: int) -> NoReturn:
  """Flushes the logs and exits without waiting for other threads.

  Orbax leaves non-daemon threads (and an asyncio loop) behind after a failed
  or abandoned save, which would hold the interpreter's exit and print
  tracebacks while it shuts down.
  """
  for handler in py_logging.getLogger().handlers + [logging.get_absl_handler()]:
    try:
      handler.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def flag_error(error: Exception) -> NoReturn:
  """Reports a flag found invalid after parsing, as absl does, and exits 1."""
  stderr(f"error: {error}")
  stderr("Pass --helpshort or --helpfull to see help on flags.")
  exit_now(FAILED)


def cause(error: BaseException) -> str:
  """One line: an OSError's message and path, else the error's first line."""
  if isinstance(error, OSError) and error.strerror:
    text = error.strerror
    if error.filename and str(error.filename) not in text:
      text += f": {error.filename}"
  else:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= 500 else text[:497] + "..."


def save_failed(output: str, error: BaseException) -> str:
  """The one line reporting that the save to `--output` failed."""
  line = f"error: could not save --output={output}: {cause(error)}"
  if logging.get_verbosity() < 1:
    line += " [--verbosity=1 shows the traceback]"
  return line


class QuietOrbax:
  """Drops orbax's records from the absl log unless --verbosity >= 1.

  Orbax logs dozens of INFO lines per save, and a failed save as ERROR records
  with tracebacks from several of its threads; the launcher reports a failure
  itself, in one line. Install on absl's logger (its handler forwards records
  past its own filters): `logging.get_absl_logger().addFilter(QuietOrbax())`.
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    """Whether to keep `record`: not orbax's, or --verbosity >= 1."""
    return (
        f"{os.sep}orbax{os.sep}" not in record.pathname
        or logging.get_verbosity() >= 1
    )


class QuietBackendProbe:
  """Drops JAX's INFO records about backends it could not start.

  On a host without a TPU, JAX logs "Unable to initialize backend 'tpu'" at
  INFO on every start, which the launcher's INFO verbosity would print on
  every run. Warnings and errors still pass; at `--verbosity >= 1` everything
  does. Install on JAX's logger before the first backend use
  (`devices.start_jax`).
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    """Whether to keep `record`: a warning or worse, or --verbosity >= 1."""
    return record.levelno >= py_logging.WARNING or logging.get_verbosity() >= 1


# absl's flags that print usage and exit (`absl.app`'s help flags).
_HELP_FLAGS = frozenset(("help", "?", "helpshort", "helpfull", "helpxml"))


def asks_for_help(argv: Sequence[str]) -> bool:
  """Whether `argv` (program name first) holds one of absl's help flags."""
  for arg in argv[1:]:
    if arg == "--":
      break
    name, _, value = arg.lstrip("-").partition("=")
    if (
        arg.startswith("-")
        and name in _HELP_FLAGS
        and value.lower() not in ("false", "0")
    ):
      return True
  return False


def run(main: Any, argv: Sequence[str] | None = None) -> NoReturn:
  """`app.run(main)`, except that asking for help exits with status 0.

  absl's help flags print the usage and exit with status 1, as for a usage
  error; a launcher asked for its help has not failed.
  """
  argv = list(sys.argv if argv is None else argv)
  try:
    app.run(main, argv=argv)
  except SystemExit as e:
    if e.code == 1 and asks_for_help(argv):
      raise SystemExit(0) from None
    raise
  raise SystemExit(0)  # app.run itself always exits.


def quiet_unraisablehook(unraisable: Any) -> None:
  """Prints an exception no caller could catch only at --verbosity >= 1.

  After a failed write, tensorstore's threads still call back into orbax's
  closed event loop; those errors are printed as "unraisable" tracebacks.
  """
  if logging.get_verbosity() >= 1:
    sys.__unraisablehook__(unraisable)


class Interrupts:
  """SIGINT and SIGTERM: a one-line message, no staging left, exit 128 + N.

  Both signals raise KeyboardInterrupt in the main thread (SIGTERM through
  whatever handles SIGINT at that moment, so a save that defers Ctrl-C during
  its final renames defers SIGTERM too). `alberta.checkpoint.save` then waits
  for its in-flight writes, removes its staging directory and re-raises, and
  the launcher calls `exit`. The main thread may be busy in XLA or waiting for
  orbax's writes for long, though: a watcher thread, woken by the signal
  itself (`signal.set_wakeup_fd`), calls `exit` after `INTERRUPT_GRACE_S`
  seconds (or at a second signal), removing the staging directories this run
  created. Exiting is `os._exit`: orbax's threads are not waited for.

  `phase` (what the run is doing, for the message) is set by the launcher.
  """

  def __init__(self):
    self.signum: int | None = None
    self.phase = "starting"
    self.output: str | None = None
    self.output_existed = False
    self._stale: tuple[str, ...] = ()
    self._lock = threading.Lock()

  def install(self) -> None:
    """Must run in the main thread, before the work starts."""
    signal.signal(signal.SIGINT, self._on_sigint)
    signal.signal(signal.SIGTERM, self._on_sigterm)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    self._sockets = (reader, writer)  # Kept open for the process's life.
    threading.Thread(
        target=self._watch,
        args=(reader,),
        daemon=True,
        name="init-large-interrupts",
    ).start()

  def watch_output(self, output: str, stale: Sequence[str]) -> None:
    """Staging directories of `output` not in `stale` are this run's."""
    self.output = os.path.abspath(output)
    self.output_existed = os.path.lexists(self.output)
    self._stale = tuple(stale)

  def _on_sigint(self, signum, frame) -> None:
    del frame
    if self.signum is None:
      self.signum = signum
    raise KeyboardInterrupt

  def _on_sigterm(self, signum, frame) -> None:
    if self.signum is None:
      self.signum = signum
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
      handler(signal.SIGINT, frame)
    else:
      raise KeyboardInterrupt

  def _watch(self, reader: socket.socket) -> None:
    deadline = None
    while True:
      reader.settimeout(
          None if deadline is None else max(0.0, deadline - time.monotonic())
      )
      try:
        received = reader.recv(64)
      except socket.timeout:
        self.exit(forced="its in-flight work did not stop in time")
        return
      signums = [b for b in received if b in (signal.SIGINT, signal.SIGTERM)]
      if not signums:
        continue
      if self.signum is None:
        self.signum = signums[0]
      if deadline is not None or len(signums) > 1:
        self.exit(forced="a second signal")  # Stop waiting.
        return
      deadline = time.monotonic() + INTERRUPT_GRACE_S

  def remove_staging(self) -> list[str]:
    """Removes the staging directories this run created; returns them.

    Orbax's threads may still be writing (after a failure, the save's own
    cleanup can race with them): `alberta.checkpoint.remove_staging` keeps
    removing until nothing has reappeared for a while; the caller then exits,
    which stops those threads.
    """
    if self.output is None:
      return []
    import alberta  # pylint: disable=g-import-not-at-top

    return alberta.checkpoint.remove_staging(self.output, keep=self._stale)

  def exit(self, forced: str | None = None) -> None:
    """Prints what happened and exits with 128 + the signal's number.

    Args:
      forced: why the watcher exits without the main thread, if it does.
    """
    if not self._lock.acquire(blocking=forced is None):
      return  # The main thread is already exiting.
    signum = self.signum or signal.SIGINT
    name = signal.Signals(signum).name
    self.remove_staging()
    if self.output is None:
      outcome = "nothing saved"
    elif os.path.lexists(self.output) and not self.output_existed:
      # The signal came during the commit's renames: the save completed.
      outcome = f"the checkpoint at --output={self.output} is complete"
    elif self.phase == "saving":
      outcome = (
          "the save was abandoned and its staging removed; nothing "
          f"was written at --output={self.output}"
      )
    else:
      outcome = f"nothing was written at --output={self.output}"
    stderr(
        f"interrupted by {name} while {self.phase}"
        f"{f' (exiting at once: {forced})' if forced else ''}; {outcome}."
    )
    exit_now(128 + signum)
