"""The README documents every setting, starts with the two commands a new user runs, and its
examples are either run by a test or marked illustrative; its command lines parse with the real
``cloudlog`` command, so a renamed command, option, setting or group fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from pydantic_settings import BaseSettings

from cloudlog_cli.cli import _add_plugin_commands, cli
from cloudlog_core.aws import AwsSettings
from cloudlog_ingest.settings import IngestSettings
from cloudlog_ingest.tenants import TenantSettings
from cloudlog_wire.broker import BrokerSettings
from cloudlog_worker.settings import WorkerSettings
from cloudlog_writer.settings import WriterSettings
from flask_cloudlog.settings import ExtensionSettings

README = (Path(__file__).parents[2] / "README.md").read_text()
SETTINGS_CLASSES: list[type[BaseSettings]] = [
    AwsSettings,
    BrokerSettings,
    ExtensionSettings,
    WorkerSettings,
    IngestSettings,
    WriterSettings,
    TenantSettings,
]


def variable_names(settings_class: type[BaseSettings]) -> list[str]:
    prefix = settings_class.model_config.get("env_prefix", "")
    return [f"{prefix}{name}".upper() for name in settings_class.model_fields]


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_in_the_readme_table(settings_class: type[BaseSettings]) -> None:
    missing = [name for name in variable_names(settings_class) if f"| `{name}` |" not in README]
    assert missing == []


def test_readme_starts_with_make_dev_and_make_test() -> None:
    opening = README.split("## ", 1)[0]
    assert "make dev" in opening and "make test" in opening


# --- The README's examples cannot drift from the code ------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- (illustrative|tested: (\S+)::(\w+))\b[^>]*-->\s*\Z")
EXECUTABLE_LANGUAGES = {"sh", "python"}
INLINE_COMMAND = re.compile(r"`((?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?cloudlog [^`]+)`")


def code_blocks() -> list[tuple[str, str, str]]:
    """(language, body, the text just before the fence) for every fenced block."""
    return [
        (match.group(1), match.group(2), README[: match.start()])
        for match in FENCE.finditer(README)
    ]


def command_lines() -> list[str]:
    """Every ``cloudlog ...`` line of an sh block and every inline ``cloudlog ...`` span."""
    found = [
        line
        for language, body, _ in code_blocks()
        if language == "sh"
        for line in body.splitlines()
        if re.match(r"(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?cloudlog ", line)
    ]
    found += INLINE_COMMAND.findall(README)
    return found


def test_every_sh_and_python_block_is_tested_or_marked_illustrative() -> None:
    unmarked = []
    tested: list[tuple[str, str]] = []
    for language, body, before in code_blocks():
        if language not in EXECUTABLE_LANGUAGES:
            continue
        marker = MARKER.search(before)
        if marker is None:
            unmarked.append(body.splitlines()[0])
        elif marker.group(2):
            tested.append((marker.group(2), marker.group(3)))
    assert unmarked == [], "mark these <!-- illustrative --> or test them"
    root = Path(__file__).parents[2]
    for path, name in tested:  # a "tested" marker names a test that exists
        assert f"def {name}(" in (root / path).read_text(), (path, name)


def _words(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)  # VARIABLE=value before the command
    assert words and words[0].endswith("cloudlog"), line
    return words[1:]


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command the words name, and the words left for it."""
    command: click.Command = cli
    rest = list(words)
    while rest and rest[0].startswith("--") and isinstance(command, click.Group):
        rest.pop(0)  # group options (--debug): checked below with the leaf's
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("line", command_lines())
def test_every_documented_cloudlog_command_exists_with_its_options(line: str) -> None:
    _add_plugin_commands()
    words = _words(line.replace("\\|", "|"))
    command, rest = _resolve(words)
    if isinstance(command, click.Group):  # `cloudlog tenant`, `cloudlog --debug COMMAND ...`
        assert not rest or rest[0].isupper() or rest[0] == "...", line
        return
    known = _options(command) | _options(cli) | {"--help"}
    documented = {w.strip("[]").split("=")[0] for w in words if w.strip("[").startswith("--")}
    assert documented <= known, f"{line}: unknown {sorted(documented - known)}"


@pytest.mark.parametrize(
    "line",
    [
        line
        for language, body, _ in code_blocks()
        if language == "sh"
        for line in body.splitlines()
        if re.match(r"(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?cloudlog ", line)
    ],
)
def test_every_cloudlog_line_of_an_sh_block_parses_with_the_real_command(line: str) -> None:
    """Click parses it as the command would (options, arguments, types, required ones)."""
    _add_plugin_commands()
    command, rest = _resolve(_words(line))
    assert not isinstance(command, click.Group), line
    with command.make_context(command.name or "cloudlog", rest) as ctx:
        assert ctx.params is not None


def test_readme_names_the_groups_and_folders_cloudlog_dev_really_uses() -> None:
    from cloudlog_devtools.commands import dev
    from cloudlog_devtools.demo import DEMO_LOG_GROUP
    from cloudlog_devtools.localpipeline import LOCAL_TENANT

    stored = f"{LOCAL_TENANT}/{DEMO_LOG_GROUP}"
    assert f"cloudlog tail {stored} --follow" in README
    assert re.search(rf"cloudlog tail (?!{re.escape(stored)})\S*{DEMO_LOG_GROUP}", README) is None
    defaults = {param.name: param.default for param in dev.params}
    assert f"`{defaults['log_dir']}/{{emulator,ingest,worker}}.log`" in README
    assert f"--emulator-port {defaults['emulator_port']}" in README
    assert f"127.0.0.1:{defaults['emulator_port']}" in README


def test_every_cloudlog_variable_in_the_readme_is_a_real_setting() -> None:
    known = {name for cls in SETTINGS_CLASSES for name in variable_names(cls)}
    mentioned = set(re.findall(r"\bCLOUDLOG_[A-Z0-9_]*[A-Z0-9]\b", README))
    assert mentioned - known == set()
