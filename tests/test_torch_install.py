"""The Makefile's torch install: which index it uses is explicit and overridable (TORCH_INDEX_URL)."""

import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_install_command(tmp_path, *variables: str) -> list[str]:
    """The pip command line that `make test` would run in a fresh venv, as `make -n` prints it."""
    dry_run = subprocess.run(
        ["make", "-n", "test", f"VENV={tmp_path / 'venv'}", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [line for line in dry_run.stdout.splitlines() if "pip install" in line and "torch==" in line]
    return shlex.split(line.split("||", 1)[1])


def test_torch_index_url_reaches_pip(tmp_path):
    command = torch_install_command(tmp_path, f"TORCH_INDEX_URL={CPU_INDEX}")
    assert command[command.index("--index-url") + 1] == CPU_INDEX
    assert command[-1] == "torch==2.13.0"


@pytest.mark.parametrize("variables", [(), ("TORCH_INDEX_URL=",)])
def test_without_torch_index_url_pip_uses_its_own_configuration(tmp_path, variables):
    command = torch_install_command(tmp_path, *variables)
    assert "--index-url" not in command and command[-1] == "torch==2.13.0"
