"""Releasing the assignment: where the students' setup cells install the kit from.

A student on Colab has no checkout of the kit, so the setup cell (grade id ``setup_environment``) installs it
with pip from ``KIT_SOURCE``. The instructor names that source once, in ``nbgrader_config.py``
(``c.KitRelease.install_source``, or ``QA_KIT_INSTALL_SOURCE`` for one release), and :class:`KitRelease`, the
first preprocessor of ``nbgrader generate_assignment``, writes it into the released setup cells. It refuses to
release a notebook that would still name a placeholder.

Two kinds of source (README, "Students on Colab"):

- a pip requirement such as ``git+https://github.com/<org>/<repo>.git@<tag>`` (students need the network and
  read access to the repository);
- the file name of a wheel that the instructor ships next to the notebooks (:func:`build_wheel`); the setup
  cell installs it from the kernel's working folder (the notebook's folder in Jupyter, ``/content`` on Colab).

The default in ``nbgrader_config.py`` is the wheel of this version (:func:`wheel_name`), so that a release is
installable without further configuration; the grading demo builds that wheel beside its release.

Nothing here imports torch or transformers: ``nbgrader_config.py`` imports this module.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

SETUP_GRADE_ID = "setup_environment"
DISTRIBUTION = "qa-kit"
# The line of the setup cell that names the install source; the source notebooks keep a placeholder there.
SOURCE_LINE = re.compile(r"^KIT_SOURCE = .*$", re.M)
# What a source must never contain in a released notebook: the placeholder of the source notebooks.
PLACEHOLDER = "YOUR-ORG"
SOURCE_COMMENT = "  # 安装来源：发布时按 nbgrader_config.py 的 c.KitRelease.install_source 写入"


def wheel_name() -> str:
    """File name of the kit's wheel for the installed version (what :func:`build_wheel` writes)."""
    return f"{DISTRIBUTION.replace('-', '_')}-{version(DISTRIBUTION)}-py3-none-any.whl"


class ReleaseError(ValueError):
    """A notebook cannot be released as configured."""


class KitRelease(NbGraderPreprocessor):
    """``nbgrader generate_assignment`` preprocessor: writes the install source into the setup cell."""

    install_source = Unicode(
        "",
        help="pip requirement or wheel file name the released setup cells install the kit from "
        "(e.g. git+https://github.com/<org>/<repo>.git@<tag>, or qa_kit-<version>-py3-none-any.whl shipped "
        "next to the notebooks)",
    ).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        source = self.install_source.strip()
        name = resources.get("unique_key", "notebook")
        if not source or PLACEHOLDER in source:
            raise ReleaseError(
                f"{name}: set c.KitRelease.install_source in nbgrader_config.py (or QA_KIT_INSTALL_SOURCE) to "
                f"where students install the kit from; got {source!r}"
            )
        setup_cells = [cell for cell in nb.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == SETUP_GRADE_ID]
        if len(setup_cells) != 1 or len(SOURCE_LINE.findall(setup_cells[0].source)) != 1:
            raise ReleaseError(f"{name}: expected one setup cell ({SETUP_GRADE_ID}) with one `KIT_SOURCE = ...` line")
        cell = setup_cells[0]
        literal = json.dumps(source, ensure_ascii=False)  # a Python string literal too, in the cell's quote style
        cell.source = SOURCE_LINE.sub(lambda _: f"KIT_SOURCE = {literal}{SOURCE_COMMENT}", cell.source)
        leftover = [index for index, c in enumerate(nb.cells) if PLACEHOLDER in c.source]
        if leftover:
            raise ReleaseError(f"{name}: cells {leftover} still contain the placeholder {PLACEHOLDER}")
        return nb, resources


def build_wheel(destination: str | Path) -> Path:
    """Build the kit's wheel into ``destination`` and return its path.

    Only the library is built (pyproject.toml, README.md and qa_lib/ copied to a scratch folder): the wheel
    cannot carry solutions/ or hidden tests, and the build writes nothing into the checkout."""
    from .grading import kit_root

    root, destination = kit_root(), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qa-kit-wheel-") as scratch:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, scratch)
        shutil.copytree(root / "qa_lib", Path(scratch) / "qa_lib", ignore=shutil.ignore_patterns("__pycache__"))
        # --no-build-isolation: the build uses this environment's setuptools, so it works offline.
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        subprocess.run([*command, "-w", str(destination), scratch], check=True, capture_output=True)
    wheel = destination / wheel_name()
    if not wheel.is_file():
        raise FileNotFoundError(f"pip wheel did not write {wheel}")
    return wheel
