# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the kit into it.
#
# torch==$(TORCH_VERSION) is installed first, from TORCH_INDEX_URL when it is set, else from pip's own
# configuration. Which build that gives depends on the index: stock PyPI serves the multi-GB CUDA build
# on Linux, so a CPU-only Linux machine sets TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu and a
# CUDA machine .../whl/cu126 (or the cuXXX matching its driver). pip keeps a torch already in .venv.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data

# Real data for the demo and the tests, when it sits next to the checkout (CI sets these too).
export QA_KIT_CMRC_DIR ?= $(if $(wildcard $(SHARED_DATA)/cmrc2018/cmrc2018_dev.json),$(abspath $(SHARED_DATA)/cmrc2018))
export QA_KIT_VOCAB_DIR ?= $(if $(wildcard $(SHARED_DATA)/bert-base-chinese/vocab.txt),$(abspath $(SHARED_DATA)/bert-base-chinese))
# The venv's tools first: nbgrader runs `alembic` (and notebooks may run `qa-kit`) as commands.
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint release clean sandbox

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	# nbgrader's JupyterLab extension (Validate button, formgrader) and its server side: instructors, students
	# and the browser tests use them. They ship enabled; this re-enables them where someone turned them off.
	$(BIN)/jupyter labextension enable --level=sys_prefix @jupyter/nbgrader >/dev/null
	$(BIN)/jupyter server extension enable --sys-prefix \
		nbgrader.server_extensions.formgrader nbgrader.server_extensions.validate_assignment >/dev/null 2>&1
	# Build matplotlib's font cache now: its one-time notice goes to stderr, which would zero a graded cell.
	$(BIN)/python -c "import matplotlib.pyplot" 2>/dev/null
	touch $@

# Autograde runs student kernels in a bubblewrap sandbox; as root on Debian/Ubuntu the Makefile installs it.
sandbox:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } || \
		echo "bubblewrap is missing: install it (apt-get install bubblewrap) to autograde; see README"

demo: $(BIN)/.installed sandbox
	$(BIN)/qa-kit demo

# Every test, the browser tests included (they need Debian's chromium and fonts-noto-cjk, see .ci/run);
# `$(BIN)/python -m pytest -m "not browser"` leaves the browser tests out.
test: $(BIN)/.installed sandbox
	$(BIN)/ruff check qa_lib tests bench
	$(BIN)/python -m pytest

# The student release: notebooks/bert_qa/ from solutions/, with the kit's wheel that its setup cells install
# (nbgrader_config.py's default install source; QA_KIT_INSTALL_SOURCE=git+https://... names another one).
release: $(BIN)/.installed
	$(BIN)/nbgrader generate_assignment bert_qa --force
	$(BIN)/python -c "from qa_lib.course.release import build_wheel; print(build_wheel('notebooks/bert_qa'))"

clean:
	rm -rf $(VENV) runs .pytest_cache
