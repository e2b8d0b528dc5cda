"""Swagger UI (/docs) and GraphiQL (/graphql) load from the app's own assets and work in a real browser."""

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from backend.explorers import ASSETS_DIR, GRAPHIQL_TEMPLATE
from backend.tests.factories import auth_headers, make_token
from backend.tests.live_server import live_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that work in containers without a GPU, sandbox or network beyond loopback.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    # Any host but the test server fails at once, so a stray CDN reference cannot hang or pass.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
WAIT_SECONDS = 20


# --- Pages, without a browser ----------------------------------------------------------------------


def referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


@pytest.mark.parametrize(("page", "accept"), [("/docs", "text/html"), ("/graphql", "text/html")])
async def test_pages_load_every_asset_from_the_app(client: httpx.AsyncClient, page: str, accept: str) -> None:
    if not ASSETS_DIR.is_dir():
        pytest.skip("explorer assets not installed (make install)")
    response = await client.get(page, headers={"Accept": accept})
    assert response.status_code == 200
    urls = referenced_urls(response.text)
    assert urls
    for url in urls:
        assert url.startswith("/static/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url


async def test_graphiql_example_query_runs(client: httpx.AsyncClient) -> None:
    template = GRAPHIQL_TEMPLATE.read_text()
    example = template[template.index("const EXAMPLE_QUERY = `") + len("const EXAMPLE_QUERY = `") :]
    example = example[: example.index("`;")].replace("\\`", "`")
    response = await client.post("/graphql", json={"query": example}, headers=auth_headers("judy"))
    assert response.status_code == 200
    result = response.json()
    assert "errors" not in result
    assert result["data"]["me"]["id"] == "judy"
    assert result["data"]["tasks"]["total"] == 0


@pytest.mark.parametrize("settings_overrides", [{"graphiql": False}])
async def test_graphiql_can_be_turned_off(client: httpx.AsyncClient, settings_overrides: dict[str, Any]) -> None:
    assert (await client.get("/graphql", headers={"Accept": "text/html"})).status_code == 404


# --- A real browser --------------------------------------------------------------------------------


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not installed (apt-get install chromium chromium-driver)"
    if not (ASSETS_DIR / "graphiql").is_dir():
        return "explorer assets not installed (make install)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("live")) as base_url:
        yield base_url


def browser_log(driver: webdriver.Chrome, kind: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = driver.get_log(kind)  # type: ignore[no-untyped-call]  # unannotated in selenium
    return entries


def requested_hosts(driver: webdriver.Chrome) -> set[str]:
    """Hosts of every http(s) request the pages sent since the last call (DevTools network log)."""
    hosts = set()
    for entry in browser_log(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlsplit(message["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.netloc)
    return hosts


def console_errors(driver: webdriver.Chrome) -> list[str]:
    return [entry["message"] for entry in browser_log(driver, "browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
def test_graphiql_runs_a_query_with_the_token_from_its_headers_pane(browser: webdriver.Chrome, server: str) -> None:
    browser.get(f"{server}/graphql")
    wait = WebDriverWait(browser, WAIT_SECONDS)
    query_editor = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, ".graphiql-query-editor .CodeMirror")))
    assert "Headers" in query_editor.text  # the example query says where the token goes

    wait.until(ready.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Headers']"))).click()
    headers_editor = wait.until(
        ready.element_to_be_clickable(
            (By.CSS_SELECTOR, ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
        )
    )
    headers_editor.click()
    ActionChains(browser).send_keys(json.dumps({"Authorization": f"Bearer {make_token('grace')}"})).perform()
    query_editor.click()
    select_all = ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL)
    select_all.send_keys(Keys.DELETE).send_keys("{ me { id } }").perform()
    browser.find_element(By.CSS_SELECTOR, ".graphiql-execute-button").click()

    wait.until(lambda driver: '"grace"' in driver.find_element(By.CSS_SELECTOR, ".graphiql-response").text)
    result = json.loads(browser.find_element(By.CSS_SELECTOR, ".graphiql-response").text)
    assert result == {"data": {"me": {"id": "grace"}}}
    assert requested_hosts(browser) == {urlsplit(server).netloc}
    assert console_errors(browser) == []


@pytest.mark.slow
def test_swagger_ui_authorizes_and_lists_tasks(browser: webdriver.Chrome, server: str) -> None:
    token = make_token("heidi")
    created = httpx.post(
        f"{server}/api/tasks", json={"title": "Water the plants"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201
    requested_hosts(browser)  # forget the previous page's requests

    browser.get(f"{server}/docs")
    wait = WebDriverWait(browser, WAIT_SECONDS)
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "button.authorize"))).click()
    wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".auth-container input"))).send_keys(token)
    browser.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.btn-done").click()
    operation = "#operations-tasks-list_tasks"
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, f"{operation} .opblock-summary"))).click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, f"{operation} button.execute"))).click()

    status = wait.until(
        ready.visibility_of_element_located(
            (By.CSS_SELECTOR, f"{operation} .live-responses-table tbody .response-col_status")
        )
    )
    assert status.text == "200"
    body = browser.find_element(By.CSS_SELECTOR, f"{operation} .live-responses-table tbody .response-col_description")
    assert "Water the plants" in body.text
    assert requested_hosts(browser) == {urlsplit(server).netloc}
    assert console_errors(browser) == []
