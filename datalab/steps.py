"""Step lines with elapsed time, for long work (bring-up, builds)."""

import sys
import time
from contextlib import contextmanager


class Steps:
    def __init__(self, out=sys.stdout):
        self.out = out
        self.started = time.monotonic()

    def _line(self, mark, text):
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {mark} {text}", file=self.out, flush=True)

    def info(self, text):
        self._line(" ", text)

    @contextmanager
    def step(self, text):
        self._line("▶", text)
        t0 = time.monotonic()
        try:
            yield self
        except BaseException:
            self._line("✗", f"{text} failed after {time.monotonic() - t0:.1f}s")
            raise
        self._line("✓", f"{text} ({time.monotonic() - t0:.1f}s)")
