"""The whole loyalty loop in headless Chromium, on phones: poster → join → card →
staff stamps to the reward → redeem → stamp → undo → the customer's card shows it,
then the customer's preferences and the one-click unsubscribe.

Three people, three browser contexts (own cookies): the owner, the customer and
a staff member. Every page they pass through fits 360 px without sideways
scrolling and reports no console errors or CSP violations; the customer's and
staff's pages have no serious or critical axe-core violations. Screenshots of
each step land in test-artifacts/screenshots/<test>/.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from stampweb.extensions import db
from stampweb.links import unsubscribe_url
from stampweb.loyalty import customers as customer_service
from stampweb.loyalty.stamping import card_by_code, staff_card_url
from stampweb.models import (
    CONSENT_GRANTED,
    CONSENT_PENDING,
    CONSENT_WITHDRAWN,
    Customer,
    Program,
    Visit,
    Voucher,
)
from stampweb.tenancy import tenant

from .browser import (
    assert_no_browser_errors,
    assert_no_horizontal_scroll,
    axe_report,
    login_in_browser,
    run_axe,
    screenshot,
    serious,
)
from .factories import gen_customer, gen_merchant, gen_user, login

STAMPS_REQUIRED = 3


@pytest.fixture(
    params=[
        pytest.param("app", id="sqlite"),
        pytest.param("pg_app", id="postgres", marks=pytest.mark.integration),
    ]
)
def loop_app(request):
    """The unit app (SQLite, fakeredis), or the app on real PostgreSQL and Redis."""
    return request.getfixturevalue(request.param)


def _quick_program(merchant_id: int) -> None:
    """A 3-stamp card with no cooldown, so the loop reaches the reward in three taps."""
    with tenant(merchant_id):
        program = db.session.scalars(select(Program)).one()
        program.stamps_required = STAMPS_REQUIRED
        program.stamp_cooldown_minutes = 0
        program.reward_text = "a free coffee"
        db.session.commit()


def check_page(page: Page, step: str, axe: bool = False) -> None:
    """Screenshot the page; it fits 360 px, the browser saw no errors, and (for the
    pages customers and staff use) axe finds nothing serious or critical."""
    screenshot(page, step)
    assert_no_horizontal_scroll(page)
    assert_no_browser_errors(page)
    if axe:
        violations = serious(run_axe(page))
        assert not violations, f"{step}:\n{axe_report(violations)}"


def _stamp_count(page: Page):
    return page.locator("#card .stamp-count strong")


@pytest.mark.browser
def test_the_whole_loop_on_phones(loop_app, live_server, new_page):
    """Owner prints the poster; a customer joins from its link and gets a card; staff
    open the card from its QR URL, stamp to the reward, see the reward-ready badge,
    redeem it after confirming, stamp again and undo; the customer's card then shows
    the right stamps and history; the owner sees the visits on the customer's page."""
    app = loop_app
    with app.app_context():
        merchant = gen_merchant("loopcafe", name="Loop Café")
        merchant_id = merchant.id
        staff_email = gen_user(merchant, "staff").email
        _quick_program(merchant_id)
    server = live_server(app)

    # The owner opens the poster and reads the join link printed on it.
    owner = new_page("phone")
    login_in_browser(owner, server.url, "owner@loopcafe.test")
    owner.goto(server.url + "/admin/poster")
    check_page(owner, "01-owner-poster")
    join_url = owner.locator(".poster-url").inner_text().strip()
    assert join_url == f"{server.url}/join/loopcafe"

    # The customer scans it and joins.
    customer = new_page("phone")
    customer.goto(join_url)
    expect(customer.locator("h1")).to_contain_text("Loop Café")
    check_page(customer, "02-customer-join", axe=True)
    form = customer.locator("form.join-form")
    form.get_by_label("First name").fill("Dana")
    form.get_by_label("Last name (optional)").fill("Levi")
    form.get_by_label("Email", exact=True).fill("dana@example.com")
    form.get_by_label("Birthday: day").select_option("14")
    form.get_by_label("Birthday: month").select_option(label="March")
    form.get_by_label("Language").select_option("en")
    form.locator("input[name=email_marketing]").check()
    with customer.expect_navigation():
        form.get_by_role("button", name="Get my card").click()
    assert re.search(r"/card/[^/]+$", customer.url), customer.url
    card_page_url = customer.url
    expect(customer.locator("h1")).to_have_text("Hello Dana")
    expect(customer.locator(".flash-success")).to_contain_text("Welcome")
    check_page(customer, "03-customer-card", axe=True)
    code = customer.locator(".card-code strong").inner_text().strip()

    with app.app_context():
        card = card_by_code(merchant_id, code)
        staff_url = staff_card_url(card)
        with tenant(merchant_id):
            joined = db.session.scalars(select(Customer)).one()
            assert (joined.first_name, joined.email) == ("Dana", "dana@example.com")
            assert (joined.birthday_day, joined.birthday_month) == (14, 3)
            # Double opt-in: the tick asks for a confirmation, it does not grant yet.
            assert joined.email_consent == CONSENT_PENDING
    assert staff_url == f"{server.url}/staff/card/{code}"

    # Staff scan the QR code: their phone opens the staff card (after logging in).
    counter = new_page("phone")
    login_in_browser(counter, server.url, staff_email)
    counter.goto(staff_url)
    expect(counter.locator("#card-name")).to_have_text("Dana Levi")
    check_page(counter, "04-staff-card", axe=True)

    add_stamp = counter.get_by_role("button", name="Add stamp")
    for stamped in range(1, STAMPS_REQUIRED):
        add_stamp.click()
        expect(_stamp_count(counter)).to_have_text(str(stamped))
        expect(counter.locator("#card .flash-success")).to_contain_text(
            f"Stamped: {stamped} of {STAMPS_REQUIRED}"
        )
    add_stamp.click()
    expect(counter.locator("#card .flash-success")).to_contain_text("reward issued")
    expect(counter.locator("#card .badge-reward")).to_be_visible()
    voucher = counter.locator("#card .voucher", has_text="a free coffee")
    expect(voucher).to_be_visible()
    check_page(counter, "05-staff-reward-ready", axe=True)

    # Redeeming asks first; dismissing changes nothing, accepting redeems.
    counter.once("dialog", lambda dialog: dialog.dismiss())
    voucher.get_by_role("link", name="Redeem").click()
    expect(voucher).to_be_visible()
    counter.once("dialog", lambda dialog: dialog.accept())
    voucher.get_by_role("link", name="Redeem").click()
    expect(counter.locator("#card .flash-success")).to_contain_text("Redeemed: a free coffee")
    expect(counter.locator("#card .voucher")).to_have_count(0)
    expect(counter.locator("#card .badge-reward")).to_have_count(0)
    check_page(counter, "06-staff-redeemed")

    add_stamp.click()
    expect(_stamp_count(counter)).to_have_text("1")
    check_page(counter, "07-staff-stamped-again")
    counter.once("dialog", lambda dialog: dialog.accept())
    counter.get_by_role("button", name="Undo last stamp").click()
    expect(counter.locator("#card .flash-success")).to_contain_text("The last stamp was undone")
    expect(_stamp_count(counter)).to_have_text("0")
    check_page(counter, "08-staff-undone", axe=True)

    # The customer's card, reloaded, tells the same story.
    customer.goto(card_page_url)
    expect(customer.locator("#card-live")).to_contain_text(f"0 of {STAMPS_REQUIRED} stamps")
    expect(customer.locator("#card-live .stamp.filled")).to_have_count(0)
    expect(customer.locator("#card-live .voucher")).to_have_count(0)
    history = customer.locator("#card-live .history li")
    expect(history).to_have_count(STAMPS_REQUIRED + 2)
    expect(history.first).to_contain_text("Stamp taken back (1)")
    for entry in history.all()[1:]:
        expect(entry).to_contain_text("1 stamp")
    check_page(customer, "09-customer-card-after", axe=True)

    with app.app_context(), tenant(merchant_id):
        vouchers = db.session.scalars(select(Voucher)).all()
        assert [(v.kind, v.status) for v in vouchers] == [("reward", "redeemed")]
        kinds = [v.kind for v in db.session.scalars(select(Visit).order_by(Visit.id))]
        assert kinds == ["stamp"] * (STAMPS_REQUIRED + 1) + ["reversal"]

    # The owner finds Dana in the list and sees the visits on her page.
    owner.goto(server.url + "/admin/customers")
    check_page(owner, "10-owner-customers")
    with owner.expect_navigation():
        owner.get_by_role("link", name="Dana Levi").click()
    expect(owner.locator(".timeline")).to_contain_text("Voucher redeemed: a free coffee")
    expect(owner.locator(".timeline")).to_contain_text("Stamp undone (1)")
    expect(owner.locator("#customer-tags")).to_contain_text("No tags.")
    check_page(owner, "11-owner-customer")


