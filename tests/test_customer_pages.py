"""The customer portal through HTTP: join, card, confirm, preferences, one-click unsubscribe."""

from __future__ import annotations

import json
import re
import time

import itsdangerous.timed
import pytest
from sqlalchemy import select

from stampweb import links
from stampweb.extensions import db
from stampweb.loyalty import membership
from stampweb.loyalty.stamping import staff_card_url
from stampweb.models import Card, ConsentEvent, Customer, Visit
from stampweb.qr import qr_svg
from stampweb.tasks.queues import TRANSACTIONAL, get_queue
from stampweb.tenancy import tenant

from .factories import csrf_token_from, gen_merchant


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe", name="Cafe Ada", brand_color="#f5d000")
        return {"id": merchant.id, "slug": merchant.slug}


def _join_form(client, slug="cafe", **fields):
    page = client.get(f"/join/{slug}")
    data = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "phone": "",
        "birthday_day": "",
        "birthday_month": "",
        "birthday_year": "",
        "locale": "en",
        "csrf_token": csrf_token_from(page.text),
    }
    data.update(fields)
    return client.post(f"/join/{slug}", data={k: v for k, v in data.items() if v is not None})


def _member(app, shop, **overrides):
    values = {"first_name": "Ada", "email": "ada@example.com", "locale": "en",
              "email_marketing": False}
    values.update(overrides)
    with app.app_context():
        return membership.join(shop["id"], **values)


def _customer(app, shop, customer_id):
    with app.app_context(), tenant(shop["id"]):
        customer = db.session.get(Customer, customer_id)
        if customer is not None:
            db.session.expunge(customer)
        return customer


def _token(app, maker, *args, **kwargs):
    with app.app_context():
        return maker(*args, **kwargs)


def _field_error(html: str, field_id: str) -> str | None:
    match = re.search(rf'<p class="error" id="{field_id}-error">([^<]*)</p>', html)
    return match and match.group(1)


# --- join ----------------------------------------------------------------------------------


def test_join_page_works_without_login_in_the_merchants_colours(client, shop):
    """The join page answers anonymously, names the merchant, links its colour sheet."""
    page = client.get("/join/cafe")
    assert page.status_code == 200
    assert "Cafe Ada" in page.text
    assert 'href="/brand/cafe.css"' in page.text
    assert 'class="topbar"' not in page.text
    css = client.get("/brand/cafe.css")
    assert css.mimetype == "text/css" and "--brand: #f5d000" in css.text
    # The consent box is there and not ticked.
    box = re.search(r'<input[^>]*name="email_marketing"[^>]*>', page.text).group(0)
    assert "checked" not in box


def test_unknown_merchant_slug_is_404(client, shop):
    assert client.get("/join/nobody").status_code == 404


def test_join_language_defaults_to_the_browser_then_the_merchant(client, app, shop):
    """Accept-Language picks the language; without it, the merchant's locale."""
    page = client.get("/join/cafe", headers={"Accept-Language": "he,en;q=0.5"})
    assert re.search(r'<option selected value="he">|<option value="he" selected>', page.text)
    with app.app_context():
        gen_merchant("kafe", locale="ru")
    page = client.get("/join/kafe")
    assert re.search(r'<option selected value="ru">|<option value="ru" selected>', page.text)


def test_join_happy_path_lands_on_the_new_card(client, app, shop):
    """A join makes the member and redirects to /card/<token> with a welcome message."""
    response = _join_form(client)
    assert response.status_code == 303
    token = response.headers["Location"].rsplit("/card/", 1)[1]
    card = client.get(f"/card/{token}")
    assert card.status_code == 200
    assert "Welcome!" in card.text
    assert "Hello Ada" in card.text


