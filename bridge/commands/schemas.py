"""`polybridge schemas export DIR | check | register`: the Avro contract, outside the bridge.

- `export DIR`: every topic value schema as one self-contained `.avsc` per full name (other
  files' named types inlined), for consumers and their build tools.
- `check`: each current schema against every released version kept in
  `avro/history` (BACKWARD, the evolution policy), and, with `schema_registry.url`
  in `--config`, each configured topic's schema against its subject in the registry
  (without registering anything). Exit 1 when anything is incompatible.
- `register`: register every configured topic's schema under its subject (whatever
  `auto_register` says), after the same compatibility check the bridge makes at startup.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from bridge.serde import compat
from bridge.serde.avro import expanded_schema
from bridge.serde.registry import RegistryFormat, configured_topic_schemas, subject_name


def export(folder: Path) -> list[Path]:
    """Write every value schema to `folder`; the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in compat.history_names():
        path = folder / f"{name}.avsc"
        path.write_text(json.dumps(expanded_schema(name), indent=2) + "\n")
        written.append(path)
    return written


def check_history() -> list[str]:
    """Problems of each current value schema against its kept released versions."""
    found = []
    for name in compat.history_names():
        for version, old in compat.released_versions(name):
            for problem in compat.problems(expanded_schema(name), old):
                found.append(f"{name} is not BACKWARD compatible with v{version}: {problem}")
    return found


def check_registry(settings: Settings) -> tuple[list[str], list[str]]:
    """(report lines, problems) of the configured topics' schemas against the registry."""
    registry = RegistryFormat(settings.schema_registry)
    lines: list[str] = []
    found: list[str] = []
    for schema, topic in configured_topic_schemas(settings):
        subject = subject_name(settings.schema_registry.subject_strategy, topic, schema)
        try:
            registry.check(subject, json.dumps(expanded_schema(schema)))
        except ConfigError as exc:
            found.append(str(exc))
            continue
        versions = registry.versions(subject)
        state = f"compatible with {len(versions)} version(s)" if versions else "new subject"
        lines.append(f"{subject}: {schema}: {state}")
    return lines, found


def register(settings: Settings) -> list[str]:
    """Register every configured topic's schema; one line per subject with its id."""
    forced = settings.schema_registry.model_copy(update={"auto_register": True})
    registry = RegistryFormat(forced)
    ids = registry.prepare(configured_topic_schemas(settings))
    return [
        f"{subject_name(forced.subject_strategy, topic, schema)}: {schema} id={schema_id}"
        for (schema, topic), schema_id in ids.items()
    ]


class SchemasCommand:
    def __init__(self, action: str) -> None:
        self.action = action

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        if self.action == "export":
            parser.add_argument("folder", help="folder to write <full name>.avsc files to")
        else:
            parser.add_argument("--config", help="bridge TOML (topics and schema_registry)")

    def run(self, args: argparse.Namespace) -> int:
        if self.action == "export":
            for path in export(Path(args.folder)):
                print(path)
            return 0
        settings = load_settings(args.config)
        if self.action == "register":
            if not settings.schema_registry.url:
                raise ConfigError("schemas register: schema_registry.url is not configured")
            for line in register(settings):
                print(line)
            return 0
        problems = check_history()
        print(f"history: {len(compat.history_names())} schemas, {len(problems)} problem(s)")
        if settings.schema_registry.url:
            lines, found = check_registry(settings)
            for line in lines:
                print(line)
            problems += found
        for problem in problems:
            print(f"INCOMPATIBLE: {problem}")
        return 1 if problems else 0


def command(path: tuple[str, ...]) -> SchemasCommand:
    return SchemasCommand(path[-1])
