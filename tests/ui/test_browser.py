"""A real browser against the real UI: `dagster dev` on 127.0.0.1 with the project's workspace,
Debian's chromium driven by selenium, on a copy of the session's `tiny_ci` demo (tests/conftest.py:
every asset materialized, every shard searched). Opens the global lineage and every group's
lineage, checks each stage's group and assets are drawn, saves the README's screenshots into
docs/img/ (the lineage, ablation_report's chart and a search tree from search_trees' metadata,
rewritten on every run), launches the smoke job through the UI's GraphQL API, waits for success,
and saves the other screenshots to a temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from widen_dag.profiles import load_profile

pytestmark = pytest.mark.slow  # a real browser against a real dagster dev


REPO = Path(__file__).resolve().parents[2]
CI_PROFILE = REPO / "tests" / "profiles" / "tiny_ci.yaml"  # the demo the conftest fixture runs
DOCS_IMG = REPO / "docs" / "img"  # the README's screenshots: lineage.png, ablation_chart.png, search_tree.png
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
def ui(tmp_path, request):
    if not (CHROMIUM and CHROMEDRIVER):
        if REQUIRED:
            pytest.fail("chromium/chromedriver not found: run `make browser-deps` (apt packages chromium, chromium-driver)")
        pytest.skip("chromium/chromedriver not installed (apt packages chromium, chromium-driver)")
    # The demo the suite runs anyway (requested only once a browser is there): its runs,
    # metadata and lake, copied so that the smoke run and the daemon leave the original as the
    # demo test checks it.
    demo = request.getfixturevalue("tiny_ci_demo")
    assert demo.result.returncode == 0, "the tiny_ci demo failed:\n" + demo.result.stdout[-2000:] + demo.result.stderr[-2000:]
    home = tmp_path / "home"
    shutil.copytree(demo.root / "home", home)
    shutil.copytree(demo.root / "lake", tmp_path / "lake")
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "WIDEN_DAG_LAKE": str(tmp_path / "lake"),
        "WIDEN_DAG_PROFILE": str(CI_PROFILE),
    }
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
        # The first-visit community dialog opens about a second after a page loads, over
        # whatever the test clicks next; marking it seen on the server keeps it closed.
        _graphql(base, "mutation { setNuxSeen }")
        assert _graphql(base, "{ shouldShowNux }")["shouldShowNux"] is False
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
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    try:
        WebDriverWait(driver, timeout).until(lambda d: all(name in d.page_source for name in expected))
    except Exception:
        missing = [n for n in expected if n not in driver.page_source]
        raise AssertionError(f"{url}: not shown after {timeout}s: {missing}") from None
    return driver.page_source


def _viewport(driver, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )


def _save_region(driver, rect: dict, path: Path, scale: float) -> None:
    """A PNG of one region of the page (CSS pixels), rendered at ``scale`` so small text stays sharp."""
    clip = {k: rect[k] for k in ("x", "y", "width", "height")}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "clip": {**clip, "scale": scale}})
    path.write_bytes(base64.b64decode(shot["data"]))


def _save_lineage(driver, base: str, groups: dict[str, list[str]], path: Path) -> None:
    """The global lineage with every group expanded, cropped to the graph."""
    from selenium.webdriver.common.by import By

    # The UI fits the expanded graph to the window's width; a square window leaves room for its height.
    _viewport(driver, 1800, 1800)
    expanded = ",".join(f"global@global:{g}" for g in sorted(groups))
    _open(driver, f"{base}/asset-groups?{urllib.parse.urlencode({'expanded': expanded})}", sorted(groups))
    for button in driver.find_elements(By.XPATH, "//button[.//*[@aria-label='panel_show_right']]"):  # the group list
        button.click()
    # Each group and each asset is one foreignObject of the graph's SVG; their union is the graph.
    bounds = """const boxes = [...document.querySelectorAll('svg foreignObject')].map(e => e.getBoundingClientRect());
        const x = Math.min(...boxes.map(b => b.left)) - 16, y = Math.min(...boxes.map(b => b.top)) - 16;
        return {n: boxes.length, x, y,
                width: Math.max(...boxes.map(b => b.right)) + 16 - x, height: Math.max(...boxes.map(b => b.bottom)) + 16 - y};"""
    drawn = len(groups) + sum(len(assets) for assets in groups.values())
    rect, deadline = None, time.monotonic() + 60
    while time.monotonic() < deadline:  # laid out and zoomed once every node is there and the bounds stop moving
        time.sleep(1)
        previous, rect = rect, driver.execute_script(bounds)
        if rect == previous and rect["n"] >= drawn:
            break
    assert rect["n"] >= drawn, f"lineage: {rect['n']} of {drawn} groups and assets drawn"
    inside = rect["x"] >= 0 and rect["y"] >= 0 and rect["x"] + rect["width"] <= 1800 and rect["y"] + rect["height"] <= 1800
    assert inside, f"lineage: the graph is cut off by the window: {rect}"
    _save_region(driver, rect, path, scale=1.5)


def _metadata_markdown(driver, base: str, asset: str, key: str):
    """Opens the asset's page and the [Show Markdown] dialog of one metadata entry of its latest
    materialization; returns the dialog once every image in it is loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, f"{base}/assets/{asset}", [key])
    links = driver.find_elements(By.XPATH, f"//tr[td[normalize-space()='{key}']]//a[normalize-space()='[Show Markdown]']")
    assert links, f"{asset}: metadata entry {key} is not Markdown"
    driver.execute_script("arguments[0].click()", links[0])
    dialog = f"//div[@role='dialog'][.//*[normalize-space()='{key}']]"
    sizes = "return [...arguments[0].querySelectorAll('img')].map(i => i.complete ? i.naturalWidth * i.naturalHeight : 0)"
    try:  # an <img> with a non-zero natural size: the PNG is there and decoded
        WebDriverWait(driver, 30).until(lambda d: all(d.execute_script(sizes, d.find_element(By.XPATH, dialog)) or [0]))
    except Exception:
        raise AssertionError(f"{asset}: no loaded picture in metadata entry {key}") from None
    driver.execute_script("document.activeElement.blur()")  # no focus ring on the dialog's Close button
    return driver.find_element(By.XPATH, dialog)


