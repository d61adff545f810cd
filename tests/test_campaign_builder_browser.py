"""The campaign builder in a real phone browser: write a campaign, watch the audience
count follow the choice, preview the email, send it and see the progress reach the end."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from stampweb.extensions import db
from stampweb.models import CONSENT_GRANTED, CustomerTag, Tag, utcnow
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
from .factories import gen_customer, gen_merchant
from .test_campaign_sending import run_jobs_inline

pytestmark = pytest.mark.browser


@pytest.fixture
def cafe(app):
    """A café with three members who agreed to email, one of them tagged "regulars"."""
    with app.app_context():
        merchant = gen_merchant("cafe", name="Café Crème")
        members = [
            gen_customer(merchant, first_name=name, email_consent=CONSENT_GRANTED,
                         email_confirmed_at=utcnow())
            for name in ("Ada", "Grace", "Hedy")
        ]
        with tenant(merchant.id):
            tag = Tag(merchant_id=merchant.id, name="regulars")
            db.session.add(tag)
            db.session.flush()
            db.session.add(CustomerTag(merchant_id=merchant.id, customer_id=members[1].id,
                                       tag_id=tag.id))
            db.session.commit()
        return merchant.id


def test_a_manager_builds_previews_and_sends_a_campaign_on_a_phone(
    app, cafe, live_server, browser_page
):
    """At 360 px: the audience count follows the chosen tag, the wallet counter counts,
    bad input is explained beside the field, the saved campaign previews with the
    customer's name in a sandboxed frame, and Send now runs to 100 %. No console
    errors, no sideways scrolling, no serious accessibility violations."""
    server = live_server(app)
    page = browser_page
    login_in_browser(page, server.url, "owner@cafe.test")

    page.goto(server.url + "/admin/campaigns")
    page.get_by_role("link", name="New campaign").click()
    expect(page.locator("h1")).to_have_text("New campaign")
    audience = page.locator("#campaign-audience")
    expect(audience).to_contain_text("3 customers in this audience now.")

    page.get_by_label("Audience").select_option(label="regulars")
    expect(audience).to_contain_text("1 customer in this audience now.")
    expect(audience).to_contain_text("Grace")
    page.get_by_label("Audience").select_option(label="All members")
    expect(audience).to_contain_text("3 customers in this audience now.")

    page.get_by_label("Name").fill("Weekend offer")
    page.get_by_label("Subject").fill("Hi {first_name|friend}, two for one")
    page.get_by_label("Message").fill("**Two for one** this weekend, {first_name|friend}.")
    page.get_by_label("Email and wallet card").check()
    expect(audience).to_contain_text("0 agreed to wallet card messages")
    page.get_by_label("Wallet text").fill("x" * 160)
    expect(page.locator("#wallet_text-count")).to_have_text("160 of 150 characters")
    violations = serious(run_axe(page))
    assert not violations, axe_report(violations)
    screenshot(page, "builder")
    assert_no_horizontal_scroll(page)

    page.get_by_role("button", name="Save draft").click()
    expect(page.locator("#wallet_text-error")).to_contain_text("At most 150")
    expect(page.get_by_label("Subject")).to_have_value("Hi {first_name|friend}, two for one")
    page.get_by_label("Wallet text").fill("Two for one this weekend!")
    # The counter's request goes 300 ms after typing stops; a Save that left the
    # page first would cut it off (a failed request in the browser's log).
    expect(page.locator("#wallet_text-count")).to_have_text("25 of 150 characters")
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator(".flash-success")).to_contain_text("saved as a draft")

    frame = page.frame_locator("iframe.email-preview")
    expect(frame.locator("strong").first).to_have_text("Two for one")
    expect(frame.locator("body")).to_contain_text("this weekend, Ada.")
    expect(page.locator(".preview-subject")).to_have_text("Hi Ada, two for one")
    expect(page.locator("#wallet-back")).to_contain_text("Two for one this weekend!")
    violations = serious(run_axe(page))
    assert not violations, axe_report(violations)
    page.locator("iframe.email-preview").scroll_into_view_if_needed()
    screenshot(page, "preview")
    assert_no_horizontal_scroll(page)

    page.get_by_role("link", name="Send now…").click()
    expect(page.locator("h1")).to_have_text("Send “Weekend offer” now?")
    page.get_by_role("button", name="Send now").click()
    expect(page.locator("#campaign-progress")).to_contain_text("Sending")
    run_jobs_inline(app)
    # The progress panel asks every 2 s; when the campaign is sent the page reloads.
    expect(page.locator("#campaign-progress")).to_contain_text("100%", timeout=10_000)
    expect(page.locator("#campaign-progress .campaign-status")).to_have_text("Sent")
    screenshot(page, "sent")
    assert_no_horizontal_scroll(page)
    # The one error response is the form sent back with its mistake (422), on purpose.
    assert_no_browser_errors(page, allow=(r"status of 422", r"422 POST .*/admin/campaigns/new"))
