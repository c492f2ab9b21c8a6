"""The ``dispatch`` command line.

Exit codes: 0 success (including a drained stop on SIGTERM/SIGINT, and a reader such as
``head`` that stopped reading); 1 runtime failure (store unreachable, agent failure); 2 bad
usage or invalid configuration (a missing file or directory it names, a database driver that
is not installed). Each failure is one line naming the cause and the fix; no line, printed or
logged, shows a secret of the configuration.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import ConfigError, DispatchError, StoreUnavailable, dispatch_error_in

TYPE_CHECKING = False  # typing.TYPE_CHECKING to mypy and ruff; typing costs --help a few ms

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from .config import Settings

# Only what `dispatch --help` needs is imported here (the rest where a command needs it): a
# newcomer's first command answers in a few tens of milliseconds.

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Version(argparse.Action):
    """``--version``: the version is looked up only when asked for (importlib.metadata is
    slower to import than everything ``dispatch --help`` needs)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from . import __version__

        sys.stdout.write(f"{parser.prog} {__version__}\n")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch", description="Run outbound voice-AI call campaigns."
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the dispatcher (the daemon)")
    _config_option(run)
    run.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit once every record is in a terminal state (batch use)",
    )

    check = commands.add_parser(
        "check", help="validate the setup: store, agent, and one dry-run poll of each strategy"
    )
    _config_option(check)
    _json_option(check)
    check.add_argument(
        "--limit", type=int, default=20, help="records listed per strategy (default: %(default)s)"
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,  # dispatch.check.DEADLINE, not imported here: --help stays fast
        metavar="SECONDS",
        help="how long the store, the agent and each strategy's poll may take (default: "
        "%(default)g)",
    )

    status = commands.add_parser("status", help="counts per strategy and state, calls in flight")
    _config_option(status)
    _json_option(status)

    history = commands.add_parser("history", help="every attempt for a phone or a record")
    _config_option(history)
    _json_option(history)
    which = history.add_mutually_exclusive_group(required=True)
    which.add_argument("--phone", help="a phone number (normalised like the records')")
    which.add_argument("--record", help="a record id")
    history.add_argument("--strategy", help="only this strategy's records")
    history.add_argument(
        "--transcript", action="store_true", help="show each call's transcript as well"
    )

    _dnc_parser(commands)
    _pause_parsers(commands)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply pending schema migrations")
    _config_option(upgrade)
    return parser


def _dnc_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dnc = commands.add_parser(
        "dnc", help="the do-not-call list: numbers never dialed, whatever the strategy"
    )
    dnc_commands = dnc.add_subparsers(dest="dnc_command", required=True, metavar="COMMAND")
    add = dnc_commands.add_parser("add", help="put numbers on the list")
    add.add_argument("numbers", nargs="+", metavar="NUMBER", help="normalised like the records'")
    add.add_argument("--reason", help="why (kept with each number)")
    remove = dnc_commands.add_parser("remove", help="take numbers off the list")
    remove.add_argument("numbers", nargs="+", metavar="NUMBER")
    listing = dnc_commands.add_parser("list", help="every number on the list")
    _json_option(listing)
    load = dnc_commands.add_parser(
        "import", help="add the numbers of a CSV file (column phone or number, else the first)"
    )
    load.add_argument("file", metavar="FILE.csv")
    load.add_argument("--reason", help="for rows without a reason column or cell")
    load.add_argument(
        "--encoding", default="utf-8", help="the file's text encoding (default: %(default)s)"
    )
    export = dnc_commands.add_parser("export", help="write the list as CSV (import reads it)")
    export.add_argument("file", nargs="?", metavar="FILE", help="default or -: stdout")
    for each in (add, remove, listing, load, export):
        _config_option(each)