@pytest.mark.browser
def test_preferences_and_one_click_unsubscribe(loop_app, live_server, new_page):
    """From the card page the customer opens her preferences, switches email off and
    reminders on and sees it saved; the one-click unsubscribe page's button then
    withdraws every channel, and the preferences page says so."""
    app = loop_app
    with app.app_context():
        merchant = gen_merchant("prefcafe", name="Pref Café")
        merchant_id = merchant.id
        dana = gen_customer(merchant, first_name="Dana", email="dana@example.com")
        with tenant(merchant_id):
            dana.email_consent = CONSENT_GRANTED
            db.session.commit()
            card_token = dana.card.token
        dana_id = dana.id
    server = live_server(app)
    with app.app_context(), tenant(merchant_id):
        unsubscribe = unsubscribe_url(db.session.get(Customer, dana_id))

    page = new_page("phone")
    page.goto(f"{server.url}/card/{card_token}")
    with page.expect_navigation():
        page.get_by_role("link", name="Preferences, my data and unsubscribe").click()
    email = page.locator("input[name=email_marketing]")
    reminders = page.locator("input[name=reminders]")
    expect(email).to_be_checked()
    check_page(page, "01-preferences", axe=True)

    email.uncheck()
    reminders.check()
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    expect(page.locator(".flash-success")).to_contain_text("Your preferences are saved.")
    expect(page.locator("input[name=email_marketing]")).not_to_be_checked()
    expect(page.locator("input[name=reminders]")).to_be_checked()
    check_page(page, "02-preferences-saved", axe=True)
    with app.app_context(), tenant(merchant_id):
        saved = db.session.get(Customer, dana_id)
        assert (saved.email_consent, saved.reminders_consent) == (
            CONSENT_WITHDRAWN,
            CONSENT_GRANTED,
        )

    # The link in every marketing email: a page with one button, no login, no cookie.
    mail_reader = new_page("phone")
    mail_reader.goto(unsubscribe)
    check_page(mail_reader, "03-unsubscribe", axe=True)
    with mail_reader.expect_navigation():
        mail_reader.get_by_role("button", name="Unsubscribe").click()
    expect(mail_reader.locator("h1")).to_have_text("You are unsubscribed")
    check_page(mail_reader, "04-unsubscribed", axe=True)
    with app.app_context(), tenant(merchant_id):
        gone = db.session.get(Customer, dana_id)
        assert gone.reminders_consent == CONSENT_WITHDRAWN
        assert gone.email_consent == CONSENT_WITHDRAWN

    page.reload()
    expect(page.locator(".prefs-page")).to_contain_text("You get no marketing from Pref Café.")
    expect(page.locator("input[name=reminders]")).not_to_be_checked()
    check_page(page, "05-preferences-after-unsubscribe")


