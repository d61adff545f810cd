"""Headless-Chromium test helpers: a live server, phone/desktop pages, axe-core.

Pages a person uses are tested in Debian's Chromium (``/usr/bin/chromium``,
installed by ``scripts/system-deps.sh``), driven by the Python ``playwright``
package, whose wheel ships its own driver. No browser is ever downloaded:
``playwright install`` is never run; the browser is launched with
``executable_path`` (see :func:`launch_chromium`).

The fixtures live in ``tests/conftest.py`` (browser block at the end) and use
what is defined here:

``live_server(app)``
    Serves a Flask app (``app`` or ``pg_app``) over real HTTP on 127.0.0.1
    in a background thread; returns a :class:`LiveServer` with ``url``.
``browser_page`` / ``desktop_page``
    A fresh browser context and page at phone size (360x780) or desktop size
    (1280x800). Console errors, uncaught exceptions and failed requests are
    recorded: :func:`assert_no_browser_errors`.
``new_page(device, **context_options)``
    More pages, each in its own context: a second phone (staff and customer
    side by side), ``locale="he"`` for a right-to-left page ...

Example::

    @pytest.mark.browser
    def test_owner_sees_dashboard(app, live_server, browser_page):
        with app.app_context():
            gen_merchant("cafe")
        server = live_server(app)  # or live_server(pg_app)
        login_in_browser(browser_page, server.url, "owner@cafe.test")
        assert browser_page.url == server.url + "/admin/"
        screenshot(browser_page, "dashboard")  # test-artifacts/screenshots/<test>/
        assert_no_browser_errors(browser_page)
        assert_no_horizontal_scroll(browser_page)
        violations = serious(run_axe(browser_page))
        assert not violations, axe_report(violations)
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, got_request_exception
from werkzeug.serving import make_server

from .factories import PASSWORD
from .servers import find_chromium

if TYPE_CHECKING:  # playwright is imported lazily: unit tests run without it
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"

# Chromium flags: headless, no sandbox (root in CI), and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

MOBILE_USER_AGENT = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36"
)

# Browser-context options per device; extra keyword arguments override them.
DEVICES: dict[str, dict[str, Any]] = {
    "phone": {
        "viewport": {"width": 360, "height": 780},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
        "user_agent": MOBILE_USER_AGENT,
        "locale": "en-US",
        "timezone_id": "UTC",
        "reduced_motion": "reduce",
    },
    "desktop": {
        "viewport": {"width": 1280, "height": 800},
        "device_scale_factor": 1,
        "locale": "en-US",
        "timezone_id": "UTC",
        "reduced_motion": "reduce",
    },
}


# --- live server ---------------------------------------------------------------


def _closed_before_sending(app: Flask):
    """WSGI wrapper that reads the app's whole answer and closes it before werkzeug
    writes a byte.

    werkzeug's dev server (3.1.9, serving.py run_wsgi) closes the response
    iterable at the end of a ``finally`` block that first drains the socket; when
    Chromium resets a connection it no longer wants (the favicon during a quick
    navigation), that drain raises and the close is skipped. A file sent with
    send_file is then only closed by the garbage collector, which warns
    (ResourceWarning) in the server thread and fails whichever test is running.
    Closing here leaves nothing open for a dropped connection; the answers a test
    server sends are small and finite, so buffering them costs nothing.
    """

    def closed_app(environ, start_response):
        iterable = app(environ, start_response)
        try:
            return [b"".join(iterable)]
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    return closed_app


class LiveServer:
    """A Flask app served by werkzeug on 127.0.0.1:<free port>, in a thread.

    Sets ``app.config["BASE_URL"]`` to :attr:`url` while it runs, so absolute
    links in pages and emails point at it. Unhandled exceptions in the app are
    collected in :attr:`errors`; :meth:`stop` raises if there were any (unless
    ``allow_errors`` is set), so a 500 behind an htmx swap never passes quietly.
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1"):
        self.app = app
        self.errors: list[BaseException] = []
        self.allow_errors = False
        self._server = make_server(host, 0, _closed_before_sending(app), threaded=True)
        self.port: int = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self._previous_base_url = app.config.get("BASE_URL")
        self._thread: threading.Thread | None = None

    def _record_error(self, _sender, exception, **_extra) -> None:
        self.errors.append(exception)

    def start(self) -> LiveServer:
        self.app.config["BASE_URL"] = self.url
        got_request_exception.connect(self._record_error, self.app)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"live-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._thread = None
        got_request_exception.disconnect(self._record_error, self.app)
        self.app.config["BASE_URL"] = self._previous_base_url
        if self.errors and not self.allow_errors:
            raise AssertionError(
                f"the app raised {len(self.errors)} unhandled exception(s) while serving "
                f"the browser: {self.errors!r}"
            )

    def __repr__(self) -> str:
        return f"<LiveServer {self.url}>"


