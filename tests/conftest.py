"""Shared fixtures: d2l as a reference, the ../shared corpus, and the repository root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The book's decoders (d2l_book.py) are references, not course code: they live beside the
# benchmarks that use them, and tests import them from there (`from d2l_book import ...`).
sys.path.append(str(ROOT / "benchmarks"))


def shared_dir() -> Path:
    """``$COURSE_SHARED_DIR`` if set, else ``../shared`` beside the repository."""
    return Path(os.environ.get("COURSE_SHARED_DIR", ROOT.parent / "shared"))


def shared_fra_txt() -> Path:
    return shared_dir() / "data" / "fra-eng" / "fra.txt"


@pytest.fixture(scope="session")
def fra_txt() -> Path:
    """The Tatoeba corpus in ../shared; tests using it skip with a reason where it is absent."""
    path = shared_fra_txt()
    if not path.is_file():
        pytest.skip(f"needs the shared corpus at {path} (../shared is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def d2l():
    """d2l.torch, loaded through course_lib.compat (torchvision stand-in where needed)."""
    from course_lib.compat import load_d2l

    return load_d2l()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run on one torch thread: their tensors are tiny, and on a busy 2-core machine
    OpenMP's thread barriers made small ops up to 30x slower. Benchmarks set their own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