@pytest.mark.browser
def test_admin_top_bar_fits_a_phone_and_marks_the_current_page(app, live_server, new_page):
    """At 360 px the owner's top bar is two rows (brand + Log out, then the nav as one
    strip that scrolls by itself), every link is a 44 px target, the brand leads
    home, the current page is marked aria-current, and the favicon is ours."""
    with app.app_context():
        gen_merchant("barcafe", name="Bar Café")
    server = live_server(app)
    page = new_page("phone")
    login_in_browser(page, server.url, "owner@barcafe.test")
    page.goto(server.url + "/admin/customers")
    check_page(page, "01-customers-360")

    bar = page.locator("header.topbar")
    assert bar.bounding_box()["height"] <= 100
    brand = bar.locator("a.brand")
    assert brand.get_attribute("href") == "/admin/"
    logout = bar.get_by_role("button", name="Log out")
    assert abs(brand.bounding_box()["y"] - logout.bounding_box()["y"]) < 4
    for target in [brand, logout, *bar.locator("nav a").all()]:
        box = target.bounding_box()
        assert box["height"] >= 44 and box["width"] >= 44, (target, box)
    current = bar.locator("nav a[aria-current=page]")
    expect(current).to_have_count(1)
    expect(current).to_have_text("Customers")
    nav_scrolls = page.evaluate(
        "() => { const n = document.querySelector('.topbar nav');"
        " return [n.scrollWidth > n.clientWidth, getComputedStyle(n).overflowX]; }"
    )
    assert nav_scrolls == [True, "auto"]

    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(server.url + icon).headers["content-type"].startswith("image/svg")

    page.goto(server.url + "/admin/locations")
    expect(bar.locator("nav a[aria-current=page]")).to_have_text("Settings")

    wide = new_page("desktop")
    login_in_browser(wide, server.url, "owner@barcafe.test")
    check_page(wide, "02-dashboard-desktop")
    assert wide.locator("header.topbar").bounding_box()["height"] <= 60


