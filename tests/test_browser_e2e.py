"""End to end, as a student does it: JupyterLab in a real (headless) browser runs lesson 01.

JupyterLab is started headless on a free local port, serving a temporary copy of the lessons (so
autosave never writes outputs into the repository). Debian's Chromium, driven by Playwright for
Python, opens lesson 01, runs Run → Run All Cells, waits for the kernel to finish, and the test
checks that outputs appeared and that no cell raised. Chromium is installed by
``bootstrap.py test`` (Debian's ``chromium`` package); where it is absent the test skips, saying
so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON = "01_seq2seq_tasks.ipynb"
CHROMIUM_FLAGS = [  # headless as root on a machine with a closed network
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """Debian's Chromium (or $COURSE_CHROMIUM), if installed."""
    for candidate in (os.environ.get("COURSE_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path,
                    timeout: float = 120.0) -> None:
    """Poll JupyterLab's API until it answers (or the server dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {process.returncode}:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url} within {timeout:.0f} s")


@pytest.fixture()
def jupyter_lab(tmp_path):
    """A headless JupyterLab serving a copy of the lessons; yields (base URL, token)."""
    if not (ROOT / "notebooks" / LESSON).is_file():
        pytest.fail(f"lesson {LESSON} is missing from notebooks/")
    work = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # Render every cell (JupyterLab's default windowing leaves cells scrolled out of view out
    # of the page, so they could not be counted or checked).
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, COURSE_QUICK="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    log_path = tmp_path / "jupyter.log"
    log = log_path.open("w")
    root_flag = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
         "--ServerApp.disable_check_xsrf=False", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", *root_flag],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", process, log_path)
        yield base, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_lesson_01_runs_in_jupyterlab_in_a_real_browser(jupyter_lab, tmp_path):
    executable = chromium_path()
    if executable is None:
        pytest.skip("needs Debian's chromium (`python3.11 bootstrap.py test` installs it as root: "
                    "apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token = jupyter_lab

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab/tree/{LESSON}?token={token}")
            # The notebook panel is open and its kernel is connected and idle (clicking Run All
            # before the status bar says Idle can lose the queued cells).
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
            status = page.locator(".jp-StatusBar-TextItem", has_text="ipykernel")
            page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
            num_code_cells = page.locator(".jp-NotebookPanel .jp-CodeCell").count()
            in_file = sum(cell.cell_type == "code" for cell in nbformat.read(
                ROOT / "notebooks" / LESSON, as_version=4).cells)
            assert num_code_cells == in_file > 0, (
                f"JupyterLab shows {num_code_cells} code cells, the file has {in_file}")

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            errors = page.locator(".jp-OutputArea-output",
                                  has_text="Traceback (most recent call last)")
            # Wait until every code cell has an execution count and the kernel is idle again.
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()
                done = [p for p in prompts if p.strip()[1:-2].isdigit()]  # "[12]:"
                idle = any("| Idle" in text for text in status.all_text_contents())
                if idle and (len(done) == num_code_cells or errors.count()):
                    break  # finished, or stopped at a cell that raised
                time.sleep(1)
            page.screenshot(path=str(tmp_path / "lesson01.png"), full_page=False)

            assert errors.count() == 0, (
                "a cell raised in the browser:\n" + "\n".join(errors.all_text_contents())[:2000])
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()
            assert len(done) == num_code_cells, (
                f"expected all {num_code_cells} code cells executed, got prompts {prompts}")
            assert page.locator(".jp-OutputArea-output").count() >= num_code_cells // 2, (
                "expected outputs under most code cells")
        finally:
            browser.close()
