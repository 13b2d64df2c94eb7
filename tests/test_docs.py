"""Documentation kept in step with the code: every setting, command and option is documented."""

from __future__ import annotations

import re

import click

from gpuhistory.cli.main import cli
from gpuhistory.domain.config import Config
from tests.conftest import REPO


def test_every_config_key_is_documented() -> None:
    """docs/configuration.md has a row for every key, with its default."""
    text = (REPO / "docs" / "configuration.md").read_text()
    for name, field in Config.model_fields.items():
        row = re.search(rf"^\| `{name}` \| ([^|]+) \|", text, re.M)
        assert row, f"{name} missing from docs/configuration.md"
        default = "unset" if field.default is None else str(field.default)
        assert row.group(1).strip() == default, name


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        path = f"{prefix} {name}".strip()
        if isinstance(command, click.Group):
            yield from _commands(command, path)
        else:
            yield path, command


def test_every_cli_command_and_option_is_documented() -> None:
    """docs/cli.md names every command and every long option of each."""
    text = (REPO / "docs" / "cli.md").read_text()
    for path, command in _commands(cli):
        assert f"gpuhistory {path}" in text, path
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}" in text, f"{path} {opt}"


def test_readme_starts_with_the_two_commands() -> None:
    """The README opens with exactly the two commands: one serves, one tests."""
    lines = (REPO / "README.md").read_text().splitlines()
    block = lines[lines.index("```sh") + 1: lines.index("```")]
    assert [line.split("#")[0].strip() for line in block] == ["make serve", "make test"]
