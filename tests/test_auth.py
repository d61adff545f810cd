"""Logging in, roles, safe redirects, CSRF, throttling and password changes."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stampweb.extensions import db
from stampweb.models import User
from stampweb.security import check_password, hash_password, is_safe_next
from stampweb.tenancy import unscoped

from .factories import PASSWORD, csrf_token_from, gen_merchant, gen_user, login


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe")
        staff = gen_user(merchant, "staff", "staff@cafe.test")
        manager = gen_user(merchant, "manager", "manager@cafe.test")
        return {"merchant": merchant, "staff": staff, "manager": manager}


def test_login_page_answers(client):
    assert client.get("/login").status_code == 200


def test_owner_logs_in_and_lands_on_dashboard(client, shop):
    response = login(client, "owner@cafe.test")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/admin/")
    assert client.get("/admin/").status_code == 200


def test_staff_lands_on_staff_page_and_cannot_open_admin(client, shop):
    response = login(client, "staff@cafe.test")
    assert response.headers["Location"].endswith("/staff")
    assert client.get("/staff").status_code == 200
    assert client.get("/admin/").status_code == 403
    assert client.get("/team").status_code == 403


def test_manager_cannot_manage_the_team(client, shop):
    login(client, "manager@cafe.test")
    assert client.get("/admin/").status_code == 200
    assert client.get("/team").status_code == 403


def test_wrong_password_shows_message_next_to_field_and_keeps_email(client, shop):
    response = login(client, "owner@cafe.test", "wrong password")
    assert response.status_code == 200
    assert "do not match" in response.text
    assert 'value="owner@cafe.test"' in response.text


def test_protected_pages_redirect_to_login(client):
    for path in ("/admin/", "/staff", "/team", "/admin/mailbox"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert "/login" in response.headers["Location"]


@pytest.mark.parametrize(
    "target", ["//evil.com", "\\\\evil.com", "/\\evil.com", "https://evil.com", "javascript:x",
               "///evil.com", "/\t/evil.com", "\\/evil.com", " //evil.com", "https:evil.com",
               "//evil.com/%2F..", "http:/evil.com"]
)
def test_next_never_leaves_the_site(client, shop, target):
    page = client.get("/login")
    response = client.post(
        "/login?next=" + target,
        data={"email": "owner@cafe.test", "password": PASSWORD,
              "csrf_token": csrf_token_from(page.text)},
    )
    assert response.headers["Location"].endswith("/admin/")
    assert not is_safe_next(target)


def _host_a_browser_reaches(target: str) -> str:
    """Where a browser would go from /login: the WHATWG URL parser strips leading
    control characters and spaces, drops tabs and newlines anywhere, and reads a
    backslash as a slash in http(s) URLs."""
    cleaned = target.lstrip("".join(map(chr, range(33))))
    cleaned = cleaned.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    return urlsplit(urljoin("https://shop.example/login", cleaned)).netloc


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.one_of(
    st.text(alphabet=st.sampled_from(list("/\\:.@%?#\t\n \x00evilcomhtps")), max_size=16),
    st.text(max_size=16).map(lambda t: "/" + t),
))
def test_a_next_judged_safe_never_leaves_the_site(target):
    if is_safe_next(target):
        assert _host_a_browser_reaches(target) == "shop.example", target


def test_next_local_path_is_followed(client, shop):
    page = client.get("/login")
    response = client.post(
        "/login?next=/admin/mailbox",
        data={"email": "owner@cafe.test", "password": PASSWORD,
              "csrf_token": csrf_token_from(page.text)},
    )
    assert response.headers["Location"].endswith("/admin/mailbox")


def test_login_without_csrf_token_is_refused(client, shop):
    response = client.post("/login", data={"email": "owner@cafe.test", "password": PASSWORD})
    assert response.status_code == 400


def test_htmx_post_without_csrf_header_is_refused(client, shop):
    login(client, "owner@cafe.test")
    response = client.post("/logout", headers={"HX-Request": "true"})
    assert response.status_code == 400


def test_login_is_throttled(client, shop):
    statuses = [login(client, "owner@cafe.test", "nope").status_code for _ in range(12)]
    assert 429 in statuses


def test_password_change_logs_out_other_sessions(app, shop):
    first, second = app.test_client(), app.test_client()
    login(first, "owner@cafe.test")
    login(second, "owner@cafe.test")
    page = first.get("/account/password")
    response = first.post(
        "/account/password",
        data={"current_password": PASSWORD, "new_password": "a new long password",
              "confirm": "a new long password", "csrf_token": csrf_token_from(page.text)},
    )
    assert response.status_code == 302
    assert first.get("/admin/").status_code == 200
    assert second.get("/admin/").status_code == 302  # back to login


def test_every_user_finds_the_password_form_and_a_change_takes_effect(app, shop):
    """Staff (who have no admin nav) reach it from the staff page; a wrong current
    password is refused beside its field; afterwards only the new password works,
    and the session that changed it stays logged in while the others are out."""
    staff, other_phone = app.test_client(), app.test_client()
    login(staff, "staff@cafe.test")
    login(other_phone, "staff@cafe.test")
    assert 'href="/account/password"' in staff.get("/staff").text
    page = staff.get("/account/password")
    token = csrf_token_from(page.text)
    wrong = staff.post("/account/password", data={
        "current_password": "not it at all", "new_password": "a new long password",
        "confirm": "a new long password", "csrf_token": token})
    assert wrong.status_code == 200
    assert re.search(r'id="current_password-error">[^<]*not your current password', wrong.text)
    assert other_phone.get("/staff").status_code == 200  # nothing changed yet

    done = staff.post("/account/password", data={
        "current_password": PASSWORD, "new_password": "a new long password",
        "confirm": "a new long password", "csrf_token": token})
    assert done.status_code == 302
    assert staff.get("/staff").status_code == 200
    assert other_phone.get("/staff").status_code == 302
    assert login(app.test_client(), "staff@cafe.test").status_code == 200  # old: refused
    assert login(app.test_client(), "staff@cafe.test", "a new long password").status_code == 302


def test_an_old_session_cookie_replayed_after_a_password_change_is_rejected(app, shop):
    """A stolen cookie copied before the change stops working after it."""
    thief, owner = app.test_client(), app.test_client()
    login(owner, "owner@cafe.test")
    stolen = owner.get_cookie("session").value
    thief.set_cookie("session", stolen)
    assert thief.get("/admin/").status_code == 200
    token = csrf_token_from(owner.get("/account/password").text)
    owner.post("/account/password", data={
        "current_password": PASSWORD, "new_password": "another long password",
        "confirm": "another long password", "csrf_token": token})
    thief.set_cookie("session", stolen)
    assert thief.get("/admin/").status_code == 302


def test_passwords_are_argon2id_and_old_hashes_are_upgraded(tmp_path):
    """Production parameters (64 MiB, 3 passes); a weaker stored hash is redone at login."""
    from argon2 import PasswordHasher

    from stampweb import create_app

    from .conftest import unit_config

    config = unit_config(tmp_path)
    del config["ARGON2_TIME_COST"], config["ARGON2_MEMORY_KIB"]
    app = create_app(config)
    with app.app_context():
        db.create_all()
        gen_merchant("cafe")
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    with app.app_context(), unscoped():
        user = db.session.query(User).filter_by(email="owner@cafe.test").one()
        assert user.password_hash.startswith("$argon2id$")
        assert "m=65536,t=3" in user.password_hash
        user.password_hash = weak
        db.session.commit()
    login(app.test_client(), "owner@cafe.test")
    with app.app_context(), unscoped():
        user = db.session.query(User).filter_by(email="owner@cafe.test").one()
        assert "m=65536,t=3" in user.password_hash
        assert check_password(user.password_hash, PASSWORD)[0]


def test_owner_adds_a_team_member_and_bad_input_is_shown(client, shop):
    login(client, "owner@cafe.test")
    page = client.get("/team")
    token = csrf_token_from(page.text)
    bad = client.post("/team", data={"email": "not-an-email", "password": "short",
                                     "role": "staff", "csrf_token": token})
    assert bad.status_code == 200
    assert 'value="not-an-email"' in bad.text
    assert "Enter a valid email address" in bad.text
    good = client.post("/team", data={"email": "new@cafe.test", "password": "long enough pw",
                                      "role": "manager", "name": "New", "csrf_token": token})
    assert good.status_code == 302
    fresh = client.application.test_client()
    assert login(fresh, "new@cafe.test", "long enough pw").status_code == 302


def test_session_cookie_flags(client, shop):
    response = login(client, "owner@cafe.test")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_secure_cookie_when_base_url_is_https(tmp_path, monkeypatch):
    from stampweb import create_app

    from .conftest import unit_config

    monkeypatch.setenv("BASE_URL", "https://loyalty.example.com")
    app = create_app(unit_config(tmp_path))
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["REMEMBER_COOKIE_SECURE"] is True


def test_hash_password_roundtrip():
    hashed = hash_password("something long")
    assert check_password(hashed, "something long")[0]
    assert not check_password(hashed, "something else")[0]
