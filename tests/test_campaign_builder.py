"""The campaign builder: a manager writes a campaign, sees who it reaches, previews
exactly what a recipient gets, tests it on themself, then sends or schedules it in
the shop's time zone and follows it to the end."""

from __future__ import annotations

import email
import re
from datetime import datetime

import pytest
from sqlalchemy import func, select

from stampweb.campaigns import builder, rendering
from stampweb.campaigns.builder import BuilderError, CampaignValues
from stampweb.extensions import db
from stampweb.models import CONSENT_GRANTED, CustomerTag, MailboxMessage, Segment, Tag, utcnow
from stampweb.models.campaigns import Campaign, Message
from stampweb.tenancy import tenant

from .factories import csrf_token_from, gen_customer, gen_merchant, gen_user, login
from .test_campaign_sending import run_jobs_inline


def good_values(**overrides) -> CampaignValues:
    values = CampaignValues(
        name="Weekend offer", audience="all", channels="both",
        subject="Hi {first_name|friend}", preheader="Only this weekend",
        body_markdown="**Two for one**, {stamps_left} stamps to {reward}.",
        wallet_text="Two for one this weekend, {first_name|friend}!",
    )
    for key, value in overrides.items():
        setattr(values, key, value)
    return values


def errors_of(merchant_id: int, values: CampaignValues) -> dict[str, str]:
    with pytest.raises(BuilderError) as caught:
        builder.validate(merchant_id, values)
    return caught.value.errors


def opted_in(merchant, **kwargs):
    return gen_customer(merchant, email_consent=CONSENT_GRANTED, email_confirmed_at=utcnow(),
                        **kwargs)


@pytest.fixture
def shop(app):
    with app.app_context():
        return gen_merchant("cafe", name="Café Crème")


@pytest.fixture
def owner(client, shop):
    login(client, "owner@cafe.test")
    return client


def save(merchant_id: int, **overrides) -> int:
    with tenant(merchant_id):
        campaign = builder.save(merchant_id, good_values(**overrides))
        db.session.commit()
        return campaign.id


def token(client, path: str = "/admin/campaigns/new") -> str:
    return csrf_token_from(client.get(path).text)