def _pause_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pause = commands.add_parser(
        "pause", help="start no new dial (calls in flight finish), until `dispatch resume`"
    )
    pause.add_argument("--strategy", metavar="NAME", help="only this strategy (default: all)")
    pause.add_argument("--reason", metavar="TEXT", help="why (kept with the flag, logged)")
    resume = commands.add_parser("resume", help="dial again after `dispatch pause`")
    resume.add_argument(
        "--strategy", metavar="NAME", help="only this strategy's pause (default: every pause)"
    )
    for each in (pause, resume):
        _config_option(each)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=_path,
        default="/etc/pinecall-dispatch/config.toml",
        help="TOML configuration file (default: %(default)s)",
    )


# The commands that open the store for writing (and would create a SQLite file).
_WRITERS = ("run", "check", "db", "dnc", "pause", "resume")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _main(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except BrokenPipeError:
        # The reader went away (`dispatch history | head`): what it read is all it wanted.
        # Further output goes nowhere, and the interpreter's last flush finds nothing to write.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


def _main(args: argparse.Namespace) -> int:
    # Imported here so `dispatch --help` stays fast.
    from .config import load_settings
    from .logs import configure_logging, redact, register_secrets

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"dispatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    base = args.config.resolve().parent
    from .service.preflight import STORE_HINT, missing_extra, preflight
    from .service.secrets import configured_secrets

    register_secrets(configured_secrets(settings, base))
    configure_logging(settings.logging.level, settings.logging.format, settings.logging.phone)
    try:
        if args.command in _WRITERS:
            preflight(settings, base, sources=args.command in ("run", "check"))
        return _command(args, settings, base)
    except ConfigError as exc:
        print(f"dispatch: configuration error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (DispatchError, ExceptionGroup, ModuleNotFoundError) as raised:
        if (fix := missing_extra(raised)) is not None:
            print(f"dispatch: configuration error: {fix}", file=sys.stderr)
            return EXIT_USAGE
        error = dispatch_error_in(raised)
        if error is None:
            raise
        message = redact(str(error))
        if isinstance(error, StoreUnavailable):
            message += f"; {STORE_HINT}"
        if args.command in ("status", "history", "check", "dnc", "pause", "resume"):
            print(f"dispatch: {message}", file=sys.stderr)
        else:
            import logging

            logging.getLogger("dispatch.cli").error(
                "dispatch.failed %s: %s", type(error).__name__, message
            )
        return EXIT_FAILURE


def _command(args: argparse.Namespace, settings: Settings, base: Path) -> int:
    import functools
    import json

    import anyio

    if args.command == "run":
        from .daemon import run_daemon

        anyio.run(
            functools.partial(
                run_daemon,
                settings,
                base=base,
                config=args.config.resolve(),
                exit_when_done=args.exit_when_done,
            )
        )
    elif args.command == "check":
        from .check import check
        from .logs import redact

        found = anyio.run(
            functools.partial(check, settings, base, limit=args.limit, deadline=args.timeout)
        )
        text = json.dumps(found.as_json(), indent=2) if args.json else "\n".join(found.lines())
        print(redact(text))
        return EXIT_OK if found.ok else EXIT_FAILURE
    elif args.command == "db":
        anyio.run(_upgrade, settings, base)
    elif args.command == "dnc":
        from .dnc_cli import run as dnc

        return anyio.run(dnc, settings, base, args)
    elif args.command in ("pause", "resume"):
        from . import pause_cli

        command = pause_cli.pause if args.command == "pause" else pause_cli.resume
        return anyio.run(command, settings, base, args)
    else:
        from .report_cli import history, status

        report = status if args.command == "status" else history
        anyio.run(report, settings, base, args)
    return EXIT_OK


async def _upgrade(settings: Settings, base: Path) -> None:
    from .config import store_url
    from .store import Store

    store = Store(store_url(settings, base))
    try:
        await store.open()
        print(f"{store!r}: schema is up to date")
    finally:
        await store.aclose()


if __name__ == "__main__":
    sys.exit(main())