# --- browser -------------------------------------------------------------------


def launch_chromium(playwright: Playwright, executable: str | None = None) -> Browser:
    """Debian's Chromium, headless. Playwright gives every launch a fresh temporary
    profile (user-data-dir) and removes it on close; each test then gets its
    own browser context (no shared cookies or storage)."""
    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError("no Chromium found: run scripts/system-deps.sh (Debian: chromium)")
    return playwright.chromium.launch(
        executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=30_000
    )


@dataclass
class PageLog:
    """What went wrong in a page while a test drove it."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [
            *(f"console error: {m}" for m in self.console_errors),
            *(f"uncaught exception: {m}" for m in self.page_errors),
            *(f"request failed: {m}" for m in self.failed_requests),
            *(f"error response: {m}" for m in self.error_responses),
        ]

    def clear(self) -> None:
        for entries in (
            self.console_errors,
            self.page_errors,
            self.failed_requests,
            self.error_responses,
        ):
            entries.clear()


def _browser_own(url: str) -> bool:
    """Requests Chromium makes by itself, not the page: the icon (base.html links
    /static/favicon.svg; /favicon.ico when a page names none). A quick navigation
    aborts them mid-flight, which is no fault of the page."""
    return urlsplit(url).path in ("/favicon.ico", "/static/favicon.svg")


_logs: weakref.WeakKeyDictionary[Any, PageLog] = weakref.WeakKeyDictionary()


def watch(page: Page) -> PageLog:
    """Record the page's console errors (CSP violations show up there), uncaught
    exceptions, failed requests and 4xx/5xx responses."""
    log = PageLog()

    def on_console(message) -> None:
        where = (message.location or {}).get("url", "?")
        if message.type == "error" and not _browser_own(where):
            log.console_errors.append(f"{message.text} ({where})")

    def on_response(response) -> None:
        if response.status >= 400 and not _browser_own(response.url):
            request = response.request
            log.error_responses.append(f"{response.status} {request.method} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    def on_request_failed(request) -> None:
        if not _browser_own(request.url):
            log.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)
    _logs[page] = log
    return log


def page_log(page: Page) -> PageLog:
    """The log of a page opened by the fixtures (or passed to :func:`watch`)."""
    try:
        return _logs[page]
    except KeyError:
        raise AssertionError("this page is not watched: open it with new_page()") from None


def assert_no_browser_errors(page: Page, allow: tuple[str, ...] = ()) -> None:
    """No console errors, CSP violations, JS exceptions, failed or 4xx/5xx requests.

    `allow` holds regular expressions for entries a test expects (a 404 page).
    """
    problems = [p for p in page_log(page).problems() if not any(re.search(a, p) for a in allow)]
    assert not problems, "the browser reported:\n  " + "\n  ".join(problems)


def new_context(browser: Browser, device: str = "phone", **options: Any) -> BrowserContext:
    """A fresh, isolated browser context for `device` ('phone' or 'desktop')."""
    context = browser.new_context(**{**DEVICES[device], **options})
    context.set_default_timeout(5_000)
    context.set_default_navigation_timeout(10_000)
    return context


# --- helpers for tests ---------------------------------------------------------


def _current_test_dir() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "outside-pytest")
    node = current.rsplit(" ", 1)[0]  # "tests/test_x.py::test_y[p] (call)"
    module, _, name = node.partition("::")
    label = f"{Path(module).stem}.{name}" if name else Path(module).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG as test-artifacts/screenshots/<test>/<name>.png."""
    folder = ARTIFACTS / "screenshots" / _current_test_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    # caret="initial": hiding the caret leaves style="" on every input, which an
    # htmx swap would then copy (attributesToSettle) and the CSP would refuse.
    page.screenshot(path=str(path), full_page=True, caret="initial")
    return path


