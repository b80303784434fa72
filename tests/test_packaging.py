"""environment.yml and pyproject.toml must list the same dependencies with the same versions."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    pip_section = text.split("- pip:", 1)[1]
    listed = {normalise(line.strip()[2:]) for line in pip_section.splitlines() if line.strip().startswith("- ")}
    listed.discard("-e.")
    assert listed == declared


def test_tokenizers_releases_that_drop_windows_are_excluded():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tokenizers = next(r for r in project["dependencies"] if r.startswith("tokenizers"))
    assert "!=0.23.1" in tokenizers and "!=0.23.2" in tokenizers
