"""``python -m ferrymq._verify check HISTORY``: re-check a recorded history by hand.

Prints the report (``--json`` for the whole report as JSON) and exits 0 when it has no
violations, 1 when it has, 2 when the history cannot be read.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from ferrymq._verify._checker import CheckConfig, check
from ferrymq._verify._history import HistoryError, load_history

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferrymq._verify")
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="check a history file and print the report")
    checking.add_argument("history", help="a JSON-lines history written by the recorder")
    checking.add_argument("--skew-ms", type=float, default=0.0,
                          help="clock skew budget added to the lease tolerance (default 0)")
    checking.add_argument("--epsilon-ms", type=float, default=CheckConfig.epsilon_ms,
                          help="lease tolerance before skew (default %(default)s)")
    checking.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        events = load_history(args.history)
    except (OSError, HistoryError) as exc:
        print(f"cannot read {args.history}: {exc}", file=sys.stderr)
        return 2
    report = check(events, CheckConfig(epsilon_ms=args.epsilon_ms, skew_ms=args.skew_ms))
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(report.format())
    return 1 if report.violations() else 0


if __name__ == "__main__":
    raise SystemExit(main())
