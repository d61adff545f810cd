"""The automations page: switches, settings with errors next to the field, preview, tenancy."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select

from stampweb.automations import manage
from stampweb.extensions import db
from stampweb.models import CONSENT_GRANTED, AutomationFlow, MailboxMessage, utcnow
from stampweb.models.campaigns import Campaign, Message
from stampweb.tenancy import tenant, unscoped

from .factories import csrf_token_from, gen_customer, gen_merchant, gen_user, login


def logged_in(client, merchant):
    login(client, f"owner@{merchant.slug}.test")
    return csrf_token_from(client.get("/admin/automations").text)


def flow(merchant, kind):
    with tenant(merchant.id):
        return db.session.scalar(select(AutomationFlow).filter_by(kind=kind))


def test_page_lists_every_flow_switched_off(app, client):
    with app.app_context():
        merchant = gen_merchant()
    logged_in(client, merchant)
    page = client.get("/admin/automations")
    assert page.status_code == 200
    for kind in ("birthday", "winback", "winback2", "reward_ready", "voucher_expiry",
                 "welcome", "tag_notify"):
        assert f'id="flow-{kind}"' in page.text
    assert 'aria-checked="true"' not in page.text


def test_switch_on_without_javascript_and_with_htmx(app, client):
    with app.app_context():
        merchant = gen_merchant()
    token = logged_in(client, merchant)
    response = client.post("/admin/automations/birthday/switch",
                           data={"csrf_token": token, "enabled": "1"})
    assert response.status_code == 302
    with app.app_context():
        birthday = flow(merchant, "birthday")
        assert birthday.enabled
        with tenant(merchant.id):
            assert db.session.get(Campaign, birthday.campaign_id).status == "sending"
    fragment = client.post("/admin/automations/birthday/switch",
                           data={"csrf_token": token, "enabled": "0"},
                           headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith("<article")
    assert 'aria-checked="false"' in fragment.text
    with app.app_context():
        assert not flow(merchant, "birthday").enabled


def test_bad_settings_are_shown_next_to_the_field_and_nothing_is_saved(app, client):
    with app.app_context():
        merchant = gen_merchant()
    token = logged_in(client, merchant)
    response = client.post("/admin/automations/winback", data={
        "csrf_token": token, "setting_days": "abc", "setting_never_visited_days": "14",
        "setting_voucher_title": "Free cake", "setting_voucher_valid_days": "14",
        "local_hour": "10", "channels": "email", "subject": "Hi {frist_name}",
        "preheader": "", "body_markdown": "Come back", "wallet_text": "",
    })
    assert response.status_code == 422
    assert "Enter a whole number." in response.text
    assert "Unknown placeholder" in response.text
    assert 'value="Free cake"' in response.text  # what was typed is kept
    with app.app_context():
        assert flow(merchant, "winback").settings["voucher_title"] == ""


def test_saving_settings_and_message(app, client):
    with app.app_context():
        merchant = gen_merchant()
    token = logged_in(client, merchant)
    response = client.post("/admin/automations/birthday", data={
        "csrf_token": token, "setting_days_before": "5", "setting_mode": "card_state",
        "setting_window_days": "10", "local_hour": "8", "channels": "both",
        "subject": "Happy birthday {first_name|friend}", "preheader": "",
        "body_markdown": "A treat awaits", "wallet_text": "Happy birthday!",
    })
    assert response.status_code == 302
    with app.app_context():
        birthday = flow(merchant, "birthday")
        assert birthday.settings == {"days_before": 5, "mode": "card_state", "window_days": 10}
        assert birthday.local_hour == 8
        with tenant(merchant.id):
            campaign = db.session.get(Campaign, birthday.campaign_id)
            assert (campaign.channels, campaign.voucher_title) == ("both", None)


def test_preview_shows_who_gets_it_in_the_next_7_days(app, client):
    with app.app_context():
        merchant = gen_merchant(timezone="UTC")
        slug = merchant.slug
        soon = utcnow().date() + timedelta(days=4)
        gen_customer(merchant, first_name="Soonbirthday", birthday_month=soon.month,
                     birthday_day=soon.day)
    login(client, f"owner@{slug}.test")
    page = client.get("/admin/automations/birthday")
    assert page.status_code == 200
    assert "Soonbirthday" in page.text


def test_staff_cannot_open_automations_and_other_merchants_see_nothing(app, client):
    with app.app_context():
        merchant, other = gen_merchant(), gen_merchant()
        staff_email = gen_user(merchant, "staff").email
        slug = merchant.slug
        manage.set_enabled(other.id, "birthday", True)
    login(client, staff_email)
    assert client.get("/admin/automations").status_code == 403
    client.post("/logout", data={"csrf_token": csrf_token_from(client.get("/staff").text)})
    login(client, f"owner@{slug}.test")
    page = client.get("/admin/automations/birthday")
    assert 'aria-checked="false"' in page.text  # the other merchant's switch is theirs
    assert client.get("/admin/automations/nonsense").status_code == 404


def save_birthday_message(client, token, **overrides):
    data = {
        "csrf_token": token, "setting_days_before": "0", "setting_mode": "card_state",
        "setting_window_days": "7", "local_hour": "9", "channels": "both",
        "subject": "Happy birthday {first_name|friend}", "preheader": "",
        "body_markdown": "A **treat** awaits", "wallet_text": "Happy birthday!",
    }
    data.update(overrides)
    response = client.post("/admin/automations/birthday", data=data)
    assert response.status_code == 302


def test_the_editor_is_the_campaign_editor_with_count_preview_and_test(app, client):
    """The same message fields as a campaign, the live wallet count, the preview of the
    saved message as email (HTML in a sandboxed frame, text) and wallet back, and the
    test send."""
    with app.app_context():
        merchant = gen_merchant()
        gen_customer(merchant, first_name="Ada")
        db.session.refresh(merchant)  # loaded again after the customer's commit
    token = logged_in(client, merchant)
    save_birthday_message(client, token)
    with app.app_context():
        campaign_id = flow(merchant, "birthday").campaign_id
    page = client.get("/admin/automations/birthday")
    assert page.status_code == 200
    # The message editor of the campaign builder, field for field.
    assert 'id="campaign-channels"' in page.text and 'class="hint placeholder-help"' in page.text
    assert 'hx-post="/admin/campaigns/wallet-count"' in page.text
    assert 'id="wallet_text-count"' in page.text and "15 of 150 characters" in page.text
    # The preview of the flow's campaign, as the first customer.
    assert re.search(rf'<iframe[^>]*sandbox[^>]*src="/admin/campaigns/{campaign_id}/preview'
                     r'\?format=html', page.text)
    assert "Happy birthday Ada" in page.text and 'id="wallet-back"' in page.text
    assert 'id="preview-lang"' in page.text
    # The test send posts to the campaign's route and comes back here.
    assert f'action="/admin/campaigns/{campaign_id}/test"' in page.text
    assert 'name="next" value="/admin/automations/birthday#preview"' in page.text
    html = client.get(f"/admin/campaigns/{campaign_id}/preview?format=html")
    assert "<strong>treat</strong>" in html.text
    assert "sandbox" in html.headers["Content-Security-Policy"]
    text = client.get(f"/admin/campaigns/{campaign_id}/preview?format=text")
    assert "**treat**" in text.text
    # A language asked for with ?lang= is kept for the frame and the test.
    as_russian = client.get("/admin/automations/birthday?lang=ru")
    assert f"/admin/campaigns/{campaign_id}/preview?format=html&amp;lang=ru" in as_russian.text
    assert 'value="/admin/automations/birthday?lang=ru#preview"' in as_russian.text


def test_the_wallet_count_counts_what_the_automation_form_posts(app, client):
    with app.app_context():
        merchant = gen_merchant()
    token = logged_in(client, merchant)
    counter = client.post("/admin/campaigns/wallet-count", headers={"HX-Request": "true"},
                          data={"csrf_token": token, "local_hour": "9", "channels": "wallet",
                                "wallet_text": "y" * 151})
    assert "151 of 150 characters" in counter.text and "over" in counter.text


def test_a_reminder_flow_previews_with_the_reminder_email(app, client):
    with app.app_context():
        merchant = gen_merchant()
    logged_in(client, merchant)
    with app.app_context():
        campaign_id = flow(merchant, "reward_ready").campaign_id
    html = client.get(f"/admin/campaigns/{campaign_id}/preview?format=html")
    assert html.status_code == 200
    assert "Stop reminders" in html.text and "because you asked for reminders" in html.text
    text = client.get(f"/admin/campaigns/{campaign_id}/preview?format=text")
    assert "Stop reminders:" in text.text
    # A one-off campaign's footer stays the plain unsubscribe one.
    with app.app_context():
        birthday_id = flow(merchant, "birthday").campaign_id
    assert "Stop reminders" not in client.get(
        f"/admin/campaigns/{birthday_id}/preview?format=html").text


def test_a_test_send_from_an_automation_reaches_the_owner_and_comes_back(app, client):
    with app.app_context():
        merchant = gen_merchant()
        gen_customer(merchant, first_name="Ada", email_consent=CONSENT_GRANTED,
                     email_confirmed_at=utcnow())
        db.session.refresh(merchant)
        slug = merchant.slug
    token = logged_in(client, merchant)
    save_birthday_message(client, token)
    with app.app_context():
        campaign_id = flow(merchant, "birthday").campaign_id
    response = client.post(f"/admin/campaigns/{campaign_id}/test", data={
        "csrf_token": token, "next": "/admin/automations/birthday#preview"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/automations/birthday#preview"
    back = client.get("/admin/automations/birthday")
    assert f"Test email sent to owner@{slug}.test" in back.text
    with app.app_context(), tenant(merchant.id):
        [mail] = db.session.scalars(select(MailboxMessage)).all()
        assert mail.to_address == f"owner@{slug}.test"
        assert mail.subject == "[Test] Happy birthday Ada"
        assert db.session.scalar(select(func.count(Message.id))) == 0
    # Anywhere but a local page goes back to the automation's own page instead.
    elsewhere = client.post(f"/admin/campaigns/{campaign_id}/test", data={
        "csrf_token": token, "next": "https://evil.example/"})
    assert elsewhere.headers["Location"] == "/admin/automations/birthday"


def test_an_automations_campaign_cannot_be_run_from_the_campaign_pages(app, client):
    """Its switch is on the automation page: the campaign builder's edit, send, schedule,
    pause, resume, cancel and progress routes answer 404 and change nothing."""
    with app.app_context():
        merchant = gen_merchant()
        db.session.refresh(merchant)
    token = logged_in(client, merchant)
    with app.app_context():
        manage.ensure_flows(merchant.id)
        campaign_id = flow(merchant, "birthday").campaign_id
    base = f"/admin/campaigns/{campaign_id}"
    for path in ("", "/send", "/cancel", "/progress"):
        assert client.get(base + path).status_code == 404, path
    for path in ("/send", "/schedule", "/pause", "/resume", "/cancel", ""):
        assert client.post(base + path, data={"csrf_token": token}).status_code == 404, path
    with app.app_context():
        assert flow(merchant, "birthday").enabled is False
        with tenant(merchant.id):
            assert db.session.get(Campaign, campaign_id).status == "paused"


def test_another_merchants_automation_campaign_is_not_found(app, client):
    with app.app_context():
        merchant, other = gen_merchant(), gen_merchant()
        manage.ensure_flows(other.id)
        theirs = flow(other, "birthday").campaign_id
        db.session.refresh(merchant)
    token = logged_in(client, merchant)
    assert client.get(f"/admin/campaigns/{theirs}/preview?format=html").status_code == 404
    assert client.get(f"/admin/campaigns/{theirs}/preview?format=wallet").status_code == 404
    response = client.post(f"/admin/campaigns/{theirs}/test", data={
        "csrf_token": token, "next": "/admin/automations/birthday"})
    assert response.status_code == 404
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(MailboxMessage.id))) == 0