@pytest.mark.browser
def test_staff_brand_link_leads_to_the_stamp_page(app, live_server, browser_page):
    """Staff have one page: the brand leads to it (marked current there), Log out sits
    beside it, and there is no nav row to scroll past on the way to stamping."""
    with app.app_context():
        staff_email = gen_user(gen_merchant("staffcafe"), "staff").email
    server = live_server(app)
    login_in_browser(browser_page, server.url, staff_email)
    brand = browser_page.locator("header.topbar a.brand")
    assert brand.get_attribute("href") == "/staff"
    assert brand.get_attribute("aria-current") == "page"
    expect(browser_page.locator("header.topbar nav")).to_have_count(0)
    assert browser_page.locator("header.topbar").bounding_box()["height"] <= 50
    check_page(browser_page, "staff-home", axe=True)


def test_customer_list_filters_by_tag_and_shows_tags(app, client):
    """The customer list narrows to customers carrying the chosen tag and shows each
    row's tags; the service does the same without HTTP, and another merchant's tag
    id matches nobody."""
    from stampweb.campaigns import tags as tag_service

    with app.app_context():
        cafe = gen_merchant("tagcafe")
        other = gen_merchant("othercafe")
        regular = gen_customer(cafe, first_name="Regular")
        gen_customer(cafe, first_name="Casual")
        tag = tag_service.add_manual_tag(cafe.id, regular.id, name="Regulars")
        foreign = tag_service.create_tag(other.id, "Regulars")
        db.session.commit()
        tag_id, foreign_id, cafe_id, regular_id = tag.id, foreign.id, cafe.id, regular.id

        page = customer_service.search_customers(
            cafe_id, customer_service.CustomerFilters(tags=(tag_id,))
        )
        assert [c.id for c in page.customers] == [regular_id]
        assert [t.name for t in page.tags[regular_id]] == ["Regulars"]
        nobody = customer_service.search_customers(
            cafe_id, customer_service.CustomerFilters(tags=(foreign_id,))
        )
        assert nobody.customers == []

    login(client, "owner@tagcafe.test")
    everyone = client.get("/admin/customers").text
    assert "Casual" in everyone and "Regular" in everyone
    assert f'<option value="{tag_id}"' in everyone
    tagged = client.get(f"/admin/customers?tag={tag_id}").text
    assert "Regular Test" in tagged and "Casual" not in tagged
    assert '<span class="badge">Regulars</span>' in tagged
    assert "Casual" not in client.get(f"/admin/customers?tag={foreign_id}").text
