"""Campaign and automation messages in the customer's language, else the merchant's."""

from __future__ import annotations

import email
import re
from email.header import decode_header, make_header

import pytest
from sqlalchemy import select

from stampweb.automations import manage
from stampweb.campaigns import builder, rendering, sending, variants
from stampweb.extensions import db
from stampweb.models import CONSENT_GRANTED, AutomationFlow, MailboxMessage, utcnow
from stampweb.models.campaigns import Campaign
from stampweb.tenancy import tenant

from .factories import csrf_token_from, gen_customer, gen_merchant, login
from .test_campaign_builder import form_data, good_values
from .test_campaign_sending import run_jobs_inline

RU = {"subject": "Привет, {first_name|друг}", "preheader": "Только в выходные",
      "body_markdown": "**Два по цене одного**", "wallet_text": "Два по цене одного!"}


@pytest.fixture
def shop(app):
    with app.app_context():
        return gen_merchant("cafe", name="Café", locale="en")


def campaign_with(**fields) -> Campaign:
    base = {"name": "Offer", "subject": "Hello", "preheader": "Weekend only",
            "body_markdown": "**Two for one**", "wallet_text": "Two for one!", "variants": {}}
    base.update(fields)
    return Campaign(**base)


# --- choosing the text at send time -------------------------------------------------------


def test_a_customer_gets_the_variant_in_their_language():
    content = rendering.compile_content(campaign_with(variants={"ru": RU}), "ru", "en")
    assert (content.locale, content.subject, content.preheader, content.wallet_text) == (
        "ru", RU["subject"], RU["preheader"], RU["wallet_text"])
    assert "<strong>Два по цене одного</strong>" in content.html_body


def test_without_a_variant_the_message_falls_back_to_the_merchants_default_language():
    content = rendering.compile_content(campaign_with(variants={"ru": RU}), "he", "en")
    assert (content.locale, content.subject, content.wallet_text) == ("en", "Hello", "Two for one!")


def test_the_default_language_never_uses_a_variant():
    content = rendering.compile_content(campaign_with(variants={"en": RU}), "en", "en")
    assert content.subject == "Hello"


def test_an_email_is_never_half_one_language_and_half_another():
    """A variant with only wallet text: the email falls back whole, the wallet text does not."""
    campaign = campaign_with(variants={"kk": {"wallet_text": "Екеуі бір бағаға!"}})
    content = rendering.compile_content(campaign, "kk", "en")
    assert (content.locale, content.subject, content.preheader) == ("en", "Hello", "Weekend only")
    assert content.wallet_text == "Екеуі бір бағаға!"


def test_a_variant_without_a_preheader_does_not_borrow_the_default_one():
    ru = {k: v for k, v in RU.items() if k != "preheader"}
    content = rendering.compile_content(campaign_with(variants={"ru": ru}), "ru", "en")
    assert content.preheader == ""


# --- editing ---------------------------------------------------------------------------------


def test_clean_drops_empty_and_default_language_variants_and_checks_each_field():
    clean, errors = variants.clean(
        {"en": RU, "ru": {"subject": "", "body_markdown": "  "},
         "he": {"subject": "שלום\nעולם", "body_markdown": "x {frist_name}"},
         "fa": {"subject": "سلام"}, "xx": RU},
        "email", "en")
    assert "en" not in clean and "ru" not in clean and "xx" not in clean
    assert set(errors) == {"variant_he-subject", "variant_he-body_markdown",
                           "variant_fa-body_markdown"}
    assert "{frist_name}" in errors["variant_he-body_markdown"]


def test_a_wallet_only_campaign_may_have_a_variant_with_only_wallet_text():
    clean, errors = variants.clean({"ru": {"wallet_text": "Привет"}}, "wallet", "en")
    assert errors == {} and clean == {"ru": {"wallet_text": "Привет"}}


