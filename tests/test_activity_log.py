"""The activity log page and its CSV export: who stamped, who reversed and why,
for managers of this merchant only."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.loyalty import stamping
from stampweb.models import User
from stampweb.tenancy import tenant

from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, gen_user, login


@pytest.fixture
def shop(app):
    """A cafe with a manager, a barista, and a stamp the barista reversed with a reason;
    and a second cafe with a stamp of its own."""
    with app.app_context():
        merchant = gen_merchant("bean", name="Bean There")
        gen_user(merchant, "manager", "boss@bean.test")
        staff = gen_user(merchant, "staff", "barista@bean.test")
        card = card_of(gen_customer(merchant, first_name="Ada", email="ada@example.com"))
        merchant_id, staff_id, card_id = merchant.id, staff.id, card.id
        stamped = stamping.record_stamps(
            merchant_id, card_id, stamps=2, staff_user_id=staff_id, device="Pixel 8 Chrome",
            ip="203.0.113.7",
        )
        stamping.undo_stamp(
            merchant_id, stamped.visit_id, staff_user_id=staff_id,
            reason="=HYPERLINK(\"http://evil.test\") wrong card", device="Pixel 8 Chrome",
        )
        other = gen_merchant("rival", name="Rival Roasters")
        rival_staff = gen_user(other, "staff", "barista@rival.test")
        gen_user(other, "manager", "boss@rival.test")
        rival_card = card_of(gen_customer(other, first_name="Grace", email="grace@example.com"))
        stamping.record_stamps(other.id, rival_card.id, staff_user_id=rival_staff.id,
                               device="Rival tablet")
    return {"merchant_id": merchant_id}


def test_managers_see_who_stamped_and_who_reversed_why(client, shop):
    login(client, "boss@bean.test")
    page = client.get("/admin/activity")
    assert page.status_code == 200
    text = page.text
    assert "Stamp undone" in text and "Stamp" in text
    assert "barista@bean.test" in text
    assert "wrong card" in text and "Pixel 8 Chrome" in text
    # Another merchant's activity never shows.
    assert "barista@rival.test" not in text and "Rival tablet" not in text


def test_the_filter_keeps_one_kind_of_entry(client, shop):
    login(client, "boss@bean.test")
    page = client.get("/admin/activity?action=stamp.undo")
    assert "wrong card" in page.text
    assert page.text.count("<tr>") == 2  # the header row and the reversal


def test_export_has_every_entry_with_staff_device_time_and_reason(client, shop):
    login(client, "boss@bean.test")
    response = client.get("/admin/activity/export.csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    by_action = {row["action"]: row for row in rows}
    stamp, reversal = by_action["stamp"], by_action["stamp.undo"]
    assert stamp["user_email"] == "barista@bean.test"
    assert stamp["device"] == "Pixel 8 Chrome" and stamp["ip"] == "203.0.113.7"
    assert stamp["time_utc"].endswith("Z")
    assert reversal["user_email"] == "barista@bean.test"
    # A spreadsheet shows the reason as text; it never runs it as a formula.
    assert reversal["reason"].startswith("'=HYPERLINK")
    assert all("rival" not in value for row in rows for value in row.values())
    # Downloading the log is itself in the log.
    again = client.get("/admin/activity/export.csv").get_data(as_text=True)
    assert "audit.export" in again


def test_staff_cannot_read_the_log(client, shop):
    login(client, "barista@bean.test")
    assert client.get("/admin/activity").status_code == 403
    assert client.get("/admin/activity/export.csv").status_code == 403


def test_the_log_speaks_the_managers_language(client, shop, app):
    with app.app_context(), tenant(shop["merchant_id"]):
        user = db.session.scalar(select(User).where(User.email == "boss@bean.test"))
        user.locale = "ru"  # the manager's own language setting (/account/language)
        db.session.commit()
    login(client, "boss@bean.test")
    page = client.get("/admin/activity")
    assert "Штамп отменён" in page.text


# --- a manager reverses a stamp after the staff's 10 minutes ------------------------


@pytest.fixture
def old_stamp(app):
    """A card whose latest stamp was given two hours ago, past the staff's undo window."""
    from datetime import timedelta

    from stampweb.models import utcnow

    with app.app_context():
        merchant = gen_merchant("kiosk", name="Kiosk")
        gen_user(merchant, "manager", "boss@kiosk.test")
        staff = gen_user(merchant, "staff", "barista@kiosk.test")
        customer = gen_customer(merchant, first_name="Lin", email="lin@example.com")
        card = card_of(customer)
        ids = {"merchant_id": merchant.id, "customer_id": customer.id, "card_id": card.id,
               "staff_id": staff.id}
        then = utcnow() - timedelta(hours=2)
        stamping.record_stamps(ids["merchant_id"], ids["card_id"], staff_user_id=ids["staff_id"],
                               now=then - timedelta(days=1))
        done = stamping.record_stamps(ids["merchant_id"], ids["card_id"], stamps=2,
                                      staff_user_id=ids["staff_id"], now=then)
        ids["visit_id"] = done.visit_id
    return ids


