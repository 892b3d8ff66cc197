"""The project's own files agree with each other: pins, install commands, lint, entry points."""

import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement


def pyproject(repo_root):
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def normalise(requirement: str) -> tuple[str, str]:
    """(canonical name, sorted specifier string) of a pip or conda requirement."""
    requirement = re.sub(r"\s+", "", requirement)
    parsed = Requirement(requirement)
    name = re.sub(r"[-_.]+", "-", parsed.name).lower()
    return name, ",".join(sorted(str(s) for s in parsed.specifier))


def test_environment_yml_names_the_same_dependencies_and_pins(repo_root):
    project = pyproject(repo_root)["project"]
    wanted = {normalise(r) for r in project["dependencies"]}
    wanted |= {normalise(r) for r in project["optional-dependencies"]["dev"]}

    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    conda, pip = [], []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip += entry["pip"]
        elif not entry.startswith(("python=", "python ")) and entry != "pip":
            conda.append(entry)
    declared = [normalise(r) for r in conda + pip]
    assert len(declared) == len(set(declared)), "a package is listed twice in environment.yml"
    assert set(declared) == wanted
    assert any(entry.startswith("python=3.11") for entry in env["dependencies"]
               if isinstance(entry, str))
    assert ("torch", "==2.13.0") in {normalise(r) for r in pip}


def test_torch_is_pinned_exactly_and_d2l_goes_in_without_its_pins(repo_root):
    config = pyproject(repo_root)
    assert "torch==2.13.0" in [re.sub(r"\s+", "", r) for r in config["project"]["dependencies"]]
    assert config["tool"]["course"]["no-deps"] == ["d2l==1.0.3"]
    assert not any(r.startswith("d2l") for r in config["project"]["dependencies"])


def test_ci_runs_the_readme_commands_verbatim(repo_root):
    readme = (repo_root / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    build, test = commands[0].strip(), commands[1].strip()
    assert build == "python3.11 bootstrap.py build"
    assert test == "python3.11 bootstrap.py test"
    ci = (repo_root / ".ci" / "run").read_text().splitlines()
    assert "python3.11 bootstrap.py" in ci  # README's install command
    assert test in ci
    assert "rm -rf .venv" in "\n".join(ci)  # a fresh environment


def test_console_script_is_declared_and_works(repo_root):
    assert pyproject(repo_root)["project"]["scripts"]["course"] == "course_lib.cli:main"
    out = subprocess.run([sys.executable, "-m", "course_lib.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("course ")
    script = shutil.which("course")
    if script is None:
        pytest.skip("the `course` script is not on PATH (package not installed in this env)")
    assert subprocess.run([script, "--help"], capture_output=True, check=True).returncode == 0


def test_ruff_passes(repo_root):
    ruff = [sys.executable, "-m", "ruff"]
    result = subprocess.run(ruff + ["check", "."], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_layout(repo_root):
    for folder in ("notebooks", "course_lib", "assignments", "solutions", "tests", "benchmarks"):
        assert (repo_root / folder).is_dir(), folder
    for file in ("environment.yml", "README.md", "pyproject.toml", "nbgrader_config.py",
                 ".ci/run", "bootstrap.py"):
        assert (repo_root / file).is_file(), file
    config = (repo_root / "nbgrader_config.py").read_text()
    assert 'source_directory = "solutions"' in config
    assert 'release_directory = "assignments"' in config
