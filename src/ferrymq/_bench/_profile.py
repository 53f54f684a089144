"""``ferrymq bench --profile DIR``: py-spy on every server process during each run.

What belongs here: starting one ``py-spy record`` per server process (a cluster's
nodes, or the single server) for the length of a load-generator run, pinned to the load
generator's core so the sampler does not take the server's; and reading py-spy's raw
output (collapsed stacks) into a short table per process: where its samples were, by
function, on its own (self) and with what it called (total). py-spy is not a
dependency: without it on PATH or in the interpreter's bin directory, ``--profile``
says so and the bench runs unprofiled.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ferrymq._bench._servers import pin_prefix

__all__ = ["Profiler", "collapsed_summary", "find_py_spy"]

# Samples per second: enough for a stable top-20 over a 5 s window (~500 samples per
# thread), few enough that py-spy stays a few % of its core.
SAMPLE_RATE_HZ = 100
# py-spy writes its file when its duration ends; this bounds the wait beyond that.
FINISH_TIMEOUT_S = 30.0
# Functions listed per process in the summary.
TOP_FUNCTIONS = 25


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``function (module.py)``: lines apart,
    one function is one row."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({Path(file).name})" if file else name


def collapsed_summary(lines: Iterable[str], top: int = TOP_FUNCTIONS) -> str:
    """A table of the heaviest functions in py-spy's raw output (``a;b;c 12`` per line:
    a stack, outermost first, and its sample count): self and total share of samples."""
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for name in set(frames):  # a recursive function counts once per sample
            total_counts[name] += count
    if not samples:
        return "no samples\n"
    rows = [f"{samples} samples", f"{'self %':>7} {'total %':>7}  function"]
    for name, count in self_counts.most_common(top):
        rows.append(f"{100 * count / samples:7.1f} {100 * total_counts[name] / samples:7.1f}"
                    f"  {name}")
    rows.append("")
    rows.append("heaviest by total:")
    for name, count in total_counts.most_common(top):
        rows.append(f"{100 * self_counts[name] / samples:7.1f} {100 * count / samples:7.1f}"
                    f"  {name}")
    return "\n".join(rows) + "\n"


class Profiler:
    """One ``py-spy record`` per process for one run; ``finish`` waits for their files
    and writes each one's summary beside it."""

    def __init__(self, py_spy: str, out_dir: Path, cpu: int | None) -> None:
        self.py_spy = py_spy
        self.out_dir = out_dir
        self.cpu = cpu
        self._running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, tag: str, processes: dict[str, int], seconds: float) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in processes.items():
            raw = self.out_dir / f"{tag}-{name}.txt"
            # --nonblocking: sampled without stopping the process, so the profile does
            # not slow what it measures (a sample may then be slightly torn).
            argv = pin_prefix(self.cpu) + [
                self.py_spy, "record", "--pid", str(pid), "--format", "raw",
                "--rate", str(SAMPLE_RATE_HZ), "--duration", str(max(1, round(seconds))),
                "--nonblocking", "--threads", "--output", str(raw)]
            log = open(raw.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in finish
            try:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            finally:
                log.close()
            self._running.append((proc, raw))

    def finish(self) -> list[Path]:
        done = []
        for proc, raw in self._running:
            try:
                proc.wait(timeout=FINISH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if raw.is_file():
                summary = raw.with_suffix(".summary.txt")
                with open(raw, encoding="utf-8", errors="replace") as fh:
                    summary.write_text(collapsed_summary(fh))
                done.append(summary)
        self._running = []
        return done