def test_join_with_marketing_box_says_to_check_email(client, app, shop):
    """Double opt-in: the card page says to check email; the confirmation job is queued."""
    response = _join_form(client, email_marketing="y")
    card = client.get(response.headers["Location"])
    assert "Check your email" in card.text
    with app.app_context():
        assert len(get_queue(TRANSACTIONAL).jobs) == 1
    with app.app_context(), tenant(shop["id"]):
        event = db.session.scalars(select(ConsentEvent)).one()
    assert event.source == "join" and event.state == "pending"
    assert event.wording.startswith("Yes, Cafe Ada may send me offers")
    assert event.ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("fields", "field_id", "message"),
    [
        ({"first_name": ""}, "first_name", "Tell us your first name."),
        ({"email": "ada@"}, "email", "Enter a valid email address."),
        ({"email": "", "phone": ""}, "email", "Give an email address or a phone number."),
        ({"email": "", "phone": "12"}, "phone", "Enter a phone number"),
        ({"birthday_day": "31", "birthday_month": "2"}, "birthday_day", "does not exist"),
        ({"birthday_day": "3", "birthday_month": ""}, "birthday_day", "both the day and the month"),
        ({"birthday_day": "3", "birthday_month": "4", "birthday_year": "abc"}, "birthday_year",
         "integer"),
        ({"email": "", "phone": "+44 20 7946 0958", "email_marketing": "y"}, "email",
         "Give an email address to get offers by email."),
    ],
)
def test_bad_join_input_shows_the_message_next_to_the_field_and_keeps_the_input(
    client, app, shop, fields, field_id, message
):
    """Each bad input re-renders the form: message beside the field, typed values kept."""
    response = _join_form(client, last_name="Byron", **fields)
    assert response.status_code == 200
    error = _field_error(response.text, field_id)
    assert error is not None and message in error, response.text
    assert 'value="Byron"' in response.text
    for name in ("phone", "email"):
        if fields.get(name):
            assert f'value="{fields[name]}"' in response.text
    with app.app_context(), tenant(shop["id"]):
        assert db.session.query(Customer).count() == 0


def test_joining_again_in_the_same_browser_reopens_the_card(client, shop):
    """A double-tapped form (same browser session) leads to the same card, not a duplicate."""
    first = _join_form(client)
    again = _join_form(client, email="ADA@example.com")
    assert again.status_code == 303
    assert again.headers["Location"] == first.headers["Location"]


def test_joining_with_a_members_email_from_elsewhere_emails_the_link_instead(app, shop):
    """Someone typing a member's email does not get their card: the link goes by email."""
    first = app.test_client()
    _join_form(first)
    stranger = app.test_client()
    response = _join_form(stranger, first_name="Mallory")
    assert response.status_code == 200
    assert "already a member" in response.text
    assert "/card/" not in response.text
    with app.app_context():
        [job] = get_queue(TRANSACTIONAL).jobs
        assert job.func_name.endswith("send_card_link_email")
    # Asking again straight away sends no second email.
    _join_form(stranger, first_name="Mallory")
    with app.app_context():
        assert len(get_queue(TRANSACTIONAL).jobs) == 1


# --- card page ---------------------------------------------------------------------------------


def test_card_page_shows_stamps_qr_history_and_is_not_cached(client, app, shop):
    """Stamps as a grid, a QR code for staff, the history, the prefs link; no-store."""
    member = _member(app, shop, locale="he")
    with app.app_context(), tenant(shop["id"]):
        card = db.session.scalars(select(Card).filter_by(token=member.card_token)).one()
        card.stamps = 3
        db.session.add(Visit(merchant_id=shop["id"], customer_id=member.customer_id,
                             card_id=card.id, stamps=3))
        db.session.commit()
        code = card.code
    page = client.get(f"/card/{member.card_token}")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert page.text.count('class="stamp filled"') == 3
    assert page.text.count('class="stamp"') == 7
    assert "<svg" in page.text and code in page.text
    assert "3 חותמות" in page.text  # the Hebrew catalogue: "3 stamps"
    assert 'lang="he"' in page.text and 'dir="rtl"' in page.text
    assert "/prefs/" in page.text


