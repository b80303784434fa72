"""A student on Colab: the released setup cell in a kernel that already imported Colab's transformers 4.

Colab preinstalls transformers 4.x, accelerate and torch; the kit needs transformers 5. A simulated runtime:
a venv with those packages (built once and cached in ``.cache/``, git-ignored: about a minute on two cores),
layered under a fresh venv per test through a ``.pth`` file, so that pip installs the kit and its newer
dependencies into the fresh venv while the old ones stay visible, as on Colab. The kernel imports transformers
and accelerate, then runs the released setup cell: the install must end with a clear request to restart the
runtime. After the restart (a new kernel in the same environment) the setup cell installs nothing and the first
sections of part 1 run, with the student's answers filled in.

Everything is installed offline from this machine's pip configuration; the kit comes from its wheel beside the
released notebooks, the default install source (``qa_lib.course.release``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qa_lib.course.grading import ASSIGNMENT, Course, cell_error
from qa_lib.course.release import build_wheel

pytestmark = pytest.mark.colab

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
# What Colab brings along that matters to the kit: transformers 4.x and its friends, torch (a CPU build here).
COLAB_PACKAGES = ["torch==2.13.0", "transformers<5", "accelerate", "ipykernel", "matplotlib", "numpy", "nltk", "tqdm"]
# Part 1 up to and including exercise E2's public test: data, E1, tokenisation, E2.
LAST_CELL = "e2_positions_visible"
PRELOAD = "import transformers, accelerate\nprint(transformers.__version__)"


def stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


@pytest.fixture(scope="session")
def colab_base() -> Path:
    """The cached venv that stands for Colab's preinstalled packages (rebuilt when COLAB_PACKAGES change)."""
    key = hashlib.sha256(" ".join([sys.version, *COLAB_PACKAGES]).encode()).hexdigest()[:12]
    base = CACHE / f"colab-base-{key}"
    if not (base / "complete").is_file():
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(base)], check=True)
        subprocess.run([base / "bin" / "python", "-m", "pip", "install", "--quiet", *COLAB_PACKAGES], check=True)
        (base / "complete").write_text("\n".join(COLAB_PACKAGES))
    return base


def completed_release(release: Path, name: str) -> nbformat.NotebookNode:
    """The released notebook with the solution's answers in its answer cells: a student who did the work."""
    notebook = nbformat.read(release / f"{name}.ipynb", as_version=4)
    answers = {
        c.id: c.source for c in nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{name}.ipynb", as_version=4).cells
    }
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = answers[cell.id]
    return notebook


def run_cells(runtime: Path, release: Path, cells: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """Run cells in one new kernel of the runtime (errors recorded, not raised), in the release folder."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.from_dict(dict(cell)) for cell in cells])
    specs = KernelSpecManager(kernel_dirs=[str(runtime / "share" / "jupyter" / "kernels")])
    client = NotebookClient(
        notebook,
        km=KernelManager(kernel_name="colab", kernel_spec_manager=specs),
        timeout=900,  # the first cell pip-installs the kit with transformers 5 and nbgrader
        allow_errors=True,
    )
    # Not this checkout's qa_lib: on Colab the kit is not importable until the setup cell installs it.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{runtime / 'bin'}{os.pathsep}{env['PATH']}"
    with client.setup_kernel(cwd=str(release), env=env):
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
    return notebook.cells


def test_colab_runtime_asks_for_a_restart_then_runs_part_one(colab_base, tmp_path):
    release = Course.from_kit_solutions(tmp_path / "course").release()
    build_wheel(release)
    runtime = tmp_path / "colab-runtime"
    subprocess.run([sys.executable, "-m", "venv", str(runtime)], check=True)
    (site_packages(runtime) / "colab_preinstalled.pth").write_text(f"{site_packages(colab_base)}\n")
    python = runtime / "bin" / "python"
    subprocess.run([python, "-m", "ipykernel", "install", "--prefix", str(runtime), "--name", "colab"], check=True)

    notebook = completed_release(release, "01_finetune_qa")
    by_id = {cell.id: cell for cell in notebook.cells}
    preload = nbformat.v4.new_code_cell(PRELOAD)

    # First run: Colab's transformers 4 is imported before the setup cell installs the kit.
    first = run_cells(runtime, release, [preload, by_id["settings"], by_id["setup_environment"]])
    assert stdout(first[0]).startswith("4."), first[0].outputs
    error = cell_error(first[2])
    assert error and error.startswith("RuntimeError"), first[2].outputs
    assert "transformers" in error and "重启" in error and "restart the runtime" in error, error

    # After "Restart session": a new kernel, the kit installed, transformers 5 on the path.
    upto = [cell.id for cell in notebook.cells].index(LAST_CELL) + 1
    check = nbformat.v4.new_code_cell("import transformers, qa_lib\nprint(transformers.__version__, qa_lib.__file__)")
    second = run_cells(runtime, release, [*notebook.cells[:upto], check])
    errors = [(cell.get("id"), cell_error(cell)) for cell in second if cell.cell_type == "code" and cell_error(cell)]
    assert errors == []
    version, location = stdout(second[-1]).split()
    assert version.startswith("5.") and str(runtime) in location, (version, location)
    assert any("e2_positions_visible: 1 个用例通过" in stdout(cell) for cell in second if cell.cell_type == "code")
