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

from .factories import card_of, gen_customer, gen_merchant, gen_user, login


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
    assert "Stamp reversed" in text and "Stamp" in text
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
