# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the kit into it.
#
# CPU machines install torch==$(TORCH_VERSION) first (a CPU build here; a bare `pip install torch`
# would pull a multi-GB CUDA build). GPU users: install the CUDA build for your driver into .venv
# first (see README), then run make; pip keeps the torch that is already there.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data

# Real data for the demo and the tests, when it sits next to the checkout (CI sets these too).
export QA_KIT_CMRC_DIR ?= $(if $(wildcard $(SHARED_DATA)/cmrc2018/cmrc2018_dev.json),$(abspath $(SHARED_DATA)/cmrc2018))
export QA_KIT_VOCAB_DIR ?= $(if $(wildcard $(SHARED_DATA)/bert-base-chinese/vocab.txt),$(abspath $(SHARED_DATA)/bert-base-chinese))
# The venv's tools first: nbgrader runs `alembic` (and notebooks may run `qa-kit`) as commands.
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint release clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
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

demo: $(BIN)/.installed
	$(BIN)/qa-kit demo

# Every test, the browser tests included (they need Debian's chromium and fonts-noto-cjk, see .ci/run);
# `$(BIN)/python -m pytest -m "not browser"` leaves the browser tests out.
test: $(BIN)/.installed
	$(BIN)/ruff check qa_lib tests bench
	$(BIN)/python -m pytest

# The student release: notebooks/bert_qa/ from solutions/, with the kit's wheel that its setup cells install
# (nbgrader_config.py's default install source; QA_KIT_INSTALL_SOURCE=git+https://... names another one).
release: $(BIN)/.installed
	$(BIN)/nbgrader generate_assignment bert_qa --force
	$(BIN)/python -c "from qa_lib.course.release import build_wheel; print(build_wheel('notebooks/bert_qa'))"

clean:
	rm -rf $(VENV) runs .pytest_cache
