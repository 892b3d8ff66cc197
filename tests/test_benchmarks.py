"""Every benchmark script runs in its quick mode, so none can rot (the speed targets are
checked by running the scripts in full, not here: timings on a shared CI machine are noise)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_fra_txt

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmarks():
    assert SCRIPTS, "benchmarks/ holds no bench_*.py script"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_quick_mode(script, tmp_path):
    if script.stem == "bench_fra_eng" and not shared_fra_txt().is_file():
        pytest.skip(f"bench_fra_eng needs the fra-eng corpus at {shared_fra_txt()}")
    csv = tmp_path / f"{script.stem}.csv"
    result = subprocess.run([sys.executable, str(script), "--quick", "--csv", str(csv)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert csv.is_file() and len(csv.read_text().splitlines()) >= 2
