"""Swagger UI (/docs) and GraphiQL (/graphql) load from the app's own assets and work in a real browser."""

import base64
import hashlib
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
from backend.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.factories import auth_headers, make_token
from backend.tests.live_server import live_server

pytestmark = pytest.mark.single_database

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


# --- Content-Security-Policy ---------------------------------------------------------------------------


def policy_of(response: httpx.Response) -> dict[str, list[str]]:
    directives = [directive.split() for directive in response.headers["content-security-policy"].split(";")]
    return {name: sources for name, *sources in directives}


def sha256_source(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


@pytest.mark.parametrize("page", ["/docs", "/graphql"])
async def test_explorer_pages_allow_only_their_own_origin_and_inline_scripts(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page, headers={"Accept": "text/html"})
    policy = policy_of(response)

    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    inline_scripts = re.findall(r"<script>(.*?)</script>", response.text, flags=re.DOTALL)
    assert inline_scripts  # both pages start their app from an inline script
    assert policy["script-src"] == ["'self'", *map(sha256_source, inline_scripts)]
    every_source = {source for sources in policy.values() for source in sources}
    # Keywords, hashes and data: (icons in the stylesheets) only: no host, no scheme, no wildcard.
    assert {source for source in every_source if not source.startswith("'")} <= {"data:"}
    assert "'unsafe-eval'" not in every_source


async def test_swagger_ui_needs_no_inline_styles(client: httpx.AsyncClient) -> None:
    policy = policy_of(await client.get("/docs"))
    assert policy["style-src"] == ["'self'"]


async def test_graphiql_allows_the_styles_its_dialogs_insert(client: httpx.AsyncClient) -> None:
    """GraphiQL's dialogs add a <style> holding the scrollbar width: no hash can name it in advance."""
    policy = policy_of(await client.get("/graphql", headers={"Accept": "text/html"}))
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]


# --- DOCS_ENABLED ---------------------------------------------------------------------------------------

DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")


async def docs_statuses(**overrides: Any) -> dict[str, int]:
    app = create_app(make_settings("sqlite+aiosqlite://", **overrides))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return {path: (await client.get(path)).status_code for path in DOCS_PATHS}


@pytest.mark.parametrize(
    ("overrides", "served"),
    [
        ({"app_env": "development"}, True),
        ({"app_env": "test"}, True),
        ({"app_env": "production"}, False),
        ({"app_env": "production", "docs_enabled": True}, True),
        ({"app_env": "development", "docs_enabled": False}, False),
    ],
)
async def test_docs_and_openapi_follow_docs_enabled(overrides: dict[str, Any], served: bool) -> None:
    statuses = await docs_statuses(**overrides)
    # Swagger UI is configured without OAuth2, so its redirect page is never served.
    assert statuses == {
        "/docs": 200 if served else 404,
        "/docs/oauth2-redirect": 404,
        "/openapi.json": 200 if served else 404,
    }


async def test_no_explorer_assets_are_served_when_both_explorers_are_off() -> None:
    if not ASSETS_DIR.is_dir():
        pytest.skip("explorer assets not installed (make install)")
    asset = "/static/swagger-ui/swagger-ui.css"
    for graphiql, status in ((True, 200), (False, 404)):
        app = create_app(make_settings("sqlite+aiosqlite://", docs_enabled=False, graphiql=graphiql))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            assert (await client.get(asset)).status_code == status


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


def assert_the_policy_blocks_injected_scripts(driver: webdriver.Chrome) -> None:
    """The page's Content-Security-Policy is in force: a script added to the page does not run."""
    ran = driver.execute_script(
        "const script = document.createElement('script');"
        "script.textContent = 'window.injectedScriptRan = true';"
        "document.body.appendChild(script);"
        "return window.injectedScriptRan === true;"
    )
    assert ran is False
    assert any("Content Security Policy" in message for message in console_errors(driver))


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
    # A dialog inserts its own <style> (scroll lock): the policy must let it apply.
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Open settings dialog']").click()
    wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "[role='dialog']")))
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    wait.until(ready.invisibility_of_element_located((By.CSS_SELECTOR, "[role='dialog']")))
    assert requested_hosts(browser) == {urlsplit(server).netloc}
    assert console_errors(browser) == []  # no Content-Security-Policy violation either
    assert_the_policy_blocks_injected_scripts(browser)


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
    assert console_errors(browser) == []  # no Content-Security-Policy violation either
    assert_the_policy_blocks_injected_scripts(browser)
