"""The lesson setup: the CI switch, seeds and threads."""

from __future__ import annotations

import random

import pytest
import torch

from course_lib.lesson import quick_mode, setup_lesson


@pytest.mark.parametrize(("value", "expected"), [
    ("", False), ("0", False), ("false", False), ("1", True), ("yes", True), ("TRUE", True)])
def test_quick_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_QUICK", value)
    assert quick_mode() is expected
    assert setup_lesson(verbose=False, threads=None).pick(full="full", quick="quick") == (
        "quick" if expected else "full")


def test_setup_seeds_every_generator_and_sets_threads(capsys):
    before = torch.get_num_threads()
    try:
        settings = setup_lesson(seed=3, threads=1)
        first = (random.random(), torch.rand(3))
        setup_lesson(seed=3, threads=1)
        second = (random.random(), torch.rand(3))
        assert first[0] == second[0] and torch.equal(first[1], second[1])
        assert settings.threads == 1 == torch.get_num_threads()
        assert "seed 3" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_bad_thread_count_is_rejected():
    with pytest.raises(ValueError, match="at least 1"):
        setup_lesson(threads=0, verbose=False)


def test_auto_threads_two_on_four_cores_else_one_and_one_in_quick_mode(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("COURSE_QUICK", "0")
        monkeypatch.setattr("os.cpu_count", lambda: 8)
        assert setup_lesson(verbose=False).threads == 2
        monkeypatch.setattr("os.cpu_count", lambda: 2)
        assert setup_lesson(verbose=False).threads == 1
        monkeypatch.setattr("os.cpu_count", lambda: 8)
        monkeypatch.setenv("COURSE_QUICK", "1")
        assert setup_lesson(verbose=False).threads == 1
        with pytest.raises(ValueError, match="'many'"):
            setup_lesson(threads="many", verbose=False)
    finally:
        torch.set_num_threads(before)
