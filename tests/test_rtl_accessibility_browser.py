"""Hebrew and Persian pages mirror, fit a 360 px phone and pass axe; every page a
customer or a barista touches has tap targets of at least 44 px and a visible focus.

Screenshots of the join, card, preferences and staff pages in he and fa are saved
under test-artifacts/screenshots/ for a person to look at.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from stampweb import links
from stampweb.extensions import db
from stampweb.loyalty import stamping
from stampweb.models import CONSENT_GRANTED, Card, User, utcnow
from stampweb.tenancy import unscoped

from .browser import (
    assert_no_browser_errors,
    assert_no_horizontal_scroll,
    axe_report,
    login_in_browser,
    run_axe,
    screenshot,
    serious,
)
from .factories import card_of, gen_customer, gen_merchant, gen_user

pytestmark = pytest.mark.browser

TAP = 44

# Every control a finger aims at, except links inside running text (WCAG 2.5.5's
# inline exception) and controls the page hides.
_SMALL_TARGETS_JS = """minimum => {
  const small = [];
  const controls = document.querySelectorAll(
    'a[href], button, input:not([type=hidden]), select, textarea, summary, '
    + '[role=button], [role=switch]');
  for (const el of controls) {
    const box = el.getBoundingClientRect();
    if (!box.width || !box.height) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    if (el.closest('.skip-link')) continue;
    // A link in a sentence is exempt; a link standing alone (its parent has no
    // other text) is a target.
    if (el.tagName === 'A' && style.display === 'inline') {
      const parentText = (el.parentElement.innerText || '').trim();
      if (parentText !== (el.innerText || '').trim()) continue;
    }
    // A checkbox or radio counts with its label: the label is what is tapped.
    let target = box;
    const label = el.closest('label');
    if (label && (el.type === 'checkbox' || el.type === 'radio')) {
      target = label.getBoundingClientRect();
    }
    if (target.height < minimum - 0.5 || target.width < minimum - 0.5) {
      const name = (el.innerText || el.value || el.getAttribute('aria-label') || el.name || '')
        .trim().slice(0, 30);
      const size = `${Math.round(target.width)}x${Math.round(target.height)}`;
      small.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${name}" ${size}`);
    }
  }
  return small;
}"""

# Tab through the page: every stop shows an outline or a ring.
_FOCUS_JS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const ring = (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2)
               || (style.boxShadow && style.boxShadow !== 'none');
  const text = (el.innerText || el.value || '').trim().slice(0, 30);
  return {tag: el.tagName.toLowerCase(), id: el.id, text: text, ring: ring};
}"""


def assert_tap_targets(page) -> None:
    small = page.evaluate(_SMALL_TARGETS_JS, TAP)
    assert not small, f"tap targets under {TAP} px: {small}"


def assert_visible_focus(page, stops: int = 12) -> None:
    """Tab from the top: the skip link comes first, and every stop shows its focus."""
    # Start from the top even when the page focused a field for the user (the staff
    # search does): a focused-then-removed element moves Tab's starting point there.
    page.evaluate("""() => { const start = document.createElement('span'); start.tabIndex = -1;
        document.body.prepend(start); start.focus(); start.remove(); }""")
    unseen = []
    for number in range(stops):
        page.keyboard.press("Tab")
        state = page.evaluate(_FOCUS_JS)
        if state is None:
            break
        if number == 0:
            assert "skip-link" in page.evaluate("() => document.activeElement.className"), state
        if not state["ring"]:
            unseen.append(state)
    assert not unseen, f"focus not visible on: {unseen}"


def assert_fits_and_passes_axe(page, name: str) -> None:
    """Screenshot `name`, then: no sideways scroll and no serious axe violation."""
    screenshot(page, name)
    assert_no_horizontal_scroll(page)
    violations = serious(run_axe(page))
    assert not violations, f"{name}:\n{axe_report(violations)}"


