"""Syscalls counted by ``strace -c``: attached to a running process for a while, or around one
fresh process. The summary files are kept next to the results (what the counts come from)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.systems import run_process

# Only the columns parsed: name, calls, errors.
_SUMMARY_ARGS = ("-c", "-U", "name,calls,errors")
_ATTACH_TIMEOUT_S = 10.0
_DETACH_TIMEOUT_S = 30.0
_ATTACH_POLL_S = 0.01
TOP = 8  # syscalls named in results.json, most frequent first


class StraceError(RuntimeError):
    """strace could not attach, or left no summary."""


def available() -> bool:
    return shutil.which("strace") is not None


@dataclass(frozen=True)
class Counts:
    """calls per syscall name, and failed calls in all."""

    calls: dict[str, int]
    errors: int

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def figures(self, per: int) -> dict[str, Any]:
        """Totals, per ``per`` executions, and the most frequent syscalls (per execution)."""
        ranked = sorted(self.calls.items(), key=lambda item: item[1], reverse=True)[:TOP]
        return {
            "total": self.total,
            "errors": self.errors,
            "per_execution": self.total / per,
            "top_per_execution": {name: calls / per for name, calls in ranked},
        }


def parse(summary: str) -> Counts:
    """An ``strace -c -U name,calls,errors`` summary; the "total" line is recomputed, not read.

    With -f, strace may print one summary per followed process tree; every table is added up.
    """
    calls: dict[str, int] = {}
    errors = 0
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) not in (2, 3) or not fields[1].isdigit() or fields[0] == "total":
            continue
        calls[fields[0]] = calls.get(fields[0], 0) + int(fields[1])
        errors += int(fields[2]) if len(fields) == 3 else 0
    return Counts(calls, errors)


class Attached:
    """``strace -c`` attached to ``pid`` (``follow``: every thread, and children made while
    attached) from ``with`` to its end; ``counts()`` afterwards."""

    def __init__(self, pid: int, summary: Path, *, follow: bool):
        self.pid = pid
        self.summary = summary
        self._argv = [
            "strace",
            *_SUMMARY_ARGS,
            *(["-f"] if follow else []),
            "-o",
            str(summary),
            "-p",
            str(pid),
        ]
        self._tracer: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Attached:
        self._tracer = subprocess.Popen(self._argv, stderr=subprocess.DEVNULL)
        try:
            self._wait_attached(self._tracer)
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._detach()

    def counts(self) -> Counts:
        try:
            return parse(self.summary.read_text())
        except FileNotFoundError as missing:
            raise StraceError(f"strace left no summary for pid {self.pid}") from missing

    def _wait_attached(self, tracer: subprocess.Popen[bytes]) -> None:
        """Until every thread of ``pid`` is traced by ``tracer`` (only then does the count
        cover what follows)."""
        deadline = time.monotonic() + _ATTACH_TIMEOUT_S
        while not _traced_by(self.pid, tracer.pid):
            if time.monotonic() > deadline or tracer.poll() is not None:
                raise StraceError(f"strace did not attach to pid {self.pid}")
            time.sleep(_ATTACH_POLL_S)

    def _detach(self) -> None:
        """SIGINT: strace detaches and writes its summary."""
        if self._tracer is None:
            return
        self._tracer.send_signal(signal.SIGINT)
        try:
            self._tracer.wait(timeout=_DETACH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._tracer.kill()
            self._tracer.wait()
            raise StraceError(f"strace did not detach from pid {self.pid}") from None


def count_process(argv: Sequence[str], stdin: bytes | None, summary: Path) -> Counts:
    """The syscalls of one fresh ``argv`` process and its children (``strace -f``)."""
    done = run_process(["strace", *_SUMMARY_ARGS, "-f", "-o", str(summary), *argv], stdin)
    if done.exit_code != 0:
        reason = done.stderr.decode(errors="replace").strip()[-300:]
        raise StraceError(f"{argv[0]} under strace exited with {done.exit_code}: {reason}")
    return parse(summary.read_text())


def _traced_by(pid: int, tracer: int) -> bool:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("TracerPid:") and int(line.split()[1]) != tracer:
                return False
    return True
