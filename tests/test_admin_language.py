"""Merchant users work in their own language; customers' pages keep theirs."""

from __future__ import annotations

import re

import pytest

from stampweb.extensions import db
from stampweb.models import User
from stampweb.tenancy import unscoped

from .factories import csrf_token_from, gen_merchant, gen_user, login


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe", locale="ru")
        gen_user(merchant, "staff", "staff@cafe.test")
        return merchant


def html_lang(html: str) -> tuple[str, str]:
    match = re.search(r'<html lang="([^"]+)" dir="([^"]+)"', html)
    assert match, "no <html lang dir>"
    return match.group(1), match.group(2)


def choose(client, locale: str, next_path: str = "/admin/"):
    page = client.get(f"/account/language?next={next_path}")
    return client.post(f"/account/language?next={next_path}",
                       data={"locale": locale, "csrf_token": csrf_token_from(page.text)})


def test_admin_follows_the_merchants_language_until_the_user_chooses(client, shop):
    login(client, "owner@cafe.test")
    # The browser asks for English, but the business works in Russian.
    assert html_lang(client.get("/admin/", headers={"Accept-Language": "en"}).text) == ("ru", "ltr")


@pytest.mark.parametrize("locale, direction", [
    ("en", "ltr"), ("ru", "ltr"), ("kk", "ltr"), ("he", "rtl"), ("fa", "rtl"),
])
def test_each_user_can_work_in_any_of_the_five_languages(app, client, shop, locale, direction):
    login(client, "staff@cafe.test")
    response = choose(client, locale, "/staff")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/staff")
    assert html_lang(client.get("/staff").text) == (locale, direction)
    with app.app_context(), unscoped():
        assert db.session.query(User).filter_by(email="staff@cafe.test").one().locale == locale


def test_the_choice_is_per_user(client, shop):
    login(client, "owner@cafe.test")
    choose(client, "he")
    client.post("/logout", data={"csrf_token": csrf_token_from(client.get("/admin/").text)})
    login(client, "staff@cafe.test")
    assert html_lang(client.get("/staff").text)[0] == "ru"


def test_back_to_the_business_default(client, shop):
    login(client, "owner@cafe.test")
    choose(client, "fa")
    choose(client, "")
    assert html_lang(client.get("/admin/").text) == ("ru", "ltr")


def test_an_unknown_language_is_refused_next_to_the_field(client, shop):
    login(client, "owner@cafe.test")
    response = choose(client, "xx")
    assert response.status_code == 200
    assert 'class="error"' in response.text
    assert html_lang(client.get("/admin/").text)[0] == "ru"


def test_an_outside_next_is_ignored(client, shop):
    login(client, "owner@cafe.test")
    response = choose(client, "kk", "https://evil.example/")
    assert response.headers["Location"].endswith("/admin/")


def test_the_topbar_links_to_the_language_page(client, shop):
    login(client, "owner@cafe.test")
    page = client.get("/admin/").text
    assert 'href="/account/language?next=/admin/"' in page
    assert 'class="topbar-language"' in page and 'title="Русский"' in page


def test_customer_pages_keep_the_customers_language_when_staff_are_logged_in(client, shop):
    login(client, "owner@cafe.test")
    choose(client, "he")
    page = client.get("/join/cafe", headers={"Accept-Language": "kk,en;q=0.5"})
    assert html_lang(page.text) == ("kk", "ltr")