def check_page(page, name: str, direction: str, lang: str) -> None:
    html = page.locator("html")
    assert html.get_attribute("dir") == direction, name
    assert html.get_attribute("lang") == lang, name
    assert_fits_and_passes_axe(page, name)
    assert_tap_targets(page)
    assert_visible_focus(page)
    assert_no_browser_errors(page)


@pytest.fixture
def cafe(app):
    with app.app_context():
        merchant = gen_merchant("cafe", name="Café Crème")
        gen_user(merchant, "staff", "staff@cafe.test")
        return merchant


def _works_in(app, email: str, locale: str) -> None:
    """The merchant user `email` chooses `locale` for the admin and staff pages."""
    with app.app_context(), unscoped():
        db.session.query(User).filter_by(email=email).one().locale = locale
        db.session.commit()


def _member(app, merchant, locale: str):
    with app.app_context():
        customer = gen_customer(merchant, first_name="Ada", locale=locale,
                                email=f"ada.{locale}@example.com",
                                email_consent=CONSENT_GRANTED, email_confirmed_at=utcnow())
        card = card_of(customer)
        return {"card": links.card_url(card), "prefs": links.prefs_url(customer),
                "code": card.code}


@pytest.mark.parametrize("locale", ["he", "fa"])
def test_customer_pages_mirror_right_to_left(app, cafe, live_server, new_page, locale):
    """Join (from the browser's language), card and preferences (the customer's)."""
    server = live_server(app)
    page = new_page("phone", locale=locale)
    page.goto(f"{server.url}/join/cafe")
    check_page(page, f"join-{locale}", "rtl", locale)
    urls = _member(app, cafe, locale)
    page.goto(urls["card"])
    check_page(page, f"card-{locale}", "rtl", locale)
    page.goto(urls["prefs"])
    check_page(page, f"preferences-{locale}", "rtl", locale)


@pytest.mark.parametrize("locale", ["he", "fa"])
def test_staff_pages_mirror_right_to_left(app, cafe, live_server, new_page, locale):
    """The stamping page and a card on it, for a barista who works in he or fa."""
    _works_in(app, "staff@cafe.test", locale)
    urls = _member(app, cafe, "en")
    server = live_server(app)
    page = new_page("phone")
    login_in_browser(page, server.url, "staff@cafe.test")
    check_page(page, f"staff-{locale}", "rtl", locale)
    page.goto(f"{server.url}/staff/card/{urls['code']}")
    check_page(page, f"staff-card-{locale}", "rtl", locale)
    with page.expect_navigation():
        page.locator(".topbar-language").click()
    check_page(page, f"language-{locale}", "rtl", locale)


def test_customer_and_staff_pages_in_english_have_tap_targets_and_focus(app, cafe, live_server,
                                                                       new_page):
    """The same checks left to right, so neither direction hides a fault."""
    server = live_server(app)
    page = new_page("phone")
    page.goto(f"{server.url}/join/cafe")
    check_page(page, "join-en", "ltr", "en")
    urls = _member(app, cafe, "en")
    page.goto(urls["card"])
    check_page(page, "card-en", "ltr", "en")
    page.goto(urls["prefs"])
    check_page(page, "preferences-en", "ltr", "en")
    staff = new_page("phone")
    login_in_browser(staff, server.url, "staff@cafe.test")
    check_page(staff, "staff-en", "ltr", "en")
    staff.goto(f"{server.url}/staff/card/{urls['code']}")
    check_page(staff, "staff-card-en", "ltr", "en")