def test_the_builder_saves_variants_with_the_campaign(app, shop):
    with app.app_context(), tenant(shop.id):
        campaign = builder.save(shop.id, good_values(variants={"ru": RU, "he": {}}))
        db.session.commit()
        assert campaign.variants == {"ru": RU}
        assert builder.CampaignValues.from_campaign(campaign).variants == {"ru": RU}


def test_the_editor_offers_every_other_language_and_saves_what_is_typed(app, client, shop):
    login(client, "owner@cafe.test")
    page = client.get("/admin/campaigns/new")
    for code in ("ru", "kk", "he", "fa"):
        assert f'name="add_variant" value="{code}"' in page.text
    assert 'value="en"' not in page.text  # the default language is the main text
    assert 'id="variant_ru-subject"' not in page.text  # no inputs until a language is added
    # Adding a language shows its fields, keeps what was typed and saves nothing.
    added = client.post("/admin/campaigns/new", data=form_data(
        csrf_token_from(page.text), name="Typed name", add_variant="he"))
    assert added.status_code == 200
    assert 'id="variant-he"' in added.text and 'value="Typed name"' in added.text
    assert re.search(r'<input[^>]*autofocus[^>]*id="variant_he-subject"', added.text)
    assert 'Version in <span lang="he" dir="auto">עברית</span>' in added.text
    assert 'name="add_variant" value="he"' not in added.text
    with app.app_context(), tenant(shop.id):
        assert db.session.scalars(select(Campaign)).all() == []
    data = form_data(csrf_token_from(page.text), **{
        f"variant_ru-{name}": value for name, value in RU.items()})
    response = client.post("/admin/campaigns/new", data=data)
    assert response.status_code == 303
    with app.app_context(), tenant(shop.id):
        campaign = db.session.scalars(select(Campaign)).one()
        assert campaign.variants == {"ru": RU}
    edit = client.get(response.headers["Location"])
    assert 'id="variant-ru"' in edit.text and "Два по цене одного!" in edit.text
    assert 'id="variant-kk"' not in edit.text


def test_a_half_written_variant_comes_back_beside_its_field_and_nothing_is_saved(app, client,
                                                                                   shop):
    login(client, "owner@cafe.test")
    page = client.get("/admin/campaigns/new")
    data = form_data(csrf_token_from(page.text), **{"variant_fa-subject": "سلام"})
    response = client.post("/admin/campaigns/new", data=data)
    assert response.status_code == 422
    assert 'id="variant_fa-body_markdown-error"' in response.text
    assert 'value="سلام"' in response.text  # kept as typed
    with app.app_context(), tenant(shop.id):
        assert db.session.scalars(select(Campaign)).all() == []


def test_an_automation_message_has_variants_too(app, client, shop):
    login(client, "owner@cafe.test")
    page = client.get("/admin/automations/birthday")
    assert 'name="add_variant" value="kk"' in page.text
    with app.app_context(), tenant(shop.id):
        flow = db.session.scalar(select(AutomationFlow).filter_by(kind="birthday"))
        campaign = db.session.get(Campaign, flow.campaign_id)
        content = {name: getattr(campaign, name) for name in manage.CONTENT_FIELDS}
        settings = dict(flow.settings)
        hour, channels = flow.local_hour, campaign.channels
    form = {"csrf_token": csrf_token_from(page.text), "local_hour": str(hour),
            "channels": channels, **content,
            **{f"setting_{k}": "" if v is None else str(v) for k, v in settings.items()},
            **{f"variant_kk-{name}": value for name, value in
               {"subject": "Туған күніңізбен!", "body_markdown": "Сыйлық сізді күтеді.",
                "wallet_text": "Туған күніңізбен!"}.items()}}
    response = client.post("/admin/automations/birthday", data=form)
    assert response.status_code == 302, response.text[:2000]
    with app.app_context(), tenant(shop.id):
        campaign = db.session.get(Campaign, flow.campaign_id)
        assert campaign.variants["kk"]["subject"] == "Туған күніңізбен!"
    bad = dict(form, **{"variant_kk-body_markdown": ""})
    response = client.post("/admin/automations/birthday", data=bad)
    assert response.status_code == 422
    assert 'id="variant_kk-body_markdown-error"' in response.text


