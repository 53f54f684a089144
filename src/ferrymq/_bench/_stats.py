"""Pure helpers of the bench: percentiles, medians, ratios, /proc parsing, table text.

What belongs here: functions with no I/O beyond reading a /proc file whose path is
given, so each is unit-testable on fixed inputs. Nothing here starts processes or
opens sockets.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CLOCK_TICKS_PER_S",
    "cpu_ns_from_stat_line",
    "first_ack_delays_ns",
    "longest_gaps_ns",
    "machine_busy_ns",
    "main_thread_cpu_ns",
    "format_table",
    "median",
    "parse_stat_line",
    "percentile",
    "ratio",
    "rss_bytes_from_status",
    "session_cpu_ns",
    "session_pids",
    "session_rss_bytes",
]

# /proc/<pid>/stat reports CPU time in clock ticks; the tick rate is fixed per boot.
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (``fraction`` in [0, 1]).

    Nearest rank, not interpolation: a reported p99 is a latency some request really
    had. An empty sample has no percentile; NaN says so without raising mid-report.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


def median(values: Sequence[float]) -> float:
    """The median; for an even count, the lower middle value (a value that was measured)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when it has no meaning (zero, NaN, negative)."""
    if (math.isnan(numerator) or math.isnan(denominator) or denominator <= 0
            or numerator < 0):
        return None
    return numerator / denominator


def first_ack_delays_ns(starts_ns: Sequence[int], finishes_ns: Sequence[int],
                        marks_ns: Sequence[int]) -> list[int | None]:
    """For each mark, the time from it to the earliest finish of a request that
    *started* at or after it (None if none did).

    Requests are given as parallel sequences of start and finish times, in any order.
    Counting only requests sent after the mark is what makes this a recovery time: an
    answer the old leader wrote just before it was killed, read a moment after, is not
    mistaken for the new leader's first one.
    """
    if len(starts_ns) != len(finishes_ns):
        raise ValueError("every request needs a start and a finish")
    order = sorted(range(len(starts_ns)), key=starts_ns.__getitem__)
    starts = [starts_ns[i] for i in order]
    # earliest[i]: the earliest finish among the requests that started at starts[i] or later.
    earliest = [0] * len(order)
    best: int | None = None
    for pos in range(len(order) - 1, -1, -1):
        finish = finishes_ns[order[pos]]
        best = finish if best is None or finish < best else best
        earliest[pos] = best
    delays: list[int | None] = []
    for mark in marks_ns:
        pos = bisect.bisect_left(starts, mark)
        delays.append(earliest[pos] - mark if pos < len(starts) else None)
    return delays


def longest_gaps_ns(finishes_ns: Sequence[int], spans_ns: Sequence[tuple[int, int]]
                    ) -> list[int | None]:
    """For each span ``(begin, end)``, the longest time between two consecutive
    acknowledgements inside it (None with fewer than two). Given the first ack after a
    kill as ``begin`` and the next kill as ``end``, it shows a second outage after the
    recovery, such as one while the old leader rejoins."""
    ordered = sorted(finishes_ns)
    gaps: list[int | None] = []
    for begin, end in spans_ns:
        lo = bisect.bisect_left(ordered, begin)
        hi = bisect.bisect_right(ordered, end)
        inside = ordered[lo:hi]
        gaps.append(max((b - a for a, b in zip(inside, inside[1:], strict=False)),
                        default=None))
    return gaps


def parse_stat_line(line: str) -> tuple[int, int, int, int]:
    """(pid, session id, utime ticks, stime ticks) from one /proc/<pid>/stat line.

    The command name (field 2) is in parentheses and may itself hold spaces and ')',
    so the fields are counted from the *last* ')'.
    """
    open_paren = line.index("(")
    close_paren = line.rindex(")")
    pid = int(line[:open_paren].strip())
    rest = line[close_paren + 2:].split()
    # rest[0] is field 3 (state); session is field 6, utime 14, stime 15.
    session = int(rest[3])
    utime_ticks = int(rest[11])
    stime_ticks = int(rest[12])
    return pid, session, utime_ticks, stime_ticks


def cpu_ns_from_stat_line(line: str) -> int:
    """User + system CPU time of one process, in nanoseconds, from its stat line."""
    _pid, _session, utime_ticks, stime_ticks = parse_stat_line(line)
    return (utime_ticks + stime_ticks) * 1_000_000_000 // CLOCK_TICKS_PER_S


def machine_busy_ns(stat_text: str) -> int:
    """CPU time all cores spent busy since boot, from the text of /proc/stat: the
    aggregate ``cpu`` line's user, nice, system, irq, softirq and steal (not idle or
    iowait). Steal counts: a hypervisor that takes a core away takes it from the bench
    too."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            fields = [int(f) for f in line.split()[1:]]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
            busy = user + nice + system + irq + softirq + steal
            return busy * 1_000_000_000 // CLOCK_TICKS_PER_S
    raise ValueError("no aggregate cpu line in /proc/stat")


def rss_bytes_from_status(text: str) -> int:
    """Resident set size in bytes from the text of /proc/<pid>/status (0 if absent)."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            assert parts[2].lower() == "kb", "the kernel reports VmRSS in kB"
            return int(parts[1]) * 1024
    return 0


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def session_pids(root_pid: int, proc_dir: str = "/proc") -> list[int]:
    """``root_pid`` plus every live process in its session.

    Peer servers are started in a session of their own (LocalStack forks helpers), so
    the session is exactly "the server and whatever it spawned".
    """
    line = _read(f"{proc_dir}/{root_pid}/stat")
    if line is None:
        return []
    _pid, session, _u, _s = parse_stat_line(line)
    if session != root_pid:
        return [root_pid]
    pids = [root_pid]
    for entry in os.listdir(proc_dir):
        if not entry.isdigit() or int(entry) == root_pid:
            continue
        other = _read(f"{proc_dir}/{entry}/stat")
        if other is not None and parse_stat_line(other)[1] == session:
            pids.append(int(entry))
    return pids


def _summed(pids: Iterable[int], proc_dir: str, file_name: str,
            value_of: Callable[[str], int]) -> int:
    """``value_of`` each live pid's ``/proc/<pid>/<file_name>``, summed (processes
    that vanished count 0)."""
    total = 0
    for pid in pids:
        text = _read(f"{proc_dir}/{pid}/{file_name}")
        if text is not None:
            total += value_of(text)
    return total


def session_cpu_ns(pids: Iterable[int], proc_dir: str = "/proc") -> int:
    """Summed user + system CPU time of ``pids``."""
    return _summed(pids, proc_dir, "stat", cpu_ns_from_stat_line)


def main_thread_cpu_ns(pids: Iterable[int], proc_dir: str = "/proc") -> int:
    """Summed CPU time of each process's main thread (its tid is its pid): for a Ferry
    server, the event loop; the rest of ``session_cpu_ns`` is its other threads (the
    SQLite writer)."""
    total = 0
    for pid in pids:
        text = _read(f"{proc_dir}/{pid}/task/{pid}/stat")
        if text is not None:  # a process that vanished counts 0
            total += cpu_ns_from_stat_line(text)
    return total


def session_rss_bytes(pids: Iterable[int], proc_dir: str = "/proc") -> int:
    """Summed resident set size of ``pids`` in bytes."""
    return _summed(pids, proc_dir, "status", rss_bytes_from_status)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned (numbers)."""
    widths = [len(h) for h in headers]
    for row in rows:
        assert len(row) == len(headers), "every row has one cell per header"
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])
