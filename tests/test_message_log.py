"""The message log: every outbox row, newest first, narrowed by any filter, paged by
key, each with its status history in the merchant's time zone — and never another
merchant's."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from stampweb.campaigns import message_log
from stampweb.extensions import db
from stampweb.models import Campaign, Message, MessageEvent
from stampweb.tenancy import tenant

from .factories import gen_customer, gen_merchant, login

T = datetime(2026, 3, 2, 10, 0)  # naive UTC


def make_campaign(mid, name) -> int:
    with tenant(mid):
        row = Campaign(merchant_id=mid, name=name, status="sent", started_at=T)
        db.session.add(row)
        db.session.commit()
        return row.id


def make_message(mid, campaign_id, customer_id, *, status="sent", channel="email",
                 skip_reason=None, created_at=T, events=(), **fields) -> int:
    with tenant(mid):
        row = Message(merchant_id=mid, campaign_id=campaign_id, customer_id=customer_id,
                      channel=channel, status=status, skip_reason=skip_reason,
                      created_at=created_at, sent_at=created_at if status == "sent" else None,
                      **fields)
        db.session.add(row)
        db.session.flush()
        for offset, (event_status, detail) in enumerate(events):
            db.session.add(MessageEvent(merchant_id=mid, message_id=row.id, status=event_status,
                                        detail=detail,
                                        created_at=created_at + timedelta(minutes=offset)))
        db.session.commit()
        return row.id


def build_log(merchant):
    """Two campaigns, messages on both channels with every outcome, over three days."""
    mid = merchant.id
    ana = gen_customer(merchant, first_name="Ana", last_name="Lima", email="ana@example.com").id
    bo = gen_customer(merchant, first_name="Bo", last_name="Chen", email="bo@shop.example").id
    spring = make_campaign(mid, "Spring")
    rainy = make_campaign(mid, "Rainy day")
    ids = {
        "ana_spring_email": make_message(mid, spring, ana, to_address="ana@example.com",
                                         email_message_id="<m1.c1@loyalty.example>",
                                         attempts=2, events=(("retry", "451 busy"),
                                                             ("sent", None))),
        "ana_spring_wallet": make_message(mid, spring, ana, channel="wallet",
                                          status="pending", created_at=T + timedelta(days=1),
                                          events=(("deferred", "quiet hours"),)),
        "bo_spring_email": make_message(mid, spring, bo, status="skipped",
                                        skip_reason="no_consent",
                                        events=(("skipped", "no_consent"),)),
        "bo_rainy_email": make_message(mid, rainy, bo, status="failed",
                                       created_at=T + timedelta(days=2),
                                       last_error="550 no such user"),
    }
    return {"spring": spring, "rainy": rainy, **ids}


def search(mid, **filters):
    page = message_log.search_messages(mid, message_log.LogFilters(**filters))
    return [row.message.id for row in page.rows]


def test_filters_narrow_the_log(app):
    """Campaign, channel, status, skip reason, customer name/email and dates each filter."""
    with app.app_context():
        merchant = gen_merchant(timezone="Asia/Tokyo")
        mid = merchant.id
        ids = build_log(merchant)
        everything = search(mid)
        assert everything == sorted(everything, reverse=True) and len(everything) == 4
        assert set(search(mid, campaign_id=ids["rainy"])) == {ids["bo_rainy_email"]}
        assert search(mid, channel="wallet") == [ids["ana_spring_wallet"]]
        assert search(mid, status="failed") == [ids["bo_rainy_email"]]
        assert search(mid, skip_reason="no_consent") == [ids["bo_spring_email"]]
        assert set(search(mid, q="ana")) == {ids["ana_spring_email"], ids["ana_spring_wallet"]}
        assert set(search(mid, q="chen")) == {ids["bo_spring_email"], ids["bo_rainy_email"]}
        assert set(search(mid, q="bo@shop")) == {ids["bo_spring_email"], ids["bo_rainy_email"]}
        assert search(mid, q="%") == []
        # T is 19:00 on 2 March in Tokyo; T+1d is 3 March; T+2d is 4 March.
        assert set(search(mid, date_from=date(2026, 3, 3))) == {
            ids["ana_spring_wallet"], ids["bo_rainy_email"]}
        assert set(search(mid, date_from=date(2026, 3, 3), date_to=date(2026, 3, 3))) == {
            ids["ana_spring_wallet"]}
        assert set(search(mid, date_to=date(2026, 3, 2))) == {
            ids["ana_spring_email"], ids["bo_spring_email"]}
        assert search(mid, campaign_id=ids["spring"], channel="email", status="sent",
                      q="ana lima") == [ids["ana_spring_email"]]


def test_pages_by_key_cover_every_message_once(app):
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        campaign_id = make_campaign(mid, "Big")
        created = [make_message(mid, campaign_id, gen_customer(merchant).id) for _ in range(7)]
        seen, before = [], None
        while True:
            page = message_log.search_messages(mid, message_log.LogFilters(), before=before,
                                               limit=3)
            seen += [row.message.id for row in page.rows]
            if page.next_before is None:
                break
            before = page.next_before
    assert seen == sorted(created, reverse=True)


def test_detail_has_the_status_history_oldest_first(app):
    with app.app_context():
        merchant = gen_merchant()
        ids = build_log(merchant)
        other = gen_merchant()
        assert message_log.message_detail(other.id, ids["ana_spring_email"]) is None
        detail = message_log.message_detail(merchant.id, ids["ana_spring_email"])
        assert [e.status for e in detail.events] == ["retry", "sent"]
        assert detail.campaign.name == "Spring"
        assert detail.customer.first_name == "Ana"


# --- over HTTP ------------------------------------------------------------------------------


def test_log_page_lists_and_filters(app, client):
    with app.app_context():
        merchant = gen_merchant("logs")
        ids = build_log(merchant)
    login(client, "owner@logs.test")
    page = client.get("/admin/messages")
    assert page.status_code == 200
    assert "Ana Lima" in page.text and "Bo Chen" in page.text
    assert f'/admin/messages/{ids["ana_spring_email"]}' in page.text
    filtered = client.get(f"/admin/messages?campaign={ids['rainy']}&status=failed")
    assert "Bo Chen" in filtered.text and "Ana Lima" not in filtered.text
    # htmx gets only the rows.
    fragment = client.get("/admin/messages?q=ana", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith("<div id=\"message-rows\"")
    assert "<html" not in fragment.text and "Bo Chen" not in fragment.text


def test_a_bad_date_is_reported_next_to_its_field_and_kept(app, client):
    with app.app_context():
        gen_merchant("dates")
    login(client, "owner@dates.test")
    page = client.get("/admin/messages?from=2026-13-45&channel=email")
    assert page.status_code == 200
    assert 'id="from-error"' in page.text
    assert 'value="2026-13-45"' in page.text
    assert '<option value="email" selected>' in page.text


def test_message_page_shows_history_in_the_merchants_time_zone(app, client):
    """Times in the merchant's zone (Tokyo: 10:00 UTC is 7 pm), the Message-ID,
    attempts and last error; htmx gets the history fragment alone."""
    with app.app_context():
        merchant = gen_merchant("tokyo", timezone="Asia/Tokyo")
        ids = build_log(merchant)
    login(client, "owner@tokyo.test")
    page = client.get(f"/admin/messages/{ids['ana_spring_email']}")
    assert page.status_code == 200
    assert "&lt;m1.c1@loyalty.example&gt;" in page.text
    assert "2026, 7:00:00" in page.text and "2026, 10:00:00" not in page.text
    assert "Will retry" in page.text and "451 busy" in page.text
    failed = client.get(f"/admin/messages/{ids['bo_rainy_email']}",
                        headers={"HX-Request": "true"})
    assert "550 no such user" in failed.text and "<html" not in failed.text


def test_another_merchants_message_is_404(app, client):
    with app.app_context():
        gen_merchant("mine")
        theirs = build_log(gen_merchant("theirs"))
    login(client, "owner@mine.test")
    assert client.get(f"/admin/messages/{theirs['ana_spring_email']}").status_code == 404
    listing = client.get(f"/admin/messages?campaign={theirs['spring']}")
    assert "Ana Lima" not in listing.text


# --- in a browser ---------------------------------------------------------------------------


@pytest.mark.browser
def test_log_opens_a_message_in_place_on_a_phone(app, live_server, browser_page):
    """At 360 px: filters and rows fit; tapping a row loads its history in place (htmx)."""
    from playwright.sync_api import expect

    from .browser import (
        assert_no_browser_errors,
        assert_no_horizontal_scroll,
        axe_report,
        login_in_browser,
        run_axe,
        screenshot,
        serious,
    )

    with app.app_context():
        merchant = gen_merchant("phonelog")
        build_log(merchant)
    server = live_server(app)
    page = browser_page
    login_in_browser(page, server.url, "owner@phonelog.test")
    page.goto(server.url + "/admin/messages")
    assert_no_horizontal_scroll(page)
    row = page.locator(".message-log details").filter(has_text="Rainy day")
    row.locator("summary").click()
    row.get_by_text("550 no such user").wait_for()
    assert row.locator("dl.headers").count() == 1
    screenshot(page, "message-log-open")
    assert_no_horizontal_scroll(page)
    violations = serious(run_axe(page))
    assert not violations, axe_report(violations)
    page.get_by_text("More filters").click()
    page.select_option("#status", "skipped")
    # expect() polls from Python; a string wait_for_function is eval'd in the
    # page, which the page's CSP (no unsafe-eval) refuses once it has to poll.
    expect(page.locator(".message-log details")).to_have_count(1)
    assert "Bo Chen" in page.locator("#message-rows").inner_text()
    assert_no_browser_errors(page)
