"""The README documents every command, and its first commands are the two the brief promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


def readme_examples() -> list[str]:
    """The README's Python blocks marked `<!-- example ... -->`: code a user may paste as it is."""
    return re.findall(r"<!-- example[^\n]*-->\n```python\n(.*?)```", README, flags=re.S)


def test_the_readme_has_a_python_example():
    assert readme_examples(), "README.md has no Python block marked <!-- example -->"


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_readme_python_examples_run_as_written(index, tmp_path, tiny_key_file, monkeypatch):
    """Each example runs unchanged in a folder holding what its marker names: a key and a photo."""
    import shutil

    from avpcli.demo import SAMPLES

    (tmp_path / "keys").mkdir()
    shutil.copy(tiny_key_file, tmp_path / "keys" / "my-key.safetensors")
    shutil.copytree(SAMPLES, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    code = readme_examples()[index]
    namespace: dict = {}
    exec(compile(code, f"README.md example {index + 1}", "exec"), namespace)  # noqa: S102 - our own README
    # The first example encrypts the shipped photo and decrypts it: check what it left.
    if "astronaut-encrypted.png" in code:
        from PIL import Image

        written = Image.open(tmp_path / "astronaut-encrypted.png")
        assert written.size == (150, 150)
        assert len(namespace["restored"]) == len(namespace["ciphertexts"]) == 1
        assert namespace["restored"][0].shape == (3, 150, 150)
