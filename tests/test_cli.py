"""`course build`: executes lessons headless, never touches the sources, reports failures."""

import json
import subprocess
import sys

import nbformat
import pytest

from course_lib.cli import main


def make_course(tmp_path, cells):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    for name, source in cells.items():
        notebook = nbformat.v4.new_notebook()
        notebook.cells = [nbformat.v4.new_code_cell(code) for code in source]
        nbformat.write(notebook, tmp_path / "notebooks" / name)
    return tmp_path


def test_build_without_lessons_succeeds_and_says_so(tmp_path, capsys):
    root = make_course(tmp_path, {})
    assert main(["--root", str(root), "build"]) == 0
    assert "no lessons to run" in capsys.readouterr().out


def test_build_executes_lessons_and_keeps_sources_clean(tmp_path):
    root = make_course(tmp_path, {
        "01_ok.ipynb": ["import os\nx = 6 * 7",
                        "print('answer', x, os.environ.get('COURSE_QUICK'))"],
        "02_broken.ipynb": ["raise RuntimeError('lesson bug')"],
    })
    before = (root / "notebooks" / "01_ok.ipynb").read_text()
    result = subprocess.run([sys.executable, "-m", "course_lib.cli", "--root", str(root),
                             "build", "--quick"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr  # one lesson failed
    assert "01_ok.ipynb" in result.stdout and "FAILED" in result.stdout
    assert "RuntimeError: lesson bug" in result.stdout
    assert "1/2 lessons ran" in result.stdout
    executed = json.loads((root / "build" / "lessons" / "01_ok.ipynb").read_text())
    assert "".join(executed["cells"][1]["outputs"][0]["text"]) == "answer 42 1\n"
    assert (root / "build" / "lessons" / "01_ok.html").is_file()
    assert (root / "notebooks" / "01_ok.ipynb").read_text() == before


def test_build_only_selects_lessons(tmp_path, capsys):
    root = make_course(tmp_path, {"01_a.ipynb": ["1"]})
    assert main(["--root", str(root), "build", "--only", "07"]) == 1
    assert "no lessons to run" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "build" in capsys.readouterr().out


@pytest.mark.parametrize("folder", ["notebooks"])
def test_stored_notebooks_have_no_outputs(repo_root, folder):
    for path in sorted((repo_root / folder).rglob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name
