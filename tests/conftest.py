"""Shared fixtures. Real-data fixtures read the folders named by environment variables:

- QA_KIT_CMRC_DIR:  folder with cmrc2018_dev.json and cmrc2018_trial.json
- QA_KIT_VOCAB_DIR: folder with the bert-base-chinese vocab.txt

`make test` and `.ci/run` set both. Without them a developer's run skips the real-data tests;
under CI (CI=true) a missing folder is an error, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _data_folder(variable: str, expected_file: str) -> Path:
    folder = os.environ.get(variable)
    if folder and (Path(folder) / expected_file).is_file():
        return Path(folder)
    message = f"{variable} must name a folder containing {expected_file} (got {folder!r})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cmrc_dir() -> Path:
    return _data_folder("QA_KIT_CMRC_DIR", "cmrc2018_dev.json")


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    return _data_folder("QA_KIT_VOCAB_DIR", "vocab.txt")


@pytest.fixture(scope="session")
def real_tokenizer(vocab_dir):
    from qa_lib.models import load_tokenizer

    return load_tokenizer(vocab_dir)


@pytest.fixture(scope="session")
def offline_tokenizer():
    from qa_lib.models import build_offline_tokenizer

    return build_offline_tokenizer()
