"""A real browser against the real UI: `dagster dev` on 127.0.0.1 with the project's workspace,
Debian's chromium driven by selenium. Opens the global lineage and every group's lineage,
checks each stage's group and assets are drawn, launches the smoke job through the UI's
GraphQL API, waits for success, and saves screenshots to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from widen_dag.profiles import load_profile

pytestmark = pytest.mark.slow  # a real browser against a real dagster dev


REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI installs chromium (make browser-deps) and sets this, so a missing browser fails there.
REQUIRED = os.environ.get("WIDEN_DAG_REQUIRE_BROWSER") == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{base}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


@pytest.fixture()
def ui(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        if REQUIRED:
            pytest.fail("chromium/chromedriver not found: run `make browser-deps` (apt packages chromium, chromium-driver)")
        pytest.skip("chromium/chromedriver not installed (apt packages chromium, chromium-driver)")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "widen_dag" / "templates" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "WIDEN_DAG_LAKE": str(tmp_path / "lake"), "WIDEN_DAG_PROFILE": "tiny"}
    dagster = Path(sys.executable).parent / "dagster"
    log = (tmp_path / "dagster_dev.log").open("w")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("dagster dev did not come up:\n" + (tmp_path / "dagster_dev.log").read_text()[-3000:])
                time.sleep(1)
        yield base, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            # dagster dev's graceful stop waits on its daemon threads (over 30 s measured here);
            # nothing is checked after the test, so the whole group is killed soon after.
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, url: str, expected: list[str], timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    try:
        WebDriverWait(driver, timeout).until(lambda d: all(name in d.page_source for name in expected))
    except Exception:
        missing = [n for n in expected if n not in driver.page_source]
        raise AssertionError(f"{url}: not shown after {timeout}s: {missing}") from None
    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):  # first-visit community dialog
        button.click()
    return driver.page_source


def _groups() -> dict[str, list[str]]:
    from widen_dag.definitions import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    return groups


@pytest.mark.timeout(600)
def test_ui_shows_every_stage_and_runs_the_smoke_job(ui, browser):
    base, tmp = ui
    shots = tmp / "screenshots"
    shots.mkdir()
    groups = _groups()
    assert set(groups) == {"problems", "models", "search", "datasets", "training", "evaluation"}

    _open(browser, f"{base}/asset-groups", sorted(groups))
    browser.save_screenshot(str(shots / "global_lineage.png"))
    for group, assets in groups.items():
        _open(browser, f"{base}/locations/widen_dag/asset-groups/{group}", assets)
        browser.save_screenshot(str(shots / f"group_{group}.png"))

    # The smoke job, launched the way the UI's Launch button does: GraphQL launchRun.
    # Its partitions come from the profile_shards sensor the daemon runs; wait for them.
    repo = {"repositoryLocationName": "widen_dag", "repositoryName": "__repository__"}
    shards = load_profile("tiny").shard_keys()  # arithmetic-000, -001, instructions-000
    deadline = time.monotonic() + 120
    keys: list[str] = []
    while time.monotonic() < deadline and len(keys) < len(shards):
        data = _graphql(
            base,
            """query($r: RepositorySelector!) { partitionSetsOrError(repositorySelector: $r, pipelineName: "smoke")
            { ... on PartitionSets { results { partitionsOrError { ... on Partitions { results { name } } } } } } }""",
            {"r": repo},
        )
        results = data["partitionSetsOrError"]["results"]
        keys = [p["name"] for p in results[0]["partitionsOrError"]["results"]] if results else []
        time.sleep(2)
    assert keys == shards, keys
    launched = _graphql(
        base,
        """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "p": {
                "selector": {**repo, "jobName": "smoke"},
                "executionMetadata": {
                    "tags": [
                        {"key": "dagster/asset_partition_range_start", "value": keys[0]},
                        {"key": "dagster/asset_partition_range_end", "value": keys[-1]},
                    ]
                },
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    status, deadline = "", time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _graphql(base, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", status

    page = _open(browser, f"{base}/runs/{run_id}", ["Success"])
    assert "stg_problems" in page
    browser.save_screenshot(str(shots / "smoke_run.png"))
    for png in shots.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
    assert len(list(shots.iterdir())) == len(groups) + 2
