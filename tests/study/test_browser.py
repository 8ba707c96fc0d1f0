"""What a researcher sees in MLflow's UI, in a real browser: the views read at a glance.

A finished quick-start study and the paper's baselines in one sqlite store, served by
``snn-study ui`` (:mod:`study.views`) and opened in headless Chromium through the DevTools
protocol: the runs-table link the command prints, and the compare view of the study's trials
and one baseline, must show every run and no error banner; the runs table, in the study's
saved view, the trials' test accuracy and dimensions as columns, not MLflow's defaults. The
screenshots (what the user sees) are in the test's ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from procs import free_port

from study.local_ray import terminate

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (make test-tools installs Debian's)")]

# What MLflow's UI shows where a page or one of its sections failed (its own messages).
ERRORS = ("Something went wrong", "An error occurred while rendering", "Failed to load chart data",
          "The request failed", "A network error occurred", "Internal server error", "Resource not found",
          "Experiment load error", "An unknown error occurred", "Error loading shared view state")
WIDTH, HEIGHT = 1600, 1000
# The runs table's columns the link opens it with (study.views.STUDY_VIEW): the trials' four
# dimensions, test accuracy, energy and method.
COLUMNS = ["test_acc", "energy_uj", "lambda0", "schedule", "branches", "surrogate", "surrogate_param", "method"]


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    """A finished quick-start study (2 trials, 1 epoch) and the paper's baselines in its store.

    Built in a folder of its own as the working directory, where MLflow puts the runs'
    artifacts (``./mlruns``: a store written through ``MlflowClient`` keeps them locally).
    """
    from study.folder import open_study
    from study.spec import quickstart_spec
    from study.tracking import log_baselines
    from study.tuner import run_study

    tmp = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = quickstart_spec({"trials": 2, "train.epochs": 1, "scheduler": "fifo", "storage": str(tmp / "studies"),
                            "mlflow.tracking_uri": uri, "data_root": str(tmp / "data")})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        result = run_study(spec, verbose=0)
        assert log_baselines(uri, "paper-baselines", None) > 0
    assert result.trials == 2 and result.errored == 0
    return open_study(result.path), uri


@contextmanager
def _snn_study_ui(study: Path, port: int, tmp: Path):
    """``snn-study ui STUDY --port PORT`` as a user runs it: yields (the link it printed, its
    processes); Ctrl-C (SIGINT) stops it at the end, and whatever is left is killed."""
    import psutil

    cmd = [sys.executable, "-c", "from study.cli import main; main()", "ui", str(study), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=(tmp / "snn-study-ui.err").open("wb"), text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    everything = [psutil.Process(proc.pid)]
    try:
        link, deadline = None, time.monotonic() + 120
        while link is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("open "):
                link = line.split()[1]
        assert link, f"snn-study ui printed no link (exit code {proc.poll()}; stderr: " \
                     f"{(tmp / 'snn-study-ui.err').read_text()[-500:]})"
        everything += psutil.Process(proc.pid).children(recursive=True)
        yield link, everything
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
        _, left = psutil.wait_procs(everything[1:], timeout=20)
        assert not left, f"Ctrl-C left {[' '.join(p.cmdline()[:4]) for p in left]} running"
    finally:
        terminate([p for p in everything if p.is_running()])


@contextmanager
def _chromium(tmp: Path):
    """Headless Chromium with a fresh profile; yields its DevTools websocket URL (from the
    ``DevToolsActivePort`` file it writes); killed at the end, with its helpers."""
    import psutil

    profile = tmp / "chromium-profile"
    profile.mkdir()
    log = (tmp / "chromium.log").open("wb")
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                             "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                             "--disable-extensions", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
                            stdout=log, stderr=log, start_new_session=True)
    try:
        active, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            parts = active.read_text().split() if active.is_file() else []
            if len(parts) >= 2:
                yield f"ws://127.0.0.1:{parts[0]}{parts[1]}"
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"chromium did not start (exit code {proc.poll()}): see {tmp / 'chromium.log'}")
    finally:
        try:
            browser = psutil.Process(proc.pid)
            terminate([browser, *browser.children(recursive=True)])
        except psutil.NoSuchProcess:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any helper that left the tree
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=5)
        log.close()


class _Page:
    """One browser tab over the DevTools protocol (aiohttp's websocket client, flat sessions)."""

    def __init__(self, ws) -> None:
        self.ws, self.session, self.next_id = ws, None, 0

    async def send(self, method: str, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        await self.ws.send_json(message)
        while True:  # events in between are not needed here
            reply = await self.ws.receive_json(timeout=60)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def open(self) -> None:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]
        await self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                        mobile=False)

    async def text(self) -> str:
        result = await self.send("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                 returnByValue=True)
        return result["result"].get("value") or ""

    async def headers(self) -> list[str]:
        """The column headers of the page's ag-grid tables (MLflow's runs table), left to right as
        shown (ag-grid places them: their order in the DOM is not the one on screen)."""
        result = await self.send("Runtime.evaluate", returnByValue=True, expression=(
            "[...document.querySelectorAll('.ag-header-cell')].map(e => [e.getBoundingClientRect().left, "
            "e.innerText.trim()]).filter(([, t]) => t).sort(([a], [b]) => a - b).map(([, t]) => t)"))
        return result["result"].get("value") or []

    async def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"]))

    async def show(self, url: str, expected: list[str], screenshot: Path, *, section: str | None = None,
                   timeout_s: float = 45) -> str:
        """Open ``url``, wait until the page shows every ``expected`` text and has stopped changing
        (its requests answered: an error banner comes with the last of them), save a screenshot
        (and one scrolled to the heading ``section``, where given) and return the page's text."""
        await self.send("Page.navigate", url=url)
        text, same, deadline = "", 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = await self.text()
            same = same + 1 if now == text else 0
            text = now
            if same >= 4 and all(e in text for e in expected):  # 2 s unchanged
                break
        await self.screenshot(screenshot)
        if section:
            found = await self.send("Runtime.evaluate", returnByValue=True, expression=(
                "(() => { const e = [...document.querySelectorAll('body *')].find(e => [...e.childNodes].some("
                f"n => n.nodeType === Node.TEXT_NODE && n.textContent.trim() === {json.dumps(section)})); "
                "e && e.scrollIntoView(); return !!e; })()"))
            if found["result"].get("value"):
                await asyncio.sleep(0.5)
                await self.screenshot(screenshot.with_name(f"{screenshot.stem}-{section.lower()}.png"))
        return text


async def _visit(ws_url: str, pages: list[tuple[str, list[str], Path, str | None]]) -> list[tuple[str, list[str]]]:
    """Each page's text and column headers, as :meth:`_Page.show` leaves it."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        page = _Page(ws)
        await page.open()
        return [(await page.show(url, expected, shot, section=section), await page.headers())
                for url, expected, shot, section in pages]


def _problems(text: str, expected: list[str], screenshot: Path) -> list[str]:
    found = [f"error banner {e!r}" for e in ERRORS if e in text]
    missing = [f"missing {e!r}" for e in expected if e not in text]
    return [f"{p} (screenshot: {screenshot})" for p in found + missing]


def test_runs_table_and_compare_view_show_every_run(finished, tmp_path):
    from mlflow import MlflowClient

    from study import views

    folder, uri = finished
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(folder.spec.experiment)
    trials = client.search_runs([experiment.experiment_id], "tags.kind = 'trial'")
    names = sorted(p.name for p in folder.trial_dirs())  # trial_<id>, as Tune named the folders
    assert names and sorted(r.info.run_name for r in trials) == names
    baselines = client.get_experiment_by_name("paper-baselines")
    baseline = client.search_runs([baselines.experiment_id], max_results=1)[0]

    port = free_port()
    with _snn_study_ui(folder.path, port, tmp_path) as (link, processes), _chromium(tmp_path) as ws_url:
        assert link == views.study_link(experiment.experiment_id, port=port)
        servers = [p for p in processes if p.cmdline()[1:3] == ["-m", "uvicorn"]]
        assert len(servers) == 1 and "--workers 1" in " ".join(servers[0].cmdline())  # one server, one worker
        assert not [p for p in processes if "huey" in " ".join(p.cmdline())]  # no job runners
        compare = views.compare_link([r.info.run_id for r in trials] + [baseline.info.run_id],
                                     [experiment.experiment_id, baselines.experiment_id], port=port)
        pages = [(link, [*names, *COLUMNS], tmp_path / "runs.png", None),
                 (compare, [*names, baseline.info.run_name, "Artifacts"], tmp_path / "compare.png", "Artifacts")]
        seen = asyncio.run(_visit(ws_url, pages))
    tags = client.get_experiment(experiment.experiment_id).tags
    assert tags[views.EXPERIMENT_KIND_TAG] == views.EXPERIMENT_KIND and views.STUDY_VIEW.tag in tags
    texts = [text for text, _ in seen]
    problems = [p for (_, expected, shot, _), text in zip(pages, texts) for p in _problems(text, expected, shot)]
    assert not problems, "; ".join(problems)
    assert "Model registry" in texts[0] and "Judges" not in texts[0]  # the classic ML view's menu, not GenAI's
    headers = seen[0][1]  # the saved view's columns, not MLflow's defaults a user would swap by hand
    assert [h for h in headers if h in COLUMNS] == COLUMNS and "Source" not in headers, \
        f"runs table headers {headers} (screenshot: {tmp_path / 'runs.png'})"
