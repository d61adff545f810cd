"""The automations page: switches, settings with errors next to the field, preview, tenancy."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from stampweb.automations import manage
from stampweb.extensions import db
from stampweb.models import AutomationFlow, utcnow
from stampweb.models.campaigns import Campaign
from stampweb.tenancy import tenant

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
