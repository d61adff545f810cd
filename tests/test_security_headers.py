"""Browser-side hardening: security headers on every page, no inline script anywhere,
htmx locked down, and CSRF that survives a staff phone left open all day but
refuses any POST without a valid token."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner

from stampweb import create_app
from stampweb.extensions import db
from stampweb.links import prefs_url
from stampweb.tenancy import tenant

from .conftest import unit_config
from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, gen_user, login

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = PROJECT_ROOT / "templates"
HTMX = {"HX-Request": "true"}

# An element's event-handler attribute (onclick=, onload=, …) or htmx's own
# inline handlers (hx-on:…), which the CSP without 'unsafe-inline' would block
# or which would need eval.
INLINE_HANDLER = re.compile(r"<[^>]*\s(?:on[a-z]+|hx-on[:\-][\w:-]*)\s*=", re.IGNORECASE)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.IGNORECASE)


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("hdr", name="Header Café")
        gen_user(merchant, "staff", "staff@hdr.test")
        customer = gen_customer(merchant, first_name="Ada")
        card = card_of(customer)
        with tenant(merchant.id):
            prefs = prefs_url(customer)
        return {"merchant_id": merchant.id, "code": card.code, "token": card.token,
                "customer_id": customer.id, "prefs": prefs}


def _pages(app, client, shop) -> dict[str, object]:
    """Every argument-free GET page as the owner, plus the pages with personal data."""
    login(client, "owner@hdr.test")
    paths = {
        rule.rule for rule in app.url_map.iter_rules()
        if "GET" in rule.methods and not rule.arguments
        and not rule.rule.startswith(("/api/", "/wallet/", "/static"))
        and rule.endpoint not in {"auth.logout", "merchant.customers_export"}
    }
    paths |= {f"/staff/card/{shop['code']}", f"/admin/customers/{shop['customer_id']}",
              f"/card/{shop['token']}", "/join/hdr",
              shop["prefs"].replace(app.config["BASE_URL"], "")}
    pages = {}
    for path in sorted(paths):
        response = client.get(path)
        if response.status_code == 200 and response.mimetype == "text/html":
            pages[path] = response
    return pages


def test_every_html_page_sends_the_security_headers(app, client, shop):
    """CSP default-src 'self' with no inline script, nosniff, the referrer policy
    Flask-WTF's https Referer check needs, and no framing by other sites."""
    pages = _pages(app, client, shop)
    assert len(pages) >= 20, sorted(pages)
    for path, response in pages.items():
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        directives = dict(
            (part.strip().split(" ", 1) + [""])[:2] for part in csp.split(";") if part.strip()
        )
        assert directives["default-src"] == "'self'", path
        assert "'unsafe-inline'" not in directives.get("script-src", "'self'"), path
        assert "'unsafe-eval'" not in csp, path
        assert directives["frame-ancestors"] in {"'none'", "'self'"}, path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin", path
        assert "Strict-Transport-Security" not in headers, f"{path}: HSTS on plain http"


def test_rendered_pages_have_no_inline_script_or_handlers(app, client, shop):
    """The CSP would block them anyway; a page relying on one would silently break."""
    for path, response in _pages(app, client, shop).items():
        assert not INLINE_SCRIPT.search(response.text), path
        assert not INLINE_HANDLER.search(response.text), path
        assert "javascript:" not in response.text.lower(), path


@pytest.mark.parametrize("template", sorted(
    str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.html")
))
def test_templates_have_no_inline_script_or_handlers(template):
    """Every template, including the partials and pages the walk above cannot reach."""
    text = (TEMPLATES / template).read_text()
    assert not INLINE_SCRIPT.search(text)
    assert not INLINE_HANDLER.search(text)
    assert "javascript:" not in text.lower()


def test_hsts_only_when_served_over_https(tmp_path, monkeypatch):
    monkeypatch.setenv("BASE_URL", "https://loyalty.example.com")
    application = create_app(unit_config(tmp_path))
    response = application.test_client().get("/login")
    hsts = response.headers["Strict-Transport-Security"]
    assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 180 * 24 * 3600


def test_htmx_config_locks_htmx_down_and_the_shipped_htmx_knows_the_names(client):
    """selfRequestsOnly, allowEval false and no history cache, read from the meta tag
    of the base layout; the vendored htmx must read exactly those config keys, or a
    typo or an old htmx would silently ignore them."""
    page = client.get("/login").text
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", page)
    config = json.loads(meta.group(1))
    assert config["selfRequestsOnly"] is True
    assert config["allowEval"] is False
    assert config["historyCacheSize"] == 0
    assert config.get("allowScriptTags") is False
    script = re.search(r'<script src="/static/(vendor/htmx-[\d.]+/htmx\.min\.js)"', page).group(1)
    htmx = (PROJECT_ROOT / "static" / script).read_text()
    for key in ("selfRequestsOnly", "allowEval", "historyCacheSize", "allowScriptTags"):
        assert re.search(rf"\b{key}\s*:", htmx), f"htmx does not know {key}"