def _groups() -> dict[str, list[str]]:
    from widen_dag.definitions import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    return groups


# The timeout covers the tiny_ci demo when this test is the first in its session to need it.
@pytest.mark.timeout(1600)
def test_ui_shows_every_stage_the_demo_s_lineage_chart_and_search_trees_and_runs_the_smoke_job(ui, browser):
    base, tmp = ui
    shots = tmp / "screenshots"
    shots.mkdir()
    groups = _groups()
    assert set(groups) == {"problems", "models", "search", "datasets", "training", "evaluation"}
    shards = load_profile(str(CI_PROFILE)).shard_keys()  # arithmetic-000, -001, instructions-000

    # The README's screenshots, before the smoke run changes what the graph shows.
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    _save_lineage(browser, base, groups, DOCS_IMG / "lineage.png")
    _viewport(browser, 1600, 1400)
    _metadata_markdown(browser, base, "ablation_report", "bar_chart").screenshot(str(DOCS_IMG / "ablation_chart.png"))
    _viewport(browser, 1600, 2200)  # the shard's first solved and first unsolved tree, one above the other
    _metadata_markdown(browser, base, "search_trees", f"trees_{shards[0]}").screenshot(str(DOCS_IMG / "search_tree.png"))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    _open(browser, f"{base}/asset-groups", sorted(groups))
    browser.save_screenshot(str(shots / "global_lineage.png"))
    for group, assets in groups.items():
        _open(browser, f"{base}/locations/widen_dag/asset-groups/{group}", assets)
        browser.save_screenshot(str(shots / f"group_{group}.png"))

    # The smoke job, launched the way the UI's Launch button does: GraphQL launchRun.
    # Its partitions come from the profile_shards sensor the daemon runs; wait for them.
    repo = {"repositoryLocationName": "widen_dag", "repositoryName": "__repository__"}
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
    for name in ("lineage.png", "ablation_chart.png", "search_tree.png"):
        png = DOCS_IMG / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
