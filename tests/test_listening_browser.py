"""The listening test in a real browser: JupyterLab on localhost, Debian's Chromium
driven by Playwright, two trials answered by clicking, answers checked on disk."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from test_listening import SYSTEMS, make_stimuli

from umt_core import listening

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PARTICIPANT = "browser-participant"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian's Chromium is not installed at /usr/bin/chromium "
                              "(make setup installs it: apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "umt-study" if "umt-study" in KernelSpecManager().find_kernel_specs() else "python3"


def _write_notebook(folder: Path, stimuli: Path, answers: Path) -> Path:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(
            "from umt_core import listening\n"
            f"test = listening.ListeningTest({str(stimuli)!r}, {str(answers)!r}, {PARTICIPANT!r})\n"
            "test.widget"
        )],
        metadata={"kernelspec": {"name": _kernel_name(), "display_name": "kernel",
                                 "language": "python"}},
    )
    path = folder / "listen.ipynb"
    nbformat.write(nb, path)
    return path


class JupyterLab:
    """A JupyterLab server in `root` on a free localhost port with a random token."""

    def __init__(self, root: Path, state: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
            env[var] = str(state / sub)
        self.log = open(state / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}: {self.output()}")
            try:
                _api(self.base, self.token, "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer within {timeout} s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        try:  # shut the kernels down through the server, then the server itself
            for k in _api(self.base, self.token, "/api/kernels") or []:
                _api(self.base, self.token, f"/api/kernels/{k['id']}", method="DELETE")
        except OSError:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def lab(tmp_path):
    state = tmp_path / "jupyter"
    state.mkdir()
    server = JupyterLab(tmp_path, state)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _answer(page, instrument: str, rating: str, preference: str) -> None:
    page.get_by_role("button", name=instrument, exact=True).click()
    page.get_by_role("button", name=rating, exact=True).click()
    page.get_by_role("button", name=preference, exact=True).click()
    page.get_by_role("button", name="Submit and continue", exact=True).click()


def test_two_trials_answered_in_jupyterlab_reach_the_answers_file(tmp_path, lab):
    from playwright.sync_api import sync_playwright

    # Two systems: one clip and target give exactly two trials (both orders).
    stimuli = make_stimuli(tmp_path / "stim", systems=SYSTEMS[:2], n_trials=2)
    answers = tmp_path / "answers.csv"
    _write_notebook(tmp_path, stimuli, answers)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{lab.base}/lab/tree/listen.ipynb?token={lab.token}")
            editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
            editor.wait_for(timeout=90_000)
            # The status bar reads "<kernel> | Idle" once the kernel is up.
            page.get_by_text(re.compile(r"\|\s*Idle")).first.wait_for(timeout=120_000)
            editor.click()
            page.keyboard.press("Shift+Enter")
            page.get_by_text("Trial 1 of 2").wait_for(timeout=120_000)
            # Both players hold decodable audio (the 0.2 s test tones).
            page.wait_for_function(
                "() => { const a = [...document.querySelectorAll('.jp-OutputArea audio')];"
                " return a.length === 2 && a.every(x => x.duration > 0.1); }", timeout=30_000)
            shown = page.locator(".jp-OutputArea").first.inner_text()
            for name in SYSTEMS:
                assert name not in shown
            _answer(page, "cello", "3 fair", "Clip A is better")
            page.get_by_text("Trial 2 of 2").wait_for()
            _answer(page, "flute", "5 excellent", "Clip B is better")
            page.get_by_text("All 2 trials done").wait_for()
        finally:
            browser.close()

    df = listening.load_answers(answers)
    assert len(df) == 2 and (df.participant == PARTICIPANT).all()
    assert df.instrument.tolist() == ["cello", "flute"] and df.mos.tolist() == [3, 5]
    order = listening.ListeningTest(stimuli, answers, PARTICIPANT).trials
    assert df.trial.tolist() == [t["trial"] for t in order]
    assert df.preferred.tolist() == [order[0]["clip_a"], order[1]["clip_b"]]