def test_the_staff_page_still_stamps_after_eight_hours_idle(app, client, shop, monkeypatch):
    """A phone opens the card in the morning and taps Stamp after lunch: the CSRF
    token it was given is still accepted (Flask-WTF's default would be one hour)."""
    login(client, "staff@hdr.test")
    page = client.get(f"/staff/card/{shop['code']}")
    token = csrf_token_from(page.text)
    form = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"',
                           page.text[page.text.index('class="stamp-form"'):]))
    later = int(time.time()) + 8 * 3600 + 300
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: later)
    response = client.post(f"/staff/card/{shop['code']}/stamp", data=form,
                           headers={**HTMX, "X-CSRFToken": token})
    assert response.status_code == 200, response.text
    assert "Stamped: 1 of" in response.text


def _staff_on_an_app_with_a_csrf_time_limit(tmp_path, slug: str):
    """(an app whose CSRF tokens expire after an hour, its logged-in staff client, a card code)."""
    application = create_app(unit_config(tmp_path, WTF_CSRF_TIME_LIMIT=3600))
    with application.app_context():
        db.create_all()
        merchant = gen_merchant(slug)
        gen_user(merchant, "staff", f"staff@{slug}.test")
        code = card_of(gen_customer(merchant)).code
    client = application.test_client()
    login(client, f"staff@{slug}.test")
    return application, client, code


def test_an_expiring_token_would_have_been_caught(tmp_path, monkeypatch):
    """The test above can fail: with a one-hour CSRF limit the same tap is refused."""
    _app, client, code = _staff_on_an_app_with_a_csrf_time_limit(tmp_path, "hour")
    token = csrf_token_from(client.get(f"/staff/card/{code}").text)
    later = int(time.time()) + 8 * 3600
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: later)
    response = client.post(f"/staff/card/{code}/stamp", headers={**HTMX, "X-CSRFToken": token})
    assert response.status_code == 400


def test_the_answer_to_a_checked_post_carries_the_token_it_checked(app, client, shop,
                                                                    tmp_path):
    """A stamp's answer holds the card's forms: they carry the token the stamp was sent
    with (not signed anew), and it is accepted again; a forged token gets no page.
    With a time limit on tokens a fresh one is signed, so tokens still age out."""
    login(client, "staff@hdr.test")
    token = csrf_token_from(client.get(f"/staff/card/{shop['code']}").text)
    later = int(time.time()) + 60  # a token signed now would differ from the one sent
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TimestampSigner, "get_timestamp", lambda self: later)
        answer = client.post(f"/staff/card/{shop['code']}/stamp",
                             headers={**HTMX, "X-CSRFToken": token})
    assert "Stamped: 1 of" in answer.text
    assert set(re.findall(r'name="csrf_token" type="hidden" value="([^"]+)"',
                          answer.text)) == {token}
    again = client.post(f"/staff/card/{shop['code']}/stamp",
                        headers={**HTMX, "X-CSRFToken": token})
    assert again.status_code == 200 and "Already stamped" in again.text
    assert client.post(f"/staff/card/{shop['code']}/stamp",
                       headers={**HTMX, "X-CSRFToken": token[:-2] + "xx"}).status_code == 400

    limited, other, code = _staff_on_an_app_with_a_csrf_time_limit(tmp_path, "limited")
    token = csrf_token_from(other.get(f"/staff/card/{code}").text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TimestampSigner, "get_timestamp", lambda self: later)
        answer = other.post(f"/staff/card/{code}/stamp", headers={**HTMX, "X-CSRFToken": token})
    assert "Stamped: 1 of" in answer.text
    assert token not in answer.text
    with limited.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("header", [None, "", "not-a-token", "forged.token.value"])
def test_htmx_stamp_without_a_valid_csrf_header_is_refused(app, client, shop, header):
    """The staff stamp sent by htmx with no, an empty or a forged X-CSRFToken: 400, no row."""
    login(client, "staff@hdr.test")
    client.get(f"/staff/card/{shop['code']}")
    headers = dict(HTMX)
    if header is not None:
        headers["X-CSRFToken"] = header
    response = client.post(f"/staff/card/{shop['code']}/stamp", headers=headers)
    assert response.status_code == 400
    assert "CSRF" in response.text or "expired" in response.text.lower()
    with app.app_context(), tenant(shop["merchant_id"]):
        assert db.session.execute(db.text("SELECT count(*) FROM visit")).scalar() == 0


def test_every_browser_post_without_a_csrf_token_is_refused(app, client, shop):
    """Every form and htmx POST route (not the API, PassKit or the RFC 8058 one-click
    unsubscribe, which carry no cookies) answers 400 without a token."""
    login(client, "owner@hdr.test")
    exempt_prefixes = ("/api/", "/wallet/", "/u/")
    checked = []
    for rule in app.url_map.iter_rules():
        if "POST" not in rule.methods or rule.rule.startswith(exempt_prefixes):
            continue
        url = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", "1", rule.rule)
        response = client.post(url, headers=HTMX)
        assert response.status_code == 400, f"POST {url} -> {response.status_code}"
        checked.append(rule.rule)
    assert len(checked) >= 50