@pytest.mark.parametrize("device, locale", [("desktop", "en"), ("phone", "he"), ("desktop", "fa")])
def test_the_campaign_builder_passes_axe(app, cafe, live_server, new_page, device, locale):
    """The builder, with its per-language sections, in both directions."""
    _works_in(app, "owner@cafe.test", locale)
    server = live_server(app)
    page = new_page(device)
    login_in_browser(page, server.url, "owner@cafe.test")
    page.goto(f"{server.url}/admin/campaigns/new")
    assert page.locator("html").get_attribute("dir") == ("rtl" if locale in ("he", "fa") else "ltr")
    with page.expect_navigation():  # an added language's section is checked too
        page.locator("button[name=add_variant][value=ru]").click()
    assert page.locator("#variant_ru-subject").is_visible()
    assert_fits_and_passes_axe(page, f"campaign-builder-{device}-{locale}")
    # Saved: the editor with its preview (language picker, email frame, test send).
    page.locator("#name").fill("Weekend offer")
    page.locator("#subject").fill("Hi {first_name|friend}")
    page.locator("#body_markdown").fill("Two for one.")
    page.locator("#variant_ru-subject").fill("Привет")
    page.locator("#variant_ru-body_markdown").fill("Два по цене одного.")
    with page.expect_navigation():
        page.locator("form#campaign-form button.primary").click()
    page.locator("#preview-lang").select_option("ru")
    with page.expect_navigation():
        page.locator(".preview-who button").click()
    assert page.locator(".preview-subject").inner_text() == "Привет"
    assert_fits_and_passes_axe(page, f"campaign-editor-{device}-{locale}")
    assert_no_browser_errors(page)


def test_an_automations_message_editor_passes_axe_in_hebrew(app, cafe, live_server, new_page):
    """The automation editor with a language version open, right to left on a phone."""
    _works_in(app, "owner@cafe.test", "he")
    server = live_server(app)
    page = new_page("phone")
    login_in_browser(page, server.url, "owner@cafe.test")
    page.goto(f"{server.url}/admin/automations/birthday")
    with page.expect_navigation():
        page.locator("button[name=add_variant][value=fa]").click()
    assert page.locator("#variant_fa-subject").is_visible()
    assert page.locator("html").get_attribute("dir") == "rtl"
    assert_fits_and_passes_axe(page, "automation-editor-he")
    assert_no_browser_errors(page)


def test_the_activity_log_reads_on_a_phone_in_persian(app, cafe, live_server, new_page):
    """A manager checks on the phone who reversed a stamp and why."""
    with app.app_context():
        merchant_id = cafe.id
        member = _member(app, cafe, "fa")
        _works_in(app, "owner@cafe.test", "fa")
        with unscoped():
            staff_id = db.session.query(User).filter_by(email="staff@cafe.test").one().id
            card = db.session.query(Card).filter_by(code=member["code"]).one()
            card_id, customer_id = card.id, card.customer_id
            db.session.commit()
        stamping.record_stamps(merchant_id, card_id, staff_user_id=staff_id, stamps=2,
                               now=utcnow() - timedelta(days=1))
        done = stamping.record_stamps(merchant_id, card_id, staff_user_id=staff_id,
                                      device="Mozilla/5.0 (Linux; Android 14; Pixel 8)")
        stamping.undo_stamp(merchant_id, done.visit_id, staff_user_id=staff_id,
                            reason="کارت اشتباه")
    server = live_server(app)
    page = new_page("phone")
    login_in_browser(page, server.url, "owner@cafe.test")
    # Yesterday's stamp is past the staff's 10 minutes: the owner reverses it, and
    # must say why; the refusal sits next to the field.
    page.goto(f"{server.url}/admin/customers/{customer_id}")
    with page.expect_navigation():
        page.locator("#reverse-stamp button[type=submit]").click()
    assert page.locator("#reason-error").is_visible()
    page.locator("#reason").fill("دو بار زده شد")
    with page.expect_navigation():
        page.locator("#reverse-stamp button[type=submit]").click()
    screenshot(page, "customer-after-reversal-fa")
    assert page.locator("#reverse-stamp").count() == 0  # no stamp left to reverse
    page.goto(f"{server.url}/admin/activity")
    assert page.locator("html").get_attribute("dir") == "rtl"
    log = page.locator("table").inner_text()
    assert "کارت اشتباه" in log and "دو بار زده شد" in log
    assert_fits_and_passes_axe(page, "activity-log-fa")
    # The reason left out on purpose is answered 422, with the page showing why.
    assert_no_browser_errors(page, allow=(r"422",))
