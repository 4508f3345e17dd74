"""The README documents every command, and its first commands are the two the brief promises."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from avpcli.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def command_names() -> list[str]:
    click_group = typer.main.get_command(app)
    return sorted(click_group.commands)


def test_every_command_is_in_the_readme():
    for name in command_names():
        assert f"avp {name}" in README, f"`avp {name}` is not documented in README.md"


def test_readme_starts_with_the_install_and_run_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("pip install -e . && avp demo")
    assert commands[1].endswith('pip install -e ".[test]" && pytest')


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = [line for line in blocks[1].splitlines() if line and not line.startswith("#")][0]
    assert test_command in ci


def test_the_readme_states_the_output_contract_and_the_link_decision():
    for option in ("--null", "--follow-links", "--overwrite"):
        assert option in README, f"{option} is not documented in README.md"
