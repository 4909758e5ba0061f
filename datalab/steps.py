"""The command line's progress lines, through `logging` (logger "datalab.cli").

Every line carries the time since the command started: `[  12.3s] ▶ building
images`. `datalab -q` shows warnings and failures only; `datalab -v` adds what
the command runs (each docker command, at DEBUG)."""

import logging
import sys
import time
from contextlib import contextmanager

log = logging.getLogger("datalab.cli")


class _Elapsed(logging.Formatter):
    def __init__(self):
        super().__init__()
        self.started = time.monotonic()

    def format(self, record):
        mark = {logging.DEBUG: "·", logging.WARNING: "WARNING:", logging.ERROR: "✗"}.get(record.levelno, "")
        text = record.getMessage()
        return f"[{time.monotonic() - self.started:6.1f}s] {mark + ' ' if mark else ''}{text}"


def configure(verbosity=0, stream=None):
    """verbosity: -1 (--quiet), 0, or 1 and more (-v)."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_Elapsed())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


class Steps:
    """Named steps of long work: a line when each starts, and when it ends or fails, with its time."""

    def info(self, text):
        log.info("  %s", text)

    def warning(self, text):
        log.warning("%s", text)

    @contextmanager
    def step(self, text):
        log.info("▶ %s", text)
        t0 = time.monotonic()
        try:
            yield self
        except BaseException:
            log.error("%s failed after %.1fs", text, time.monotonic() - t0)
            raise
        log.info("✓ %s (%.1fs)", text, time.monotonic() - t0)
