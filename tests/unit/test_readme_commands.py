"""The README's "Using it" synopsis is the CLI's real surface: every command and option it shows exists, and every
command the CLI has is shown (the blocks that run things are played by CI and tests/system/test_readme.py)."""

from __future__ import annotations

import enum
import re

import typer.main

from flows.cli import app
from tests.readme import code_blocks

COMMAND_LINE = re.compile(r"^\.venv/bin/stockpipe (\w+)(.*)$")


def synopsis() -> dict[str, str]:
    """Each documented command and the rest of its synopsis (continuation lines joined)."""
    (block,) = code_blocks("Using it", "bash")
    commands: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if match := COMMAND_LINE.match(line):
            current = match.group(1)
            commands[current] = match.group(2)
        elif current and line.strip():
            commands[current] += " " + line.strip()
    return commands


def cli_commands() -> dict:
    return dict(typer.main.get_command(app).commands)


def choices(param) -> set[str] | None:
    annotation = param.type_descriptor.annotation
    return (
        {member.value for member in annotation}
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum)
        else None
    )


def test_every_cli_command_is_in_the_synopsis_and_back():
    assert set(synopsis()) == set(cli_commands())


def test_every_documented_option_and_choice_exists():
    commands = cli_commands()
    for name, text in synopsis().items():
        params = {opt: param for param in commands[name].params for opt in [*param.opts, *param.secondary_opts]}
        for option, shown in re.findall(r"(--[\w-]+)(?: ([\w|]+\|[\w|]+))?", text):
            assert option in params, f"README shows `stockpipe {name} {option}`, which the CLI does not have"
            if shown:
                real = choices(params[option])
                assert real is not None and set(shown.split("|")) == real, (name, option, real)


def test_every_option_a_command_has_is_documented():
    commands = cli_commands()
    for name, text in synopsis().items():
        shown = set(re.findall(r"--[\w-]+", text))
        for param in commands[name].params:
            if param.param_type_name == "option" and not param.hidden:
                assert shown & {*param.opts, *param.secondary_opts}, f"`stockpipe {name}` {param.opts[0]}: not shown"