def form_data(csrf: str, **overrides) -> dict:
    data = {
        "csrf_token": csrf, "name": "Weekend offer", "audience": "all", "channels": "email",
        "subject": "Hi {first_name|friend}", "preheader": "", "body_markdown": "Two for one.",
        "wallet_text": "", "voucher_title": "", "voucher_valid_days": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def campaign_row(merchant_id: int, campaign_id: int) -> Campaign:
    with tenant(merchant_id):
        campaign = db.session.get(Campaign, campaign_id)
        db.session.refresh(campaign)
        return campaign


# --- the rules (service, no HTTP) -------------------------------------------------------


def test_name_and_a_channel_are_required(app, shop):
    with app.app_context():
        errors = errors_of(shop.id, good_values(name="  ", channels="fax"))
    assert set(errors) == {"name", "channels"}


def test_an_email_needs_a_one_line_subject_of_at_most_200_and_a_body(app, shop):
    with app.app_context():
        assert set(errors_of(shop.id, good_values(channels="email", subject="",
                                                  body_markdown=""))) == {
            "subject", "body_markdown"}
        assert "one line" in errors_of(shop.id, good_values(subject="Hi\nthere"))["subject"]
        assert "200" in errors_of(shop.id, good_values(subject="x" * 201))["subject"]
        # A wallet-only campaign needs neither.
        builder.validate(shop.id, good_values(channels="wallet", subject="", body_markdown=""))


def test_wallet_text_is_required_for_the_wallet_and_counted_against_its_limit(app, shop):
    with app.app_context():
        limit = rendering.WALLET_TEXT_LIMIT
        assert "wallet_text" in errors_of(shop.id, good_values(channels="wallet",
                                                               wallet_text=" "))
        message = errors_of(shop.id, good_values(wallet_text="x" * (limit + 1)))["wallet_text"]
        assert str(limit) in message and str(limit + 1) in message
        builder.validate(shop.id, good_values(wallet_text="x" * limit))
        builder.validate(shop.id, good_values(channels="email", wallet_text=""))


def test_unknown_placeholders_are_reported_beside_their_field(app, shop):
    with app.app_context():
        errors = errors_of(shop.id, good_values(subject="Hi {frist_name}",
                                                wallet_text="{stamps_lft} to go"))
    assert "{frist_name}" in errors["subject"] and "{first_name}" in errors["subject"]
    assert "{stamps_lft}" in errors["wallet_text"]
    assert "body_markdown" not in errors


def test_a_voucher_needs_a_title_and_1_to_365_days(app, shop):
    with app.app_context():
        errors = errors_of(shop.id, good_values(voucher=True, voucher_title="",
                                                voucher_valid_days="0"))
        assert set(errors) == {"voucher_title", "voucher_valid_days"}
        errors = errors_of(shop.id, good_values(voucher=True, voucher_title="x" * 201,
                                                voucher_valid_days="366"))
        assert set(errors) == {"voucher_title", "voucher_valid_days"}
        assert "voucher_valid_days" in errors_of(
            shop.id, good_values(voucher=True, voucher_title="Coffee", voucher_valid_days="ten"))
        clean = builder.validate(shop.id, good_values(voucher=True, voucher_title="Coffee",
                                                      voucher_valid_days="365"))
        assert (clean["voucher_title"], clean["voucher_valid_days"]) == ("Coffee", 365)
        # Unticked, the typed title is not used.
        clean = builder.validate(shop.id, good_values(voucher=False, voucher_title="Coffee"))
        assert clean["voucher_title"] is None


def test_the_audience_is_all_members_or_the_merchants_own_segment_or_tag(app, shop):
    with app.app_context():
        other = gen_merchant()
        with tenant(other.id):
            foreign = Segment(merchant_id=other.id, name="Theirs", rules={})
            foreign_tag = Tag(merchant_id=other.id, name="theirs")
            db.session.add_all([foreign, foreign_tag])
            db.session.commit()
        with tenant(shop.id):
            own = Segment(merchant_id=shop.id, name="Ours", rules={})
            own_tag = Tag(merchant_id=shop.id, name="vip")
            db.session.add_all([own, own_tag])
            db.session.commit()
        for bad in (f"segment-{foreign.id}", f"tag-{foreign_tag.id}", "segment-x", "", "fans"):
            assert "audience" in errors_of(shop.id, good_values(audience=bad)), bad
        assert builder.validate(shop.id, good_values(audience=f"segment-{own.id}"))[
            "audience"] == {"type": "segment", "segment_id": own.id}
        assert builder.validate(shop.id, good_values(audience=f"tag-{own_tag.id}"))[
            "audience"] == {"type": "tag", "tag_id": own_tag.id}


def test_an_invalid_campaign_saves_nothing(app, shop):
    with app.app_context():
        with pytest.raises(BuilderError), tenant(shop.id):
            builder.save(shop.id, good_values(name=""))
        db.session.rollback()
        campaign_id = save(shop.id)
        with pytest.raises(BuilderError), tenant(shop.id):
            builder.save(shop.id, good_values(name="Changed", subject=""), campaign_id)
        db.session.rollback()
        with tenant(shop.id):
            assert db.session.scalar(select(func.count(Campaign.id))) == 1
        assert campaign_row(shop.id, campaign_id).name == "Weekend offer"


def test_the_audience_count_says_how_many_each_channel_reaches(app, shop):
    """Email reaches those who agreed, confirmed and whose address works; the wallet
    those who agreed to it. A tag audience counts only its members."""
    with app.app_context():
        reachable = opted_in(shop, first_name="Ada")
        opted_in(shop, first_name="Bounced", email_suppressed_at=utcnow())
        gen_customer(shop, first_name="Pending", email_consent="pending")
        wallet = gen_customer(shop, first_name="Wally", wallet_consent=CONSENT_GRANTED)
        summary = builder.audience_summary(shop.id, "all", "both")
        assert summary.count == 4
        assert summary.reachable == {"email": 1, "wallet": 1}
        assert len(summary.sample) == 4
        with tenant(shop.id):
            tag = Tag(merchant_id=shop.id, name="regulars")
            db.session.add(tag)
            db.session.flush()
            db.session.add_all([
                CustomerTag(merchant_id=shop.id, customer_id=reachable.id, tag_id=tag.id),
                CustomerTag(merchant_id=shop.id, customer_id=wallet.id, tag_id=tag.id),
            ])
            db.session.commit()
        summary = builder.audience_summary(shop.id, f"tag-{tag.id}", "email")
        assert summary.count == 2 and summary.reachable == {"email": 1}
        assert {c.first_name for c in summary.sample} == {"Ada", "Wally"}
        assert builder.audience_summary(shop.id, "tag-999999", "email").error


def test_local_times_are_read_in_the_merchants_zone_across_clock_changes():
    berlin = builder.ZoneInfo("Europe/Berlin")
    assert builder.local_to_utc("2030-07-01T10:00", berlin) == datetime(2030, 7, 1, 8, 0)
    assert builder.local_to_utc("2030-01-15T10:00", berlin) == datetime(2030, 1, 15, 9, 0)
    # 02:30 on the last Sunday of March does not exist in Berlin.
    with pytest.raises(BuilderError) as gap:
        builder.local_to_utc("2030-03-31T02:30", berlin)
    assert "does not exist" in gap.value.errors["scheduled_at"]
    # 02:30 on the last Sunday of October happens twice: the first one is taken.
    assert builder.local_to_utc("2030-10-27T02:30", berlin) == datetime(2030, 10, 27, 0, 30)
    with pytest.raises(BuilderError):
        builder.local_to_utc("tomorrow", berlin)


# --- the pages ------------------------------------------------------------------------------


def test_bad_input_comes_back_beside_each_field_with_what_was_typed(app, owner, shop):
    response = owner.post("/admin/campaigns/new", data=form_data(
        token(owner), name="Kept name", subject="Hi {frist_name}", body_markdown="",
        channels="both", wallet_text="Kept wallet text " + "x" * 200,
        voucher="y", voucher_title="Free cookie", voucher_valid_days="400"))
    assert response.status_code == 422
    html = response.text
    for field_id in ("subject", "body_markdown", "wallet_text", "voucher_valid_days"):
        assert f'id="{field_id}-error"' in html, field_id
    assert re.search(r'id="subject"[^>]*aria-invalid="true"|aria-invalid="true"[^>]*id="subject"',
                     html)
    assert "{frist_name}" in html and 'value="Kept name"' in html
    assert 'value="Free cookie"' in html and 'value="400"' in html
    assert "Kept wallet text" in html
    with app.app_context(), tenant(shop.id):
        assert db.session.scalar(select(func.count(Campaign.id))) == 0


def test_a_manager_creates_and_edits_a_draft(app, client, shop):
    with app.app_context():
        manager = gen_user(shop, "manager")
    login(client, manager.email)
    response = client.post("/admin/campaigns/new", data=form_data(token(client)))
    assert response.status_code == 303
    campaign_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        campaign = campaign_row(shop.id, campaign_id)
        assert (campaign.status, campaign.channels, campaign.audience) == (
            "draft", "email", {"type": "all"})
        assert campaign.created_by_user_id == manager.id
    page = client.get(f"/admin/campaigns/{campaign_id}")
    assert page.status_code == 200 and 'value="Weekend offer"' in page.text
    bad = client.post(f"/admin/campaigns/{campaign_id}",
                      data=form_data(csrf_token_from(page.text), name="", subject="New"))
    assert bad.status_code == 422 and 'id="name-error"' in bad.text and 'value="New"' in bad.text
    good = client.post(f"/admin/campaigns/{campaign_id}",
                       data=form_data(csrf_token_from(page.text), name="Renamed"))
    assert good.status_code == 303
    with app.app_context():
        assert campaign_row(shop.id, campaign_id).name == "Renamed"
    listing = client.get("/admin/campaigns").text
    assert "Renamed" in listing and "All members" in listing and "Draft" in listing


def test_staff_cannot_open_the_builder(app, client, shop):
    with app.app_context():
        staff = gen_user(shop, "staff")
    login(client, staff.email)
    assert client.get("/admin/campaigns").status_code == 403
    assert client.get("/admin/campaigns/new").status_code == 403


def test_the_audience_panel_counts_live_and_the_wallet_counter_counts(app, owner, shop):
    with app.app_context():
        opted_in(shop, first_name="Ada", last_name="Lovelace")
        gen_customer(shop, first_name="Grace", last_name="Hopper")
    csrf = token(owner)
    panel = owner.post("/admin/campaigns/audience", headers={"HX-Request": "true"},
                       data={"csrf_token": csrf, "audience": "all", "channels": "email"})
    assert panel.status_code == 200
    assert "<strong>2</strong>" in panel.text and "Ada Lovelace" in panel.text
    assert "1 can get the email" in panel.text
    assert "<html" not in panel.text
    counter = owner.post("/admin/campaigns/wallet-count", headers={"HX-Request": "true"},
                         data={"csrf_token": csrf, "wallet_text": "x" * 151})
    assert "151 of 150 characters" in counter.text and "over" in counter.text


def test_the_preview_is_what_the_recipient_gets(app, owner, shop):
    """Placeholders are filled for the chosen customer, fallbacks used when a value is
    missing, the merchant's script is gone, and the unsubscribe link is there."""
    with app.app_context():
        nameless = opted_in(shop, first_name="").id
        named = opted_in(shop, first_name="Ada").id
        campaign_id = save(shop.id, body_markdown="Hello <script>alert(1)</script>**{first_name|"
                           "friend}**, {stamps_left} to go. [Card]({card_url})",
                           voucher=True, voucher_title="Free cookie", voucher_valid_days="30")
    url = f"/admin/campaigns/{campaign_id}/preview"
    first = owner.get(url + "?format=html")  # the first in the audience: nameless
    assert first.status_code == 200
    assert "<strong>friend</strong>" in first.text and "<script" not in first.text
    assert "/u/" in first.text  # the unsubscribe link in the footer
    csp = first.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "script-src" not in csp and "sandbox" in csp
    assert first.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert nameless < named
    as_ada = owner.get(url + f"?format=html&customer_id={named}")
    assert "<strong>Ada</strong>" in as_ada.text and "/card/" in as_ada.text
    text = owner.get(url + f"?format=text&customer_id={named}")
    assert text.mimetype == "text/plain" and "**Ada**" in text.text and "/u/" in text.text
    wallet = owner.get(url + f"?format=wallet&customer_id={named}",
                       headers={"HX-Request": "true"})
    assert "Two for one this weekend, Ada!" in wallet.text and "Latest news" in wallet.text
    # The builder page frames the HTML in a sandbox; the page itself may not be framed.
    page = owner.get(f"/admin/campaigns/{campaign_id}")
    assert re.search(r'<iframe[^>]*sandbox[^>]*src="[^"]*/preview\?', page.text)
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "Hi friend" in page.text  # the subject line, personalised
    assert owner.get(url + "?format=html&customer_id=999999").status_code == 404


def test_a_test_send_goes_only_to_the_users_own_address(app, owner, shop):
    with app.app_context():
        opted_in(shop, first_name="Ada")
        campaign_id = save(shop.id)
    page = owner.get(f"/admin/campaigns/{campaign_id}")
    response = owner.post(f"/admin/campaigns/{campaign_id}/test",
                          data={"csrf_token": csrf_token_from(page.text)})
    assert response.status_code == 303
    assert "Test email sent to owner@cafe.test" in owner.get(response.headers["Location"]).text
    with app.app_context(), tenant(shop.id):
        [mail] = db.session.scalars(select(MailboxMessage)).all()
        assert mail.to_address == "owner@cafe.test"
        assert mail.subject == "[Test] Hi Ada"
        parsed = email.message_from_bytes(mail.raw)
        assert parsed.is_multipart()
        assert db.session.scalar(select(func.count(Message.id))) == 0
        assert db.session.get(Campaign, campaign_id).status == "draft"


def test_scheduling_reads_the_time_in_the_shops_zone(app, client):
    with app.app_context():
        shop_id = gen_merchant("berlin", timezone="Europe/Berlin").id
        campaign_id = save(shop_id)
    login(client, "owner@berlin.test")
    page = client.get(f"/admin/campaigns/{campaign_id}")
    assert "Europe/Berlin" in page.text
    csrf = csrf_token_from(page.text)
    gap = client.post(f"/admin/campaigns/{campaign_id}/schedule",
                      data={"csrf_token": csrf, "scheduled_at": "2030-03-31T02:30"})
    assert gap.status_code == 422
    assert 'id="scheduled_at-error"' in gap.text and "does not exist" in gap.text
    assert 'value="2030-03-31T02:30"' in gap.text
    past = client.post(f"/admin/campaigns/{campaign_id}/schedule",
                       data={"csrf_token": csrf, "scheduled_at": "2020-01-01T10:00"})
    assert past.status_code == 422 and "future" in past.text
    with app.app_context():
        assert campaign_row(shop_id, campaign_id).status == "draft"
    done = client.post(f"/admin/campaigns/{campaign_id}/schedule",
                       data={"csrf_token": csrf, "scheduled_at": "2030-07-01T10:00"})
    assert done.status_code == 303
    with app.app_context():
        campaign = campaign_row(shop_id, campaign_id)
        assert campaign.status == "scheduled"
        assert campaign.scheduled_at == datetime(2030, 7, 1, 8, 0)
    # Shown back in local time, on the builder and in the list.
    assert 'value="2030-07-01T10:00"' in client.get(f"/admin/campaigns/{campaign_id}").text
    assert "10:00" in client.get("/admin/campaigns").text


def test_send_now_runs_to_the_end_and_the_progress_shows_100(app, owner, shop):
    with app.app_context():
        for _ in range(3):
            opted_in(shop)
        gen_customer(shop)  # no consent: skipped
        campaign_id = save(shop.id, channels="email")
    confirm = owner.get(f"/admin/campaigns/{campaign_id}/send")
    assert "Send “Weekend offer” now?" in confirm.text
    assert owner.post(f"/admin/campaigns/{campaign_id}/send",
                      data={"csrf_token": csrf_token_from(confirm.text)}).status_code == 303
    sending_fragment = owner.get(f"/admin/campaigns/{campaign_id}/progress?seen=sending",
                                 headers={"HX-Request": "true"})
    assert 'hx-trigger="every 2s"' in sending_fragment.text
    run_jobs_inline(app)
    with app.app_context():
        assert campaign_row(shop.id, campaign_id).status == "sent"
    fragment = owner.get(f"/admin/campaigns/{campaign_id}/progress?seen=sending",
                         headers={"HX-Request": "true"})
    assert fragment.headers.get("HX-Refresh") == "true"  # the controls must change
    assert "hx-trigger" not in fragment.text  # nothing left to wait for
    assert 'value="4"' in fragment.text and "100%" in fragment.text
    assert "No consent: 1" in fragment.text
    summary = owner.get(f"/admin/campaigns/{campaign_id}")
    assert 'name="name"' not in summary.text and "Sent" in summary.text
    assert "3 / 4" in owner.get("/admin/campaigns").text


def test_pause_resume_and_cancel_and_refused_moves_are_flashed(app, owner, shop):
    with app.app_context():
        opted_in(shop)
        campaign_id = save(shop.id)
    base = f"/admin/campaigns/{campaign_id}"
    csrf = token(owner, base)

    def post(action: str) -> str:
        response = owner.post(f"{base}/{action}", data={"csrf_token": csrf})
        assert response.status_code == 303
        return owner.get(response.headers["Location"]).text

    def status() -> str:
        with app.app_context():
            return campaign_row(shop.id, campaign_id).status

    assert "can&#39;t be done now" in post("pause") and status() == "draft"
    post("send")
    assert status() == "sending"
    assert "is paused" in post("pause") and status() == "paused"
    assert "can&#39;t be done now: the campaign is paused" in post("pause")
    assert "sending again" in post("resume") and status() == "sending"
    cancel_page = owner.get(f"{base}/cancel")
    assert "Cancel “Weekend offer”?" in cancel_page.text
    assert "is cancelled" in post("cancel") and status() == "cancelled"
    assert "can&#39;t be done now" in post("resume") and status() == "cancelled"
    assert "can&#39;t be done now" in post("send")
    # A started campaign can't be edited.
    edited = owner.post(base, data=form_data(csrf, name="Changed"))
    assert edited.status_code == 303
    with app.app_context():
        assert campaign_row(shop.id, campaign_id).name == "Weekend offer"


def test_send_now_refuses_a_campaign_whose_segment_was_deleted(app, owner, shop):
    with app.app_context():
        with tenant(shop.id):
            segment = Segment(merchant_id=shop.id, name="Regulars", rules={})
            db.session.add(segment)
            db.session.commit()
            segment_id = segment.id
        campaign_id = save(shop.id, audience=f"segment-{segment_id}")
        with tenant(shop.id):
            db.session.delete(db.session.get(Segment, segment_id))
            db.session.commit()
    csrf = token(owner, f"/admin/campaigns/{campaign_id}")
    response = owner.post(f"/admin/campaigns/{campaign_id}/send", data={"csrf_token": csrf})
    assert "segment does not exist" in owner.get(response.headers["Location"]).text
    with app.app_context():
        assert campaign_row(shop.id, campaign_id).status == "draft"


def test_controls_need_the_csrf_token(app, owner, shop):
    with app.app_context():
        campaign_id = save(shop.id)
    for action in ("send", "pause", "resume", "cancel", "test", "schedule"):
        assert owner.post(f"/admin/campaigns/{campaign_id}/{action}").status_code == 400, action
    with app.app_context():
        assert campaign_row(shop.id, campaign_id).status == "draft"


def test_a_tag_campaign_reaches_the_tags_members(app, shop):
    with app.app_context():
        member = opted_in(shop).id
        opted_in(shop)
        with tenant(shop.id):
            tag = Tag(merchant_id=shop.id, name="regulars")
            db.session.add(tag)
            db.session.flush()
            db.session.add(CustomerTag(merchant_id=shop.id, customer_id=member, tag_id=tag.id))
            db.session.commit()
            tag_id = tag.id
        campaign_id = save(shop.id, audience=f"tag-{tag_id}", channels="email")
        builder.send_now(shop.id, campaign_id)
    run_jobs_inline(app)
    with app.app_context(), tenant(shop.id):
        assert db.session.scalars(select(Message.customer_id)).all() == [member]