_OVERFLOW_JS = """screenWidth => {
  const width = Math.min(window.innerWidth, screenWidth);
  const rtl = getComputedStyle(document.documentElement).direction === 'rtl';
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const box = el.getBoundingClientRect();
    // Content scrolls sideways past the end side: right in LTR, left in RTL.
    const out = rtl ? box.left < -0.5 : box.right > width + 0.5;
    if (box.width && out) {
      const id = el.id ? '#' + el.id : '';
      const cls = el.classList.length ? '.' + [...el.classList].join('.') : '';
      const span = `[${Math.round(box.left)}, ${Math.round(box.right)}]`;
      wide.push(`${el.tagName.toLowerCase()}${id}${cls} ${span}`);
    }
  }
  return {scrollWidth: document.scrollingElement.scrollWidth, width: width, wide: wide.slice(0, 8)};
}"""


def assert_no_horizontal_scroll(page: Page) -> None:
    """The page fits the screen's width: no sideways scrolling on a phone.

    Compares document.scrollingElement.scrollWidth with the screen's width as
    well as window.innerWidth: a mobile browser (is_mobile) widens its layout
    viewport, and so innerWidth, to fit content that is too wide (516 px for a
    500 px box on a 360 px phone), which would hide the very overflow we test for.
    """
    viewport = page.viewport_size or {"width": 10**6}
    result = page.evaluate(_OVERFLOW_JS, viewport["width"])
    assert result["scrollWidth"] <= result["width"], (
        f"page scrolls sideways: scrollWidth {result['scrollWidth']} > width "
        f"{result['width']}; elements sticking out: {result['wide']}"
    )


def login_in_browser(page: Page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Log in through the real /login form; fails if the form is shown again."""
    page.goto(f"{base_url}/login")
    form = page.locator("main form")
    form.locator("input[name=email]").fill(email)
    form.locator("input[name=password]").fill(password)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    if page.url.split("?")[0].rstrip("/").endswith("/login"):
        errors = page.locator(".error").all_inner_texts()
        raise AssertionError(f"login as {email} failed: {errors or page.title()}")


# --- axe-core ------------------------------------------------------------------

SERIOUS = ("serious", "critical")


def run_axe(page: Page, options: dict | None = None) -> list[dict]:
    """Run axe-core on the page as it is now; return its violations.

    axe is evaluated through the DevTools protocol, which the page's CSP
    (`script-src 'self'`) does not govern, so the page keeps its real CSP and
    its own scripts are tested as served. Each violation is axe's dict: `id`,
    `impact` ('minor'..'critical'), `help`, `helpUrl`, `nodes` (each with
    `target`, `html`, `failureSummary`). `options` go to `axe.run` (e.g.
    ``{"runOnly": ["wcag2a", "wcag2aa"]}``).
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        if not AXE_JS.exists():
            raise FileNotFoundError(
                f"{AXE_JS} is missing: see tests/vendor/axe-core/README.md to vendor it"
            )
        page.evaluate(f"() => {{ {AXE_JS.read_text(encoding='utf-8')}\n}}")
    results = page.evaluate(
        "options => axe.run(document, options)", {"resultTypes": ["violations"], **(options or {})}
    )
    return results["violations"]


def serious(violations: list[dict], impacts: tuple[str, ...] = SERIOUS) -> list[dict]:
    """Only the violations with a serious or critical impact."""
    return [v for v in violations if v.get("impact") in impacts]


def axe_report(violations: list[dict]) -> str:
    """Readable summary for an assertion message."""
    lines = []
    for v in violations:
        lines.append(f"[{v.get('impact')}] {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"][:5]:
            lines.append(f"    {', '.join(map(str, node['target']))}: {node['html'][:160]}")
    return "\n".join(lines) or "no violations"
