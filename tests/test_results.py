"""Campaign results and the dashboard: every message counted once under its outcome,
and a return visit credited to the latest message the customer got before it —
the same on SQLite and PostgreSQL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest
from flask import render_template

from stampweb.campaigns import charts, results
from stampweb.extensions import db
from stampweb.models import (
    VISIT_REVERSAL,
    VOUCHER_REDEEMED,
    Campaign,
    Message,
    MessageEvent,
    Visit,
    Voucher,
)
from stampweb.tenancy import tenant

from .factories import gen_customer, gen_merchant, login

T = datetime(2026, 3, 2, 10, 0)  # a Monday, naive UTC like every stored time
SVG = "{http://www.w3.org/2000/svg}"


# --- hand-built data -----------------------------------------------------------------


def campaign(merchant_id, name="Spring offer", started_at=T, **fields) -> int:
    with tenant(merchant_id):
        row = Campaign(merchant_id=merchant_id, name=name, status="sent",
                       started_at=started_at, **fields)
        db.session.add(row)
        db.session.commit()
        return row.id


def message(merchant_id, campaign_id, customer_id, status="sent", sent_at=None,
            channel="email", skip_reason=None, events=(), voucher_id=None) -> int:
    with tenant(merchant_id):
        row = Message(merchant_id=merchant_id, campaign_id=campaign_id, customer_id=customer_id,
                      channel=channel, status=status, skip_reason=skip_reason,
                      sent_at=sent_at if status == "sent" else None, voucher_id=voucher_id,
                      created_at=T - timedelta(hours=1))
        db.session.add(row)
        db.session.flush()
        for event in events:
            db.session.add(MessageEvent(merchant_id=merchant_id, message_id=row.id,
                                        status=event, created_at=T))
        db.session.commit()
        return row.id


def visit(merchant_id, customer_id, at, reversed_=False) -> int:
    with tenant(merchant_id):
        row = Visit(merchant_id=merchant_id, customer_id=customer_id, stamps=1, created_at=at)
        db.session.add(row)
        db.session.flush()
        if reversed_:
            db.session.add(Visit(merchant_id=merchant_id, customer_id=customer_id,
                                 kind=VISIT_REVERSAL, stamps=-1, reverses_id=row.id,
                                 reason="mistake", created_at=at + timedelta(minutes=1)))
        db.session.commit()
        return row.id


def voucher(merchant_id, customer_id, redeemed=False) -> int:
    with tenant(merchant_id):
        row = Voucher(merchant_id=merchant_id, customer_id=customer_id, kind="campaign",
                      title="Free cookie",
                      status=VOUCHER_REDEEMED if redeemed else "active",
                      redeemed_at=T + timedelta(days=1) if redeemed else None)
        db.session.add(row)
        db.session.commit()
        return row.id


def customers(merchant, n):
    return [gen_customer(merchant).id for _ in range(n)]


# --- outcomes ---------------------------------------------------------------------------


def test_outcomes_are_counted_per_status_and_skip_reason(app):
    """Targeted = every outbox row; sent, failed, skipped per reason; quiet-hours holds
    count customers held at least once, whether they were sent later or still wait."""
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        c = customers(merchant, 9)
        cid = campaign(mid)
        for customer_id in c[:3]:
            message(mid, cid, customer_id, sent_at=T)
        message(mid, cid, c[3], status="failed")
        message(mid, cid, c[4], status="skipped", skip_reason="no_consent")
        message(mid, cid, c[5], status="skipped", skip_reason="no_consent")
        message(mid, cid, c[6], status="skipped", skip_reason="capped")
        message(mid, cid, c[7], status="skipped", skip_reason="no_address")
        # Held for quiet hours twice, still waiting; and one held then sent.
        message(mid, cid, c[8], status="pending", channel="wallet",
                events=("deferred", "deferred"))
        message(mid, cid, c[0], status="sent", sent_at=T, channel="wallet",
                events=("deferred", "sent"))
        # Another campaign's rows are not this one's.
        message(mid, campaign(mid, name="Other"), c[0], status="failed")

        result = results.campaign_results(mid, cid, now=T + timedelta(days=1))
    assert result.targeted == 10
    assert (result.sent, result.failed, result.skipped, result.waiting) == (4, 1, 4, 1)
    assert result.skipped_by_reason == {"no_consent": 2, "capped": 1, "no_address": 1}
    assert list(result.skipped_by_reason) == ["no_consent", "capped", "no_address"]
    assert result.quiet_hours == 2
    assert result.reached == 3  # customers, not rows: c0 got email and wallet


def test_vouchers_issued_and_redeemed_are_the_campaigns_own(app):
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        c = customers(merchant, 3)
        cid, other = campaign(mid), campaign(mid, name="Other")
        message(mid, cid, c[0], sent_at=T, voucher_id=voucher(mid, c[0], redeemed=True))
        message(mid, cid, c[1], sent_at=T, voucher_id=voucher(mid, c[1]))
        message(mid, cid, c[2], sent_at=T)
        message(mid, other, c[2], sent_at=T, voucher_id=voucher(mid, c[2], redeemed=True))
        voucher(mid, c[2], redeemed=True)  # a reward voucher, no campaign

        result = results.campaign_results(mid, cid)
    assert (result.vouchers_issued, result.vouchers_redeemed) == (2, 1)
    assert result.redemption_rate == 0.5


def test_another_merchants_campaign_is_not_found(app):
    with app.app_context():
        a, b = gen_merchant(), gen_merchant()
        theirs = campaign(b.id)
        with pytest.raises(LookupError):
            results.campaign_results(a.id, theirs)


# --- came back ----------------------------------------------------------------------------


def build_attribution_story(mid, merchant):
    """Two campaigns, A (window 14 days, sent at T) and B (window 7 days, sent at T+2d)."""
    names = ["inside", "too_late", "before", "reversed", "twice", "skipped",
             "a_then_b", "visit_then_b", "both", "b_window_gone"]
    ids = dict(zip(names, customers(merchant, len(names)), strict=True))
    a = campaign(mid, name="A", attribution_days=14)
    b = campaign(mid, name="B", attribution_days=7, started_at=T + timedelta(days=2))
    for name in names:
        if name == "skipped":
            message(mid, a, ids[name], status="skipped", skip_reason="capped")
        else:
            message(mid, a, ids[name], sent_at=T)
    for name in ("a_then_b", "visit_then_b", "both", "b_window_gone"):
        message(mid, b, ids[name], sent_at=T + timedelta(days=2))
    day = timedelta(days=1)
    visit(mid, ids["inside"], T + 3 * day)
    visit(mid, ids["too_late"], T + 15 * day)          # A's window is 14 days
    visit(mid, ids["before"], T - day)
    visit(mid, ids["reversed"], T + 2 * day, reversed_=True)
    visit(mid, ids["twice"], T + day)
    visit(mid, ids["twice"], T + 2 * day)
    visit(mid, ids["skipped"], T + day)                # never got the message
    visit(mid, ids["a_then_b"], T + 3 * day)           # after B: B's, not A's
    visit(mid, ids["visit_then_b"], T + day)           # before B: A's
    visit(mid, ids["both"], T + day)                   # A's ...
    visit(mid, ids["both"], T + 3 * day)               # ... and B's
    visit(mid, ids["b_window_gone"], T + 10 * day)     # B is latest, but its 7 days are over
    return a, b


def check_attribution(application):
    with application.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        a, b = build_attribution_story(mid, merchant)
        now = T + timedelta(days=30)
        result_a = results.campaign_results(mid, a, now=now)
        result_b = results.campaign_results(mid, b, now=now)
        recent = results.recent_campaigns(mid)
    # A: inside, twice, visit_then_b, both.
    assert result_a.came_back == 4
    assert result_a.reached == 9
    assert result_a.conversion_rate == pytest.approx(4 / 9)
    # B: a_then_b, both.
    assert result_b.came_back == 2
    assert result_b.reached == 4
    assert not result_a.counting
    # The dashboard's list, newest first, uses the same rule, each campaign with its window.
    assert [(s.name, s.reached, s.came_back) for s in recent] == [("B", 4, 2), ("A", 9, 4)]


def test_came_back_is_credited_to_the_latest_message_sqlite(app):
    """Visits inside the window count once per customer; too late, before the message,
    reversed, or never sent do not; a visit after two campaigns counts for the later one."""
    check_attribution(app)


@pytest.mark.integration
def test_came_back_is_credited_to_the_latest_message_postgres(pg_app):
    """The same story on PostgreSQL: the date arithmetic and subqueries are portable."""
    check_attribution(pg_app)


def test_window_still_open_is_flagged(app):
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        [customer_id] = customers(merchant, 1)
        cid = campaign(mid, attribution_days=14)
        message(mid, cid, customer_id, sent_at=T)
        result = results.campaign_results(mid, cid, now=T + timedelta(days=3))
    assert result.counting
    assert result.counting_until == T + timedelta(days=14)


# --- the dashboard ------------------------------------------------------------------------


def build_dashboard_story(merchant):
    """Members in every activity band, and visits around week edges in local time."""
    mid = merchant.id
    now = datetime(2026, 3, 11, 12, 0)  # Wednesday
    for days_ago in (1, 29):
        gen_customer(merchant, last_visit_at=now - timedelta(days=days_ago))
    for days_ago in (31, 60, 89):
        gen_customer(merchant, last_visit_at=now - timedelta(days=days_ago))
    gen_customer(merchant, last_visit_at=now - timedelta(days=91))
    gen_customer(merchant)  # never visited
    regular = gen_customer(merchant).id
    # New York is UTC-4 from 8 March 2026 (DST): local Monday 9 March starts 04:00 UTC.
    visit(mid, regular, datetime(2026, 3, 9, 3, 30))    # Sunday 23:30 local: week of 2 Mar
    visit(mid, regular, datetime(2026, 3, 9, 4, 30))    # Monday 00:30 local: this week
    visit(mid, regular, datetime(2026, 3, 10, 15, 0))   # this week
    visit(mid, regular, datetime(2026, 3, 10, 16, 0), reversed_=True)
    visit(mid, regular, datetime(2025, 12, 15, 12, 0))  # 13 weeks ago: not shown
    return now


def test_dashboard_counts_members_by_how_recently_they_visited(app):
    """Active: visited in the last 30 days; at risk: 30–90 days ago; lapsed: longer."""
    with app.app_context():
        merchant = gen_merchant(timezone="America/New_York")
        now = build_dashboard_story(merchant)
        summary = results.dashboard(merchant.id, now=now)
    assert (summary.members, summary.active, summary.at_risk, summary.lapsed,
            summary.never_visited) == (8, 2, 3, 1, 2)


def test_visits_per_week_follow_the_merchants_time_zone(app):
    """12 local Monday-to-Sunday weeks, oldest first; reversed visits left out."""
    with app.app_context():
        merchant = gen_merchant(timezone="America/New_York")
        now = build_dashboard_story(merchant)
        weeks = results.visits_per_week(merchant.id, now=now)
    assert len(weeks) == 12
    assert weeks[-1].starts_on.isoformat() == "2026-03-09"
    assert weeks[0].starts_on.isoformat() == "2025-12-22"
    assert [w.visits for w in weeks[-2:]] == [1, 2]
    assert sum(w.visits for w in weeks) == 3


@pytest.mark.integration
def test_dashboard_numbers_on_postgres(pg_app):
    with pg_app.app_context():
        merchant = gen_merchant(timezone="America/New_York")
        now = build_dashboard_story(merchant)
        summary = results.dashboard(merchant.id, now=now)
    assert (summary.members, summary.active, summary.at_risk, summary.lapsed) == (8, 2, 3, 1)
    assert [w.visits for w in summary.weeks[-2:]] == [1, 2]


def test_dashboard_page_shows_the_numbers_and_a_chart(app, client):
    with app.app_context():
        merchant = gen_merchant("dash")
        mid = merchant.id
        [customer_id] = customers(merchant, 1)
        cid = campaign(mid, name="Rainy day", started_at=datetime.now() - timedelta(days=1))
        message(mid, cid, customer_id, sent_at=datetime.now() - timedelta(days=1))
    login(client, "owner@dash.test")
    page = client.get("/admin/")
    assert page.status_code == 200
    assert 'id="stat-members">1<' in page.text
    assert "last visit 30–90 days ago" in page.text
    assert 'class="chart column-chart"' in page.text
    assert "Rainy day" in page.text
    assert " style=" not in page.text.split("<main", 1)[1]


def test_staff_cannot_open_the_dashboard(app, client):
    from .factories import gen_user

    with app.app_context():
        merchant = gen_merchant()
        user = gen_user(merchant, role="staff")
        email = user.email
    login(client, email)
    assert client.get("/admin/").status_code == 403


# --- charts -----------------------------------------------------------------------------------


def parse_svg(markup) -> ET.Element:
    root = ET.fromstring(str(markup))
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    labelled = root.get("aria-labelledby").split()
    ids = {el.get("id") for el in root.iter() if el.get("id")}
    assert set(labelled) <= ids, "aria-labelledby points at the title and description"
    assert all(el.get("style") is None for el in root.iter()), "the CSP forbids style attributes"
    width = float(root.get("viewBox").split()[2])
    assert width <= 360
    return root


def test_bar_chart_is_valid_accessible_svg(app):
    bars = [charts.Bar("Sent", 120, "ok"), charts.Bar("Skipped: <no consent> & co", 7),
            charts.Bar("Failed", 0, "bad")]
    root = parse_svg(charts.bar_chart(bars, title="Messages by outcome"))
    assert root.find(f"{SVG}title").text == "Messages by outcome"
    assert "Sent: 120" in root.find(f"{SVG}desc").text
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Skipped: <no consent> & co" in texts  # escaped in the markup, intact when parsed
    widths = [float(r.get("width")) for r in root.iter(f"{SVG}rect")
              if r.get("fill") != charts.TRACK]
    assert widths[0] > widths[1] > widths[2] == 0
    assert all(0 <= w <= 320 for w in widths)
    # Mirrored for right-to-left pages, and still valid.
    parse_svg(charts.bar_chart(bars, title="x", rtl=True))


def test_column_chart_is_valid_accessible_svg(app):
    columns = [(f"W{i}", i * 3) for i in range(12)]
    root = parse_svg(charts.column_chart(columns, title="Visits per week"))
    assert len(list(root.iter(f"{SVG}rect"))) == 12
    labels = [t.text for t in root.iter(f"{SVG}text") if t.text.startswith("W")]
    assert labels[-1] == "W11" and len(labels) == 4  # every third week, newest labelled
    parse_svg(charts.column_chart([], title="No data"))


def test_campaign_results_partial_renders_numbers_and_charts(app):
    """The partial campaign pages include shows the outcomes with two valid SVG charts."""
    with app.app_context():
        merchant = gen_merchant()
        mid = merchant.id
        c = customers(merchant, 3)
        cid = campaign(mid, attribution_days=14)
        message(mid, cid, c[0], sent_at=T)
        message(mid, cid, c[1], status="skipped", skip_reason="no_consent")
        message(mid, cid, c[2], status="failed")
        visit(mid, c[0], T + timedelta(days=2))
        result = results.campaign_results(mid, cid, now=T + timedelta(days=30))
        with app.test_request_context("/admin/"):
            html = render_template("merchant/_results_campaign.html", results=result,
                                   campaign=None)
    assert "No consent" in html
    assert "Came back" in html
    svgs = html.count("<svg")
    assert svgs == 2
    for chunk in html.split("<svg")[1:]:
        parse_svg("<svg" + chunk.split("</svg>")[0] + "</svg>")


# --- in a browser --------------------------------------------------------------------------------


@pytest.mark.browser
def test_dashboard_fits_a_phone_and_passes_axe(app, live_server, browser_page):
    """At 360 px the dashboard with its chart and campaign list has no sideways scroll,
    no CSP or script errors, and nothing serious for axe."""
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
        merchant = gen_merchant("phone", name="Café Crème")
        mid = merchant.id
        now = datetime.now()
        ids = []
        for weeks_ago in range(6):
            at = now - timedelta(weeks=weeks_ago * 2, hours=1)
            ids.append(gen_customer(merchant, last_visit_at=at).id)
            visit(mid, ids[-1], at)
        cid = campaign(mid, name="A rather long campaign name for a small screen",
                       started_at=now - timedelta(days=2))
        for customer_id in ids:
            message(mid, cid, customer_id, sent_at=now - timedelta(days=2))
    server = live_server(app)
    login_in_browser(browser_page, server.url, "owner@phone.test")
    browser_page.goto(server.url + "/admin/")
    assert browser_page.locator("svg.column-chart").count() == 1
    screenshot(browser_page, "dashboard")
    assert_no_horizontal_scroll(browser_page)
    violations = serious(run_axe(browser_page))
    assert not violations, axe_report(violations)
    assert_no_browser_errors(browser_page)
