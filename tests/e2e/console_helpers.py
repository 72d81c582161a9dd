"""The web console in a real browser: Debian's headless Chromium driven by Playwright, against a real manager.

Playwright's own browser download is not used (it is refused here and not needed): the browser is the system
``chromium`` that scripts/system-deps.sh installs. Every page's console errors and uncaught exceptions are
collected and fail the test. Screenshots go to the test's directory (and to ``DRAGONFLY_CONSOLE_SCREENSHOTS`` when
set, which is how the README's pictures are made).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

import dragonfly
from dragonfly.cli.cluster import ManagedProcess, free_ports

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
CONSOLE_DIST = Path(dragonfly.__file__).resolve().parent / "manager" / "console" / "dist"
ROOT_PASSWORD = "console-root-1"
# Bounds for anything the browser waits for (ms): pages load from 127.0.0.1, but two shared cores are slow.
WAIT_MS = 15_000


def chromium_path() -> str:
    """Return the system Chromium, or fail with what to install."""
    for candidate in (os.environ.get("DRAGONFLY_CHROMIUM", ""), *CHROMIUM_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no Chromium found: install Debian's `chromium` (scripts/system-deps.sh)")


def console_built() -> Path:
    """Return the built console, or fail with how to build it."""
    if not (CONSOLE_DIST / "index.html").is_file():
        raise RuntimeError(f"the web console is not built in {CONSOLE_DIST}: run scripts/build-console.sh")
    return CONSOLE_DIST


def manager_config(directory: Path, **extra: Any) -> dict[str, Any]:
    """Return a manager.yaml: loopback, free ports, plaintext gRPC; the console the package ships.

    ``config["server"]["grpc"]["port"]["start"]`` is the gRPC port (schedulers register there).
    """
    console_built()
    (grpc_port,) = free_ports(1)
    config: dict[str, Any] = {
        "server": {
            "dataDir": str(directory / "data"),
            "rest": {"addr": "127.0.0.1:0"},
            "grpc": {"listenIP": "127.0.0.1", "port": {"start": grpc_port, "end": grpc_port}},
        },
        "security": {"enable": False},
    }
    for key, value in extra.items():
        config[key] = value
    return config


@contextmanager
def run_manager(directory: Path, config: dict[str, Any] | None = None) -> Iterator[tuple[ManagedProcess, str]]:
    """Run ``dragonfly manager`` and yield it with its REST base URL."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "manager.yaml"
    path.write_text(yaml.safe_dump(config or manager_config(directory)))
    argv = [sys.executable, "-m", "dragonfly.cli.dragonfly", "manager", "--config", str(path)]
    env = {"DRAGONFLY_INITIAL_ROOT_PASSWORD": ROOT_PASSWORD}
    with ManagedProcess("manager", argv, directory / "manager.log", env=env, ready_timeout=60) as manager:
        yield manager, "http://" + manager.listening["manager REST"]


def call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """Call the REST API directly (for set-up and for checking what the browser did)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, method=method, data=data)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else None


def root_token(base: str) -> str:
    status, body = call(base, "POST", "/api/v1/users/signin", {"name": "root", "password": ROOT_PASSWORD})
    assert status == 200, body
    token: str = body["token"]
    return token


class Browser:
    """One headless Chromium; pages that record console errors; screenshots into ``out``."""

    def __init__(self, out: Path) -> None:
        from playwright.sync_api import sync_playwright

        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.errors: list[str] = []
        self.pages: list[Any] = []
        self._playwright = sync_playwright().start()
        try:
            self.browser = self._playwright.chromium.launch(
                executable_path=chromium_path(),
                headless=True,
                # Root in a container: Chromium's sandbox needs user namespaces it may not get.
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
            )
        except BaseException:
            self._playwright.stop()
            raise

    def page(self, width: int = 1280, height: int = 800) -> Any:
        """Return a new page in a fresh context (own storage: own session) of the given size."""
        context = self.browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        self.pages.append(page)
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: uncaught {error}"))
        return page

    def _console(self, page: Any, message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        # A refused or failed API call shows in the page in words; the browser also logs the failed request
        # itself (an HTTP status, or a refused connection once the manager has stopped), which is no script error.
        if text.startswith("Failed to load resource:"):
            return
        self.errors.append(f"{page.url}: {text}")

    def screenshot(self, page: Any, name: str) -> Path:
        """Save a full-page screenshot as ``<name>.png`` (also into DRAGONFLY_CONSOLE_SCREENSHOTS if set)."""
        path = self.out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        extra = os.environ.get("DRAGONFLY_CONSOLE_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    def use(self, out: Path) -> None:
        """Start a test: screenshots go to ``out``, and its pages and console errors are its own."""
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.errors = []
        self.pages = []

    def close_pages(self) -> None:
        """Save each page as it was last (``last-<n>.png``: what a failure left on screen), then close it."""
        try:
            for number, page in enumerate(self.pages):
                if not page.is_closed():
                    page.screenshot(path=str(self.out / f"last-{number}.png"), full_page=True)
                    page.context.close()
        except Exception as exc:  # a crashed browser must not hide the test's own failure
            self.errors.append(f"cannot save the last screenshots: {exc}")
        self.pages = []

    def close(self) -> None:
        """Close the pages left (see ``close_pages``), then stop the browser."""
        self.close_pages()
        try:
            self.browser.close()
        finally:
            self._playwright.stop()


def sign_in(page: Any, base: str, name: str, password: str) -> None:
    """Sign in through the form and wait for the signed-in layout (the page the visitor came for, or the overview)."""
    page.goto(base + "/signin")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def nav(page: Any, name: str) -> None:
    """Follow a link of the main menu."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()
    page.get_by_role("heading", name=name, exact=True).wait_for()
