"""`mailpush` command line. Each sub-command lives in its own module exposing ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int`` (the exit status).

Exit statuses shared by all commands: 0 ran, 1 ``--fail-on`` matched (analyze), 2 usage error, 3 no capture
could be read.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
import threading

from analyzer import __version__

COMMAND_MODULES = ("events", "analyze", "batch", "serve", "db")
# One-shot commands whose process may skip the interpreter's teardown (console_main)
QUICK_EXIT_COMMANDS = frozenset({"analyze", "events"})

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_USAGE = 2
EXIT_NO_CAPTURE = 3


def run_profiled(prog: str, args, run):
    """``run(args, clock)`` under the ``--profile`` stage clock when ``args.profile`` is set (else ``run(args)``),
    then the stage table on stderr. Returns (exit status, the clock or None), so a command can add its own
    lines (``analyze --jobs``: the workers' table)."""
    if not getattr(args, "profile", False):
        return run(args), None
    from analyzer.stagetimes import profiling

    with profiling() as clock:
        status = run(args, clock)
    print(f"{prog}: time per stage (--profile; exclusive: a stage's time excludes the stages it calls)",
          file=sys.stderr)
    print(clock.report(frames=clock.frames), file=sys.stderr)
    return status, clock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailpush",
        description="Why does this Outlook client not get new-mail notifications? "
        "Analyses captures of Outlook/Exchange EMSMDB traffic for push-notification registration "
        "(EcRRegisterPushNotification), UDP notifications and the polling fallback.",
    )
    parser.add_argument("--version", action="version", version=f"mailpush {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"analyzer.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"analyzer.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def console_main() -> None:
    """The ``mailpush`` console script: :func:`main`, then, for a one-shot command, an exit without the
    interpreter's teardown.

    Teardown frees every module and cached object one by one: 0.03-0.04 s of wall time after analysing the
    1,000,000-frame benchmark capture (median of interleaved runs, 2026-12-01), about 3 % of the whole run, for a
    process that ends anyway. Exit handlers (atexit, weakref finalizers: temporary directories, multiprocessing
    pools, logging) still run and both standard streams are flushed; every file the commands write is closed by
    a ``with`` block before this point. Only when no other thread runs: a live thread is joined by the normal exit.
    """
    status = main(sys.argv[1:])
    if _last_command in QUICK_EXIT_COMMANDS and threading.active_count() == 1:
        _quick_exit(status)
    sys.exit(status)


def _quick_exit(status: int) -> None:
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: what the normal exit would also lose
            pass
    os._exit(status)


_last_command: str | None = None  # the sub-command main() ran last (console_main's quick-exit test)


def main(argv: list[str] | None = None) -> int:
    global _last_command
    parser = build_parser()
    args = parser.parse_args(argv)
    _last_command = getattr(args, "command", None)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mailpush: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