def test_card_qr_encodes_the_staff_card_url(app, shop):
    """The QR code carries {BASE_URL}/staff/card/<code>."""
    member = _member(app, shop)
    with app.app_context(), tenant(shop["id"]):
        card = db.session.scalars(select(Card).filter_by(token=member.card_token)).one()
        url = staff_card_url(card)
        assert url == f"{app.config['BASE_URL']}/staff/card/{card.code}"
        expected_qr = str(qr_svg(url))
    page = app.test_client().get(f"/card/{member.card_token}")
    assert expected_qr in page.text


def test_card_page_htmx_refresh_returns_only_the_live_part(client, app, shop):
    member = _member(app, shop)
    fragment = client.get(f"/card/{member.card_token}", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and 'id="card-live"' in fragment.text


def test_unknown_card_token_is_404(client, shop):
    assert client.get("/card/not-a-real-token").status_code == 404


# --- double opt-in confirmation ----------------------------------------------------------------


def test_confirmation_link_confirms_only_on_post(app, shop):
    """GET shows a Confirm button and changes nothing; the POST grants email consent."""
    member = _member(app, shop, email_marketing=True)
    token = _token(app, links.confirm_token, member.customer_id, shop["id"])
    client = app.test_client()
    page = client.get(f"/confirm/{token}")
    assert page.status_code == 200 and "Confirm your email" in page.text
    assert _customer(app, shop, member.customer_id).email_consent == "pending"
    done = client.post(f"/confirm/{token}", data={"csrf_token": csrf_token_from(page.text)})
    assert done.status_code == 200 and "confirmed" in done.text
    customer = _customer(app, shop, member.customer_id)
    assert customer.email_consent == "granted" and customer.email_confirmed_at is not None


def test_expired_confirmation_link_offers_a_new_one(app, shop, monkeypatch):
    """After 7 days the link confirms nothing; its page can ask for a fresh link."""
    member = _member(app, shop, email_marketing=True)
    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(
        itsdangerous.timed.TimestampSigner,
        "get_timestamp",
        lambda self: int(time.time()) - 8 * 24 * 3600,
    )
    token = _token(app, links.confirm_token, member.customer_id, shop["id"])
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", real)
    client = app.test_client()
    page = client.get(f"/confirm/{token}")
    assert page.status_code == 410 and "expired" in page.text
    resent = client.post(f"/confirm/{token}", data={"csrf_token": csrf_token_from(page.text)})
    assert resent.status_code == 200 and "new link" in resent.text
    assert _customer(app, shop, member.customer_id).email_consent == "pending"
    with app.app_context():
        # The join's confirmation, then the fresh one asked for here.
        jobs = get_queue(TRANSACTIONAL).jobs
        assert [j.func_name.rsplit(".", 1)[1] for j in jobs] == ["send_confirmation_email"] * 2


# --- preferences --------------------------------------------------------------------------------


def test_preferences_page_saves_changes_with_source_preferences(app, shop):
    """The signed link opens the form; saving changes name and opt-ins, recorded as such."""
    member = _member(app, shop)
    token = _token(app, links.prefs_token, member.customer_id, shop["id"])
    client = app.test_client()
    page = client.get(f"/prefs/{token}")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert 'value="Ada"' in page.text
    saved = client.post(
        f"/prefs/{token}",
        data={
            "csrf_token": csrf_token_from(page.text),
            "first_name": "Augusta",
            "last_name": "",
            "birthday_day": "10",
            "birthday_month": "12",
            "birthday_year": "",
            "locale": "en",
            "wallet_marketing": "y",
        },
    )
    assert saved.status_code == 303
    assert "saved" in client.get(saved.headers["Location"]).text
    customer = _customer(app, shop, member.customer_id)
    assert (customer.first_name, customer.birthday_day, customer.wallet_consent) == (
        "Augusta", 10, "granted",
    )
    with app.app_context(), tenant(shop["id"]):
        event = db.session.scalars(select(ConsentEvent)).one()
    assert (event.channel, event.source) == ("wallet", "preferences")


def test_preferences_bad_input_keeps_what_was_typed(app, shop):
    member = _member(app, shop)
    token = _token(app, links.prefs_token, member.customer_id, shop["id"])
    client = app.test_client()
    page = client.get(f"/prefs/{token}")
    response = client.post(
        f"/prefs/{token}",
        data={"csrf_token": csrf_token_from(page.text), "first_name": "Augusta",
              "birthday_day": "30", "birthday_month": "2", "locale": "en"},
    )
    assert response.status_code == 200
    assert "does not exist" in _field_error(response.text, "birthday_day")
    assert 'value="Augusta"' in response.text
    assert _customer(app, shop, member.customer_id).first_name == "Ada"


def test_preferences_with_a_bad_token_shows_a_friendly_page(client, shop):
    response = client.get("/prefs/this-is-not-signed")
    assert response.status_code == 404
    assert "This link does not work" in response.text


def test_preferences_link_expires_with_a_friendly_page_offering_a_new_link(
    app, shop, monkeypatch
):
    """After 90 days the link shows 'expired' and can email a fresh one; nothing else."""
    member = _member(app, shop)
    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(
        itsdangerous.timed.TimestampSigner,
        "get_timestamp",
        lambda self: int(time.time()) - 91 * 24 * 3600,
    )
    token = _token(app, links.prefs_token, member.customer_id, shop["id"])
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", real)
    client = app.test_client()
    page = client.get(f"/prefs/{token}")
    assert page.status_code == 410
    assert "This link has expired" in page.text
    assert 'value="Ada"' not in page.text
    renew = client.post(f"/prefs/{token}/renew",
                        data={"csrf_token": csrf_token_from(page.text)})
    assert renew.status_code == 200 and "new link" in renew.text
    with app.app_context():
        assert [j.func_name.rsplit(".", 1)[1] for j in get_queue(TRANSACTIONAL).jobs] == [
            "send_card_link_email"
        ]


def test_preferences_unsubscribe_all_button(app, shop):
    member = _member(app, shop, email_marketing=True)
    token = _token(app, links.prefs_token, member.customer_id, shop["id"])
    client = app.test_client()
    page = client.get(f"/prefs/{token}")
    response = client.post(f"/prefs/{token}/unsubscribe",
                           data={"csrf_token": csrf_token_from(page.text)})
    assert response.status_code == 303
    customer = _customer(app, shop, member.customer_id)
    assert customer.email_consent == customer.wallet_consent == "withdrawn"


def test_download_my_data_is_a_json_attachment(app, shop):
    member = _member(app, shop)
    token = _token(app, links.prefs_token, member.customer_id, shop["id"])
    client = app.test_client()
    page = client.get(f"/prefs/{token}")
    response = client.post(f"/prefs/{token}/export",
                           data={"csrf_token": csrf_token_from(page.text)})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Cache-Control"] == "no-store"
    assert json.loads(response.data)["profile"]["email"] == "ada@example.com"


def test_delete_me_asks_first_then_deletes(app, shop):
    """'Delete me' shows a confirmation step; its POST removes the customer and the card."""
    member = _member(app, shop)
    token = _token(app, links.prefs_token, member.customer_id, shop["id"])
    client = app.test_client()
    ask = client.get(f"/prefs/{token}/delete")
    assert ask.status_code == 200 and "Yes, delete me" in ask.text
    assert _customer(app, shop, member.customer_id) is not None
    done = client.post(f"/prefs/{token}/delete", data={"csrf_token": csrf_token_from(ask.text)})
    assert done.status_code == 200 and "deleted" in done.text
    assert _customer(app, shop, member.customer_id) is None
    assert client.get(f"/card/{member.card_token}").status_code == 404
    assert client.get(f"/prefs/{token}").status_code == 404


# --- one-click unsubscribe (RFC 8058) ------------------------------------------------------------


def _consents(app, shop, customer_id):
    customer = _customer(app, shop, customer_id)
    return customer.email_consent, customer.wallet_consent, customer.reminders_consent


@pytest.mark.parametrize("encoding", ["form-urlencoded", "multipart"])
def test_one_click_post_without_cookies_unsubscribes_at_once(app, shop, encoding):
    """POST List-Unsubscribe=One-Click, no cookie, no CSRF token → 200, suppressed now."""
    member = _member(app, shop, email_marketing=True)
    token = _token(app, links.unsubscribe_token, member.customer_id, shop["id"])
    fresh = app.test_client(use_cookies=False)
    kwargs = {"data": {"List-Unsubscribe": "One-Click"}}
    if encoding == "multipart":
        kwargs["content_type"] = "multipart/form-data"
    response = fresh.post(f"/u/{token}", **kwargs)
    assert response.status_code in (200, 202)
    assert "Location" not in response.headers
    assert _consents(app, shop, member.customer_id) == ("withdrawn",) * 3
    # Again: still 200, nothing new recorded.
    assert fresh.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with app.app_context(), tenant(shop["id"]):
        assert db.session.query(ConsentEvent).filter_by(state="withdrawn").count() == 3


def test_unsubscribe_get_shows_a_button_and_changes_nothing(app, shop):
    member = _member(app, shop, email_marketing=True)
    token = _token(app, links.unsubscribe_token, member.customer_id, shop["id"])
    page = app.test_client(use_cookies=False).get(f"/u/{token}")
    assert page.status_code == 200
    assert '<form method="post">' in page.text and 'value="One-Click"' in page.text
    assert _consents(app, shop, member.customer_id)[0] == "pending"


def test_unsubscribe_post_with_an_invalid_token_answers_200_and_changes_nothing(app, shop):
    member = _member(app, shop, email_marketing=True)
    good = _token(app, links.unsubscribe_token, member.customer_id, shop["id"])
    fresh = app.test_client(use_cookies=False)
    for bad in ("garbage", good[:-3] + "abc", good + "x"):
        response = fresh.post(f"/u/{bad}", data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    assert _consents(app, shop, member.customer_id)[0] == "pending"


def test_unsubscribe_token_survives_key_rotation_and_time(app, shop, monkeypatch):
    """A token signed with the old key works once it moved to SECRET_KEY_FALLBACKS,
    and it still works more than 30 days later."""
    member = _member(app, shop, email_marketing=True)
    token = _token(app, links.unsubscribe_token, member.customer_id, shop["id"])
    old_key = app.config["SECRET_KEY"]
    app.config.update(SECRET_KEY="a-brand-new-key", SECRET_KEY_FALLBACKS=[old_key])
    monkeypatch.setattr(
        itsdangerous.timed.TimestampSigner,
        "get_timestamp",
        lambda self: int(time.time()) + 31 * 24 * 3600,
    )
    response = app.test_client(use_cookies=False).post(
        f"/u/{token}", data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200
    assert _consents(app, shop, member.customer_id)[0] == "withdrawn"
    # Without the old key among the fallbacks the token is refused (and nothing breaks).
    with app.app_context():
        app.config["SECRET_KEY_FALLBACKS"] = []
        with pytest.raises(links.LinkInvalid):
            links.verify_unsubscribe_token(token)


def test_new_links_are_signed_with_the_newest_key(app, shop):
    member = _member(app, shop)
    app.config.update(SECRET_KEY="newest", SECRET_KEY_FALLBACKS=["older"])
    with app.app_context():
        token = links.prefs_token(member.customer_id, shop["id"])
        app.config["SECRET_KEY_FALLBACKS"] = []
        assert links.verify_prefs_token(token).customer_id == member.customer_id
