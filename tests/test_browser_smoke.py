"""The pages a person uses work in a real browser: headless Chromium at phone size.

These also prove the harness itself (tests/browser.py and the browser block of
tests/conftest.py): the live server, the watched pages, screenshots and axe.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Error as PlaywrightError

from .browser import (
    assert_no_browser_errors,
    assert_no_horizontal_scroll,
    axe_report,
    login_in_browser,
    page_log,
    run_axe,
    screenshot,
    serious,
)
from .factories import gen_merchant

pytestmark = pytest.mark.browser


@pytest.fixture
def cafe(app):
    with app.app_context():
        return gen_merchant("cafe", name="Café Crème")


def test_owner_logs_in_on_a_phone_and_lands_on_the_dashboard(app, cafe, live_server, browser_page):
    """At 360 px the login page and the dashboard fit the screen, the owner's login
    lands on the dashboard, and the browser reports no JS, CSP or request errors."""
    server = live_server(app)
    page = browser_page

    page.goto(server.url + "/login")
    assert screenshot(page, "login").stat().st_size > 0
    assert_no_horizontal_scroll(page)

    login_in_browser(page, server.url, "owner@cafe.test")
    assert page.url == server.url + "/admin/"
    assert page.locator("h1").inner_text() == "Dashboard"
    screenshot(page, "dashboard")
    assert_no_horizontal_scroll(page)
    assert_no_browser_errors(page)


def test_login_page_has_no_serious_accessibility_violations(app, live_server, browser_page):
    """axe-core finds nothing serious or critical on /login at phone size."""
    server = live_server(app)
    browser_page.goto(server.url + "/login")
    violations = run_axe(browser_page)
    assert not serious(violations), axe_report(serious(violations))
    assert_no_browser_errors(browser_page)


def test_dashboard_has_no_serious_accessibility_violations(app, cafe, live_server, desktop_page):
    """axe-core finds nothing serious or critical on the owner's dashboard on a desktop."""
    server = live_server(app)
    login_in_browser(desktop_page, server.url, "owner@cafe.test")
    violations = run_axe(desktop_page)
    assert not serious(violations), axe_report(serious(violations))


def test_axe_reports_what_it_is_shown(app, live_server, browser_page):
    """The axe check is not vacuous: an image without a text alternative on the
    page is reported as a critical violation."""
    server = live_server(app)
    browser_page.goto(server.url + "/login")
    browser_page.evaluate(
        """() => {
            const img = document.createElement('img');
            img.src = '/static/nothing.png';
            document.querySelector('main').append(img);
        }"""
    )
    found = {v["id"]: v["impact"] for v in run_axe(browser_page, {"runOnly": ["wcag2a"]})}
    assert found.get("image-alt") == "critical", found


def test_htmx_loads_from_our_origin_with_the_locked_down_config(app, live_server, browser_page):
    """The vendored htmx runs under `script-src 'self'` and takes its settings from
    <meta name="htmx-config">: own origin only, no eval, no history snapshots."""
    server = live_server(app)
    browser_page.goto(server.url + "/login")
    config = browser_page.evaluate(
        """() => window.htmx && {
            selfRequestsOnly: htmx.config.selfRequestsOnly,
            allowEval: htmx.config.allowEval,
            historyCacheSize: htmx.config.historyCacheSize,
        }"""
    )
    assert config == {"selfRequestsOnly": True, "allowEval": False, "historyCacheSize": 0}
    assert_no_browser_errors(browser_page)


def test_watched_page_reports_csp_violations(app, live_server, browser_page):
    """An inline script is refused by the CSP, and the page log says so: a test
    that asserts no browser errors would catch it."""
    server = live_server(app)
    browser_page.goto(server.url + "/login")
    with pytest.raises(PlaywrightError, match="Content Security Policy"):
        browser_page.add_script_tag(content="window.injected = true")
    assert browser_page.evaluate("() => window.injected") is None
    assert any("Content Security Policy" in m for m in page_log(browser_page).console_errors)
    with pytest.raises(AssertionError, match="Content Security Policy"):
        assert_no_browser_errors(browser_page)


def test_sideways_scrolling_is_caught_and_the_culprit_named(app, live_server, browser_page):
    """An element wider than the phone makes assert_no_horizontal_scroll fail and
    name that element."""
    server = live_server(app)
    browser_page.goto(server.url + "/login")
    browser_page.evaluate(
        """() => {
            const wide = document.createElement('div');
            wide.className = 'too-wide';
            wide.style.inlineSize = '500px';
            wide.style.blockSize = '1rem';
            document.querySelector('main').append(wide);
        }"""
    )
    with pytest.raises(AssertionError, match=r"div\.too-wide"):
        assert_no_horizontal_scroll(browser_page)


def test_live_server_fails_the_test_when_the_app_raises(app, live_server, browser_page):
    """A 500 behind the browser is recorded, so it cannot pass unnoticed."""

    def boom():
        raise RuntimeError("boom")

    app.add_url_rule("/boom", "boom", boom)
    server = live_server(app)
    browser_page.goto(server.url + "/boom")
    assert [str(e) for e in server.errors] == ["boom"]
    assert "error response: 500" in "\n".join(page_log(browser_page).problems())
    server.allow_errors = True  # expected here; otherwise teardown fails the test


@pytest.mark.integration
def test_live_server_serves_the_postgres_app(pg_app, live_server, browser_page):
    """The same harness drives the app on real PostgreSQL and Redis, and sets
    BASE_URL so absolute links point at the live server."""
    with pg_app.app_context():
        gen_merchant("pgcafe")
    server = live_server(pg_app)
    assert pg_app.config["BASE_URL"] == server.url
    login_in_browser(browser_page, server.url, "owner@pgcafe.test")
    assert browser_page.url == server.url + "/admin/"
    assert_no_browser_errors(browser_page)
