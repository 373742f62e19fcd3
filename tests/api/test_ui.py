"""The ``/ui`` dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

A worker runs the quickstart's shape (file source -> 3-partition topic -> file sink) as a real
``millpond run`` subprocess with ``--api 127.0.0.1:0`` while lines keep arriving; selenium drives
the system browser through the system chromedriver (no browser download). What the page shows is
checked against the API, and what its buttons do is checked through the API too.
Under CI=true a missing Chromium fails the test (tests/servers/common.py's rule).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers.common import server_unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            server_unavailable("Chromium", f"{path} is missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1300"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


REPO = Path(__file__).resolve().parents[2]


class Worker:
    """The quickstart (configs/quickstart.yaml and its input, copied) as a ``millpond run`` subprocess
    in ``tmp_path``, with lines appended to its input while it runs."""

    def __init__(self, tmp_path: Path, token: str | None = None) -> None:
        shutil.copytree(REPO / "configs" / "quickstart-input", tmp_path / "configs" / "quickstart-input")
        pipeline = tmp_path / "configs" / "quickstart.yaml"
        text = (REPO / "configs" / "quickstart.yaml").read_text()
        command = [sys.executable, "-m", "millpond.cli", "run", str(pipeline)]
        if token:  # the token comes from the environment, as the README says it must
            text += '\napi: {listen: 127.0.0.1:0, token: "${UI_TEST_TOKEN}"}\n'
        else:
            command += ["--api", "127.0.0.1:0"]
        pipeline.write_text(text)
        self.input = tmp_path / "configs" / "quickstart-input" / "app.log"
        self.token = token
        with open(tmp_path / "worker.log", "w") as log:
            self.proc = subprocess.Popen(command, cwd=tmp_path, stderr=log,
                                         env={**os.environ, "UI_TEST_TOKEN": token or ""})
        found = tmp_path / "data" / "quickstart" / ".worker.json"
        deadline = time.monotonic() + 30
        while not found.exists():
            assert self.proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker did not start its API"
            time.sleep(0.05)
        self.url = json.loads(found.read_text())["url"]
        self.stop_feed = threading.Event()
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        n = 0
        while not self.stop_feed.wait(0.05):
            with self.input.open("a") as f:
                f.write("".join(f"more {n + i}\n" for i in range(20)))
            n += 20

    def get(self, path: str) -> Any:
        req = urllib.request.Request(self.url + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def state(self, name: str) -> str:
        return str(self.get(f"/connectors/{name}/status")["connector"]["state"])

    def records_out(self, name: str) -> int:
        samples = self.get("/history")["samples"]
        return int(samples[-1]["connectors"][name]["records_out"]) if samples else 0

    def close(self) -> None:
        self.stop_feed.set()
        self.feeder.join()
        self.proc.terminate()
        assert self.proc.wait(30) == 0


def wait(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except Exception:  # an element between two redraws
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def row(browser: Any, name: str) -> Any:
    return browser.find_element("css selector", f"#connectors tr[data-connector='{name}']")


def cell(browser: Any, name: str, css: str) -> str:
    return str(row(browser, name).find_element("css selector", css).text)


def click(browser: Any, name: str, action: str) -> None:
    row(browser, name).find_element("css selector", f"button[data-action='{action}']").click()


def severe(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    w = Worker(tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_dashboard_shows_the_pipeline_and_pauses_and_resumes_the_source(
        browser: Any, worker: Worker, tmp_path: Path) -> None:
    browser.get(worker.url + "/ui")
    # both connectors, running, with a non-zero rate, as the API says
    wait(lambda: cell(browser, "tail", ".state") == "RUNNING" and cell(browser, "out", ".state") == "RUNNING",
         "both connectors RUNNING")
    rate = wait(lambda: float(cell(browser, "tail", ".rate-out").replace(",", "") or 0), "a non-zero rate")
    assert rate > 0 and worker.state("tail") == "RUNNING"
    # read in one script: the graph is redrawn every second, so elements found earlier go stale
    graph = browser.execute_script("const g = document.getElementById('graph'); return ["
                                   "[...g.querySelectorAll('g.node')].map(n => n.dataset.node),"
                                   "g.querySelectorAll('path.edge').length]")
    assert sorted(graph[0]) == ["out", "t:lines", "tail"] and graph[1] == 2
    assert browser.find_elements("css selector", "#rate-chart polyline[data-series='tail']")

    click(browser, "tail", "pause")
    wait(lambda: worker.state("tail") == "PAUSED", "the API to say the source is PAUSED")
    wait(lambda: cell(browser, "tail", ".state") == "PAUSED", "the page to show PAUSED")
    time.sleep(1.2)  # a sample or two after the pause settled
    held = worker.records_out("tail")
    time.sleep(2.2)
    assert worker.records_out("tail") == held, "the paused source still appends records"
    wait(lambda: cell(browser, "tail", ".rate-out") == "0.0", "the page to show the source's rate drop to 0")

    click(browser, "tail", "resume")
    wait(lambda: worker.state("tail") == "RUNNING", "the API to say the source is RUNNING again")
    wait(lambda: worker.records_out("tail") > held, "the resumed source to append again")
    wait(lambda: cell(browser, "tail", ".state") == "RUNNING", "the page to show RUNNING")

    # the topic browser: the partition that holds the file's lines, from its first offset
    from selenium.webdriver.support.ui import Select

    topics = {t["name"]: t for t in worker.get("/topics")}
    busy = max(topics["lines"]["partitions"], key=lambda p: p["log_end_offset"])["partition"]
    Select(browser.find_element("id", "b-topic")).select_by_value("lines")
    Select(browser.find_element("id", "b-partition")).select_by_value(str(busy))
    browser.find_element("id", "b-offset").send_keys("0")
    browser.find_element("css selector", "#browse button[type=submit]").click()
    rows = wait(lambda: browser.find_elements("css selector", "#records tbody tr"), "records in the browser")
    first = [td.text for td in rows[0].find_elements("css selector", "td")]
    # the key is the file's path (key: path), the value that file's first line
    assert first[0] == "0" and first[2].startswith("./configs/quickstart-input/"), first
    assert first[4] == (tmp_path / first[2]).read_text().splitlines()[0], first

    # offsets: the dry run is shown before anything can be applied
    click(browser, "out", "offsets")
    wait(lambda: '"offsets"' in browser.find_element("id", "offsets-body").get_attribute("value"), "the offsets")
    assert not browser.find_element("id", "offsets-apply").is_enabled()
    browser.find_element("id", "offsets-dry").click()
    wait(lambda: "Dry run" in browser.find_element("id", "offsets-result").text, "the dry run's answer")
    assert '"dry_run": true' in browser.find_element("id", "offsets-result").text
    assert browser.find_element("id", "offsets-apply").is_enabled()
    browser.find_element("id", "offsets-body").send_keys(" ")  # an edited body needs its own dry run
    assert not browser.find_element("id", "offsets-apply").is_enabled()
    # reset all: the dry run lists each partition read so far going back to its log start; apply does it
    assert not browser.find_element("id", "offsets-reset-apply").is_enabled()
    browser.find_element("id", "offsets-reset-dry").click()
    wait(lambda: browser.find_element("id", "offsets-reset-apply").is_enabled(), "the reset's dry run")
    changes = json.loads(browser.find_element("id", "offsets-result").text.split("\n", 1)[1])["changes"]
    assert busy in [c["partition"]["kafka_partition"] for c in changes], changes
    assert all(c["to"] == {"kafka_offset": 0} and c["from"]["kafka_offset"] > 0 for c in changes), changes
    browser.find_element("id", "offsets-reset-apply").click()
    wait(lambda: browser.find_element("id", "offsets-result").text.startswith("Applied"), "the reset applied")
    assert worker.state("out") == "RUNNING"

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert severe(browser) == []


def test_dashboard_asks_for_the_token_and_sends_it(browser: Any, tmp_path: Path) -> None:
    w = Worker(tmp_path, token="s3cret-ui")
    try:
        browser.get(w.url + "/ui/")  # the page itself needs no token; its calls do
        wait(lambda: "token" in browser.find_element("id", "conn").text, "the page to ask for the token")
        assert not browser.find_elements("css selector", "#connectors tbody tr")
        browser.find_element("id", "token").send_keys("s3cret-ui")
        browser.find_element("css selector", "#token-form button").click()
        wait(lambda: cell(browser, "tail", ".state") == "RUNNING", "the connectors once the token is sent")
        assert browser.execute_script("return sessionStorage.getItem('millpond-token')") == "s3cret-ui"
        browser.execute_script("sessionStorage.clear()")
    finally:
        w.close()


def test_read_endpoints_answer_what_the_log_holds(tmp_path: Path) -> None:
    """``/topics``, ``/topics/{t}/partitions/{p}/records`` and ``/history`` against the log itself."""
    from millpond.records import TopicPartition
    from tests.api.test_worker_api import LINES, config_for, drained, go, running, until

    async def scenario() -> None:
        async with running(tmp_path, config_for(tmp_path, token="t0ken"), token="t0ken") as w:
            await until(lambda: drained(w), "the lines to arrive")
            topics = await w.get("/topics")
            assert [t["name"] for t in topics] == ["lines"]  # internal topics only with ?all=true
            assert "__source_offsets" in [t["name"] for t in await w.get("/topics?all=true")]
            infos = await w.backend.describe_topic("lines")
            assert topics[0]["partitions"] == [
                {"partition": p.partition, "log_start_offset": p.log_start_offset,
                 "log_end_offset": p.log_end_offset, "high_watermark": p.high_watermark,
                 "last_stable_offset": p.last_stable_offset, "size_bytes": p.size_bytes,
                 "segments": p.segments} for p in infos]
            page = await w.get("/topics/lines/partitions/0/records?offset=0&limit=7")
            # the shape POST /topics/{t}/records takes, plus the offset
            assert [base64.b64decode(r["value"]) for r in page["records"]] == [b"line %d" % i for i in range(7)]
            assert page["records"][0] == {"offset": 0, "key": None, "value": page["records"][0]["value"],
                                          "timestamp": page["records"][0]["timestamp"], "headers": [],
                                          "partition": 0}
            # by time: the first record at or after the 100th one's timestamp, as the log answers
            later = (await w.get("/topics/lines/partitions/0/records?offset=100&limit=1"))["records"][0]
            by_time = await w.get(f"/topics/lines/partitions/0/records?timestamp={later['timestamp']}&limit=1")
            expected = await w.backend.offset_for_time(TopicPartition("lines", 0), later["timestamp"])
            assert by_time["records"][0]["offset"] == expected <= later["offset"]
            everything = await w.get("/topics/lines/partitions/0/records?limit=500")
            assert len(everything["records"]) == LINES
            await w.get("/topics/nope/partitions/0/records", status=404)
            await w.get("/topics/lines/partitions/9/records", status=404)
            await w.get("/topics/lines/partitions/0/records?limit=0", status=400)
            await w.get("/topics/lines/partitions/0/records?offset=x", status=400)
            await until(lambda: has_samples(w, 2), "two samples")
            samples = (await w.get("/history"))["samples"]
            assert samples[0]["connectors"]["out"]["rate_out"] is None  # the first has no predecessor
            newer = (await w.get(f"/history?since={samples[-2]['time']}"))["samples"]
            assert newer[0] == samples[-1]
            # the page loads without the token (a browser cannot add it to a page load); the data does not
            async with aiohttp.ClientSession() as anonymous:
                async with anonymous.get(w.url + "/ui/") as r:
                    assert r.status == 200 and "<title>millpond</title>" in await r.text()
                async with anonymous.get(w.url + "/ui/app.js") as r:
                    assert r.status == 200 and r.content_type == "text/javascript"
                for path in ("/history", "/topics", "/ui/../history", "/ui/.hidden.js"):
                    async with anonymous.get(w.url + path) as r:
                        assert r.status in (401, 404), path

    async def has_samples(w: Any, n: int) -> bool:
        return len((await w.get("/history"))["samples"]) >= n

    go(scenario())