def _stamps(app, ids) -> int:
    from stampweb.models import Card

    with app.app_context(), tenant(ids["merchant_id"]):
        return db.session.get(Card, ids["card_id"]).stamps


def _reverse(client, ids, **data):
    page = client.get(f"/admin/customers/{ids['customer_id']}")
    token = csrf_token_from(page.text)
    return client.post(f"/admin/customers/{ids['customer_id']}/reverse-stamp",
                       data={"csrf_token": token, "visit_id": ids["visit_id"], **data})


def test_staff_can_no_longer_undo_but_a_manager_reverses_with_a_reason(app, client, old_stamp):
    with app.app_context(), pytest.raises(stamping.StampRefused) as refused:
        stamping.undo_stamp(old_stamp["merchant_id"], old_stamp["visit_id"],
                            staff_user_id=old_stamp["staff_id"])
    assert refused.value.reason_code == "too_late"
    assert _stamps(app, old_stamp) == 3

    login(client, "boss@kiosk.test")
    page = client.get(f"/admin/customers/{old_stamp['customer_id']}")
    assert "Reverse the latest stamp" in page.text
    answer = _reverse(client, old_stamp, reason="Stamped the wrong customer")
    assert answer.status_code == 303
    assert _stamps(app, old_stamp) == 1
    export = client.get("/admin/activity/export.csv").get_data(as_text=True)
    row = next(r for r in csv.DictReader(io.StringIO(export.lstrip("\ufeff")))
               if r["action"] == "stamp.reverse")
    assert row["user_email"] == "boss@kiosk.test"
    assert row["reason"] == "Stamped the wrong customer"
    assert row["time_utc"] and row["subject_id"] == str(old_stamp["visit_id"])
    # The page now offers the stamp before it, and the same stamp cannot go twice.
    again = _reverse(client, old_stamp, reason="twice")
    assert again.status_code == 422 and "already undone" in again.text
    assert _stamps(app, old_stamp) == 1


def test_a_reversal_without_a_reason_is_refused_next_to_the_field(app, client, old_stamp):
    login(client, "boss@kiosk.test")
    answer = _reverse(client, old_stamp, reason="   ")
    assert answer.status_code == 422
    assert 'id="reason-error"' in answer.text and "Say why the stamp is reversed." in answer.text
    assert _stamps(app, old_stamp) == 3


def test_staff_cannot_reverse_and_another_merchant_cannot_reach_the_stamp(app, client, old_stamp):
    login(client, "barista@kiosk.test")
    answer = client.post(f"/admin/customers/{old_stamp['customer_id']}/reverse-stamp",
                         data={"visit_id": old_stamp["visit_id"], "reason": "no"})
    assert answer.status_code in (400, 403)
    client = app.test_client()  # a manager of another shop, on their own phone
    with app.app_context():
        rival = gen_merchant("rival", name="Rival")
        gen_user(rival, "manager", "boss@rival.test")
        own = gen_customer(rival, first_name="Own", email="own@example.com")
        card_of(own)
        own_id = own.id
    login(client, "boss@rival.test")
    # Their own customer's page, with the other shop's stamp id: refused, nothing changes.
    page = client.get(f"/admin/customers/{own_id}")
    answer = client.post(f"/admin/customers/{own_id}/reverse-stamp",
                         data={"csrf_token": csrf_token_from(page.text),
                               "visit_id": old_stamp["visit_id"], "reason": "mine now"})
    assert answer.status_code == 422
    assert client.get(f"/admin/customers/{old_stamp['customer_id']}").status_code == 404
    assert _stamps(app, old_stamp) == 3