# --- sending -------------------------------------------------------------------------------


def _subject(raw: bytes) -> str:
    return str(make_header(decode_header(email.message_from_bytes(raw)["Subject"])))


def _html(raw: bytes) -> str:
    message = email.message_from_bytes(raw)
    for part in message.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode()
    raise AssertionError("no HTML part")


def test_each_customer_is_emailed_in_their_language_or_the_merchants(app, shop):
    with app.app_context():
        people = {locale: gen_customer(shop, email_consent=CONSENT_GRANTED,
                                       email_confirmed_at=utcnow(), locale=locale,
                                       first_name="Ada", email=f"{locale}@example.com").id
                  for locale in ("en", "ru", "fa")}
        with tenant(shop.id):
            campaign = campaign_with(merchant_id=shop.id, channels="email",
                                     audience={"type": "all"},
                                     variants={"ru": RU, "fa": {"wallet_text": "فقط کیف پول"}})
            db.session.add(campaign)
            db.session.commit()
            sending.start(campaign.id)
    run_jobs_inline(app)
    with app.app_context(), tenant(shop.id):
        mails = {m.to_address: m for m in db.session.scalars(select(MailboxMessage))}
        assert len(mails) == len(people)
        assert _subject(mails["ru@example.com"].raw) == "Привет, Ada"
        assert '<html lang="ru" dir="ltr">' in _html(mails["ru@example.com"].raw)
        # Persian has no email variant: the English text, in an English (ltr) frame.
        assert _subject(mails["fa@example.com"].raw) == "Hello"
        assert '<html lang="en" dir="ltr">' in _html(mails["fa@example.com"].raw)
        assert _subject(mails["en@example.com"].raw) == "Hello"


def test_a_hebrew_email_is_right_to_left(app, shop):
    he = {"subject": "שלום", "body_markdown": "שניים במחיר אחד"}
    with app.app_context():
        gen_customer(shop, email_consent=CONSENT_GRANTED, email_confirmed_at=utcnow(),
                     locale="he", email="he@example.com")
        with tenant(shop.id):
            campaign = campaign_with(merchant_id=shop.id, channels="email",
                                     audience={"type": "all"}, variants={"he": he})
            db.session.add(campaign)
            db.session.commit()
            sending.start(campaign.id)
    run_jobs_inline(app)
    with app.app_context(), tenant(shop.id):
        [mail] = db.session.scalars(select(MailboxMessage)).all()
        html = _html(mail.raw)
        assert '<html lang="he" dir="rtl">' in html
        assert "direction:rtl" in html and "text-align:right" in html


def test_the_preview_and_the_test_send_can_show_any_language(app, client, shop):
    """?lang= previews (and test-sends) the version a customer of that language gets."""
    with app.app_context(), tenant(shop.id):
        campaign = builder.save(shop.id, good_values(channels="email", variants={"ru": RU}))
        db.session.commit()
        campaign_id = campaign.id
    login(client, "owner@cafe.test")
    page = client.get(f"/admin/campaigns/{campaign_id}?lang=ru")
    assert "Привет, друг" in page.text  # the Russian subject, with its fallback
    assert f"/admin/campaigns/{campaign_id}/preview?format=html&amp;lang=ru" in page.text
    frame = client.get(f"/admin/campaigns/{campaign_id}/preview?format=html&lang=ru")
    assert '<html lang="ru" dir="ltr">' in frame.text
    persian = client.get(f"/admin/campaigns/{campaign_id}?lang=fa")
    assert "Hi friend" in persian.text and "No version in فارسی yet" in persian.text
    response = client.post(f"/admin/campaigns/{campaign_id}/test?lang=ru",
                           data={"csrf_token": csrf_token_from(page.text)})
    assert response.status_code == 303
    with app.app_context(), tenant(shop.id):
        [mail] = db.session.scalars(select(MailboxMessage)).all()
        assert _subject(mail.raw) == "[Test] Привет, друг"
