"""What a sandboxed run gave back (``SandboxResult``), why it was stopped, and its display:
a compact block with the exit code, duration, capped stdout/stderr and the files written."""

from __future__ import annotations

import html
import re
import signal
from dataclasses import dataclass, field

from ..errors import SandboxError
from ..redact import redact
from ..text import clip
from .limits import MB, Limits
from .process import Outcome

SHOWN_CHARS = 4000  # of stdout and of stderr, in the display (all of it is on the result)
# the last error a Python program prints when a limit refused it (Python ignores SIGXFSZ)
_REFUSALS = (
    (re.compile(r"^MemoryError\b", re.MULTILINE), "memory limit {memory_mb} MB"),
    (re.compile(r"^BlockingIOError: \[Errno 11\]", re.MULTILINE), "process limit {max_processes}"),
    (re.compile(r"^OSError: \[Errno 27\]", re.MULTILINE), "file size limit {disk_mb} MB"),
    (re.compile(r"^OSError: \[Errno 28\]", re.MULTILINE), "disk limit {disk_mb} MB"),
)
_START_HINTS = {
    "bwrap": "bwrap needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1;"
    " on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)",
    "docker": "check that `docker run` works for this user",
}
_STYLE = "font:12px/1.5 ui-monospace,Menlo,monospace"
_PRE = "margin:2px 0;padding:4px;background:#f6f6f6;white-space:pre-wrap;max-height:24em;"
_RED = "color:#b00020"
_GREY = "color:#555;border-top:1px solid #ddd;margin-top:4px;padding-top:2px"


@dataclass
class SandboxResult:
    """One run: ``exit_code`` is negative when a signal ended the code (-9: SIGKILL)."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    killed_reason: str | None
    duration_s: float
    files: dict[str, bytes] = field(default_factory=dict)
    executor: str = "bwrap"
    truncated: bool = False  # output (or files) over the caps; the rest was dropped
    notice: str | None = None  # e.g. docker was asked for but bwrap ran

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None

    def summary(self) -> str:
        """One line: executor · exit · duration · files · notes."""
        parts = [self.executor, _exit_text(self.exit_code), f"{self.duration_s * 1000:,.0f} ms"]
        if self.files:
            written = (f"{name} ({_size(len(data))})" for name, data in self.files.items())
            parts.append("files: " + ", ".join(written))
        if self.truncated:
            parts.append("output truncated")
        if self.notice:
            parts.append(self.notice)
        return "[sandbox] " + " · ".join(parts)

    def problem(self) -> str | None:
        """The one red line of a failed run, or None."""
        if self.killed_reason:
            return f"stopped: {self.killed_reason}"
        if self.exit_code != 0:
            last = [line for line in self.stderr.splitlines() if line.strip()][-1:]
            return clip(f"{_exit_text(self.exit_code)}" + (f": {last[0]}" if last else ""), 300)
        return None

    def __repr__(self) -> str:
        lines = [f"✗ {self.problem()}"] if self.problem() else []
        lines += _shown("stdout", self.stdout) + _shown("stderr", self.stderr)
        return "\n".join([*lines, self.summary()])

    def _repr_html_(self) -> str:
        problem = self.problem()
        parts = [f'<div style="{_RED}">✗ {html.escape(problem)}</div>'] if problem else []
        for name, text, color in (("stdout", self.stdout, ""), ("stderr", self.stderr, _RED)):
            if text:
                body = html.escape(_capped(text))
                parts.append(f'<pre class="sandbox-{name}" style="{_PRE}{color}">{body}</pre>')
        parts.append(f'<div style="{_GREY}">{html.escape(self.summary())}</div>')
        return f'<div class="mirai-sandbox" style="{_STYLE}">{"".join(parts)}</div>'


def result_of(outcome: Outcome, limits: Limits, executor: str, notice: str | None) -> SandboxResult:
    """The result of a finished run; a sandbox that could not start is a SandboxError."""
    decoded, status = outcome.decoded, outcome.decoded.status
    if status is None and not outcome.backstop and outcome.errors:
        raise SandboxError(
            f"the {executor} sandbox failed: {clip(outcome.errors.splitlines()[-1], 200)}",
            hint=_START_HINTS.get(executor),
        )
    reason = outcome.backstop or ("" if status else "supervisor")
    status = status or {}
    reason = status.get("reason") or reason
    exit_code = status.get("exit") if isinstance(status.get("exit"), int) else None
    stderr = _text(decoded.stderr)
    return SandboxResult(
        stdout=_text(decoded.stdout),
        stderr=stderr,
        exit_code=-signal.SIGKILL if exit_code is None else exit_code,
        timed_out=reason == "timeout",
        killed_reason=killed_reason(reason, exit_code, stderr, limits),
        duration_s=outcome.duration_s,
        files={name: bytes(data) for name, data in decoded.files.items()},
        executor=executor,
        truncated=decoded.truncated or reason in ("output", "flood"),
        notice=notice,
    )


def killed_reason(reason: str, exit_code: int | None, stderr: str, limits: Limits) -> str | None:
    """Which limit stopped the code, from the launcher's reason, the signal or the error."""
    if reason == "timeout":
        return f"timeout {limits.timeout_s:g} s"
    if reason in ("output", "flood"):
        return f"output limit {_size(limits.max_output_bytes)}"
    if reason == "supervisor":
        return "the sandbox's supervisor was killed (by the code?)"
    signals = {
        -signal.SIGXCPU: f"cpu limit {limits.cpu_s} s",
        -signal.SIGXFSZ: f"file size limit {limits.disk_mb} MB",
    }
    if exit_code in signals:
        return signals[exit_code]
    for pattern, text in _REFUSALS if exit_code else ():
        if pattern.search(stderr):
            return text.format(**vars(limits))
    return None


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def _text(data: bytearray) -> str:
    return redact(data.decode("utf-8", "replace"))


def _capped(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return text[:SHOWN_CHARS] + f"\n… ({len(text) - SHOWN_CHARS:,} more characters, truncated)"


def _shown(name: str, text: str) -> list[str]:
    return [f"--- {name}", _capped(text).rstrip("\n")] if text else []


def _size(n: int) -> str:
    if n >= MB:
        return f"{n / MB:g} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} B"
