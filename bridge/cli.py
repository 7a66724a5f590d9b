"""`polybridge` command line: one subcommand per job, each implemented in its own module.

Every command returns an exit code; a `BridgeError` becomes one clear line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from bridge.errors import BridgeError


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


# (command path, module implementing it, one-line help). Modules are imported lazily so
# `polybridge --help` and light commands stay fast.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("run",), "bridge.commands.run", "run the bridge from a TOML configuration"),
    (("check",), "bridge.commands.check", "validate configuration and connectivity, then stop"),
    (
        ("sim", "dropcopy"),
        "bridge.commands.sim_dropcopy",
        "serve a simulated exchange DropCopy API",
    ),
    (
        ("sim", "predexon"),
        "bridge.commands.sim_predexon",
        "serve a simulated Predexon WebSocket API",
    ),
    (("broker",), "bridge.commands.broker", "run a local Apache Kafka broker (tests, demo)"),
    (("state", "show"), "bridge.commands.state", "print every stream's committed position"),
    (("state", "reset"), "bridge.commands.state", "rewind or clear one stream's position"),
    (("backfill",), "bridge.commands.backfill", "fill one stream's window from REST history"),
    (("tail",), "bridge.commands.tail", "print a topic's records as JSON lines (either format)"),
    (("schemas", "export"), "bridge.commands.schemas", "write every value schema to a folder"),
    (("schemas", "check"), "bridge.commands.schemas", "check schemas against history + registry"),
    (("schemas", "register"), "bridge.commands.schemas", "register the configured topics' schemas"),
    (("demo",), "bridge.commands.demo", "simulators -> bridge -> embedded Kafka, end to end"),
]


def _load(module_name: str, path: tuple[str, ...]) -> Command:
    module = importlib.import_module(module_name)
    factory: Callable[[tuple[str, ...]], Command] | None = getattr(module, "command", None)
    if factory is None:
        raise SystemExit(f"internal error: {module_name} has no command()")
    return factory(path)


_GLOBAL_OPTIONS_WITH_VALUE = ("--log-level", "--log-format")


def _command_words(argv: Sequence[str]) -> tuple[str, ...]:
    """The leading words naming the command (global options and their values skipped)."""
    words: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in _GLOBAL_OPTIONS_WITH_VALUE:
            skip_value = True
        elif arg.startswith("-"):
            continue
        else:
            words.append(arg)
    return tuple(words)


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[tuple[str, ...], str]]:
    parser = argparse.ArgumentParser(prog="polybridge", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="log line format"
    )
    subparsers: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers[()] = top
    groups: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    wanted = _command_words(argv)
    for path, module_name, help_text in COMMANDS:
        parent: tuple[str, ...] = ()
        for depth, word in enumerate(path[:-1]):
            group_path = path[: depth + 1]
            if group_path not in groups:
                group = subparsers[parent].add_parser(word, help=f"{word} commands")
                groups[group_path] = group
                subparsers[group_path] = group.add_subparsers(
                    dest="_".join(group_path), metavar="COMMAND", required=True
                )
            parent = group_path
        sub = subparsers[parent].add_parser(path[-1], help=help_text, description=help_text)
        sub.set_defaults(_path=path, _module=module_name)
        # Only the chosen command's module is imported, to fill in its own arguments.
        if wanted[: len(path)] == path:
            _load(module_name, path).add_arguments(sub)
    return parser, {p: m for p, m, _ in COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(args_list)
    args = parser.parse_args(args_list)
    from bridge.logs import configure_logging, error_line

    configure_logging(args.log_level, args.log_format)
    try:
        return _load(args._module, args._path).run(args)
    except BridgeError as exc:
        print(error_line(f"polybridge: error: {exc}", args.log_format), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    logging.captureWarnings(True)
    raise SystemExit(main())
