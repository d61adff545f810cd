"""The staff page through HTTP: find a card, stamp, redeem, undo, with and without htmx."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from stampweb.extensions import db
from stampweb.loyalty import stamping, vouchers
from stampweb.models import AuditLog, Card, Customer, Location, Program, Visit, Voucher, utcnow
from stampweb.tenancy import tenant

from .factories import card_of, csrf_token_from, gen_customer, gen_merchant, gen_user, login

HTMX = {"HX-Request": "true"}


@pytest.fixture
def shop(app, client):
    """A cafe with a second location, a logged-in staff user and one customer."""
    with app.app_context():
        merchant = gen_merchant("bean", name="Bean There")
        staff = gen_user(merchant, "staff", "barista@bean.test")
        customer = gen_customer(merchant, first_name="Ada", last_name="Lovelace",
                                phone="+447700900123", email="ada@example.com")
        with tenant(merchant.id):
            program = db.session.scalar(select(Program))
            program.stamps_required = 3
            program.reward_text = "Free cortado"
            db.session.add(Location(merchant_id=merchant.id, name="Harbour kiosk"))
            db.session.commit()
        card = card_of(customer)
        info = {"merchant_id": merchant.id, "staff_id": staff.id, "card_id": card.id,
                "code": card.code, "customer_id": customer.id}
    login(client, "barista@bean.test")
    return info


def _form_fields(html: str, action_fragment: str) -> dict:
    """The hidden inputs of the form whose action contains `action_fragment`."""
    start = html.index(f'action="{action_fragment}')
    form = html[start: html.index("</form>", start)]
    return dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form))


def _stamp_post(client, code, extra=None, headers=None):
    page = client.get(f"/staff/card/{code}")
    data = _form_fields(page.text, f"/staff/card/{code}/stamp")
    data.update(extra or {})
    return client.post(f"/staff/card/{code}/stamp", data=data, headers=headers or {})


def _visit_count(app, shop) -> int:
    with app.app_context(), tenant(shop["merchant_id"]):
        return db.session.scalar(select(func.count(Visit.id)))


def test_staff_role_can_open_the_staff_page(client, shop):
    """A user with the staff role sees the search box and their location."""
    page = client.get("/staff")
    assert page.status_code == 200
    assert 'hx-get="/staff/search"' in page.text
    assert "input changed delay:250ms" in page.text
    assert "Bean There" in page.text  # the default location is the first one


def test_search_finds_by_phone_email_name_and_code(client, shop):
    """Live search answers an htmx fragment with links to the card view."""
    for query in ("0900123", "ada@", "ada", "lovelace", shop["code"].lower()):
        response = client.get("/staff/search", query_string={"q": query}, headers=HTMX)
        assert response.status_code == 200, query
        assert f'href="/staff/card/{shop["code"]}"' in response.text, query
        assert "<html" not in response.text
    nothing = client.get("/staff/search", query_string={"q": "zzzz"}, headers=HTMX)
    assert "No card matches" in nothing.text


def test_search_without_javascript_renders_the_page_and_a_full_code_opens_the_card(
    client, shop
):
    """The search form posts as a normal GET; typing the whole code jumps to the card."""
    page = client.get("/staff/search", query_string={"q": "ada"})
    assert "<html" in page.text and f'/staff/card/{shop["code"]}' in page.text
    jump = client.get("/staff/search", query_string={"q": shop["code"]})
    assert jump.status_code == 302
    assert jump.headers["Location"].endswith(f"/staff/card/{shop['code']}")


def test_card_view_shows_name_stamps_and_the_stamp_button(client, shop):
    """The card view: customer's name, the stamp grid and a big Add stamp button."""
    page = client.get(f"/staff/card/{shop['code']}")
    assert page.status_code == 200
    assert "Ada Lovelace" in page.text
    assert page.text.count('class="stamp"') == 3
    assert "Add stamp" in page.text
    assert 'name="request_key"' in page.text


def test_qr_url_opens_the_card_on_the_staff_page(app, client, shop):
    """staff_card_url(card) is the URL a card's QR encodes, and it opens this card."""
    with app.test_request_context(), tenant(shop["merchant_id"]):
        card = db.session.get(Card, shop["card_id"])
        url = stamping.staff_card_url(card)
    assert url.endswith(f"/staff/card/{shop['code']}")
    path = url[url.index("/staff/"):]
    assert "Ada Lovelace" in client.get(path).text


def test_one_tap_stamps_and_redirects_back_to_the_card(app, client, shop):
    """No-JS POST: one stamp, 303 back to the card, a message on the card page."""
    response = _stamp_post(client, shop["code"])
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/staff/card/{shop['code']}")
    page = client.get(response.headers["Location"])
    assert "Stamped: 1 of 3." in page.text
    assert page.text.count('class="stamp filled"') == 1
    assert _visit_count(app, shop) == 1


def test_htmx_stamp_returns_the_card_fragment(app, client, shop):
    """With htmx the answer is the card fragment, with a fresh request key."""
    page = client.get(f"/staff/card/{shop['code']}")
    data = _form_fields(page.text, f"/staff/card/{shop['code']}/stamp")
    response = client.post(f"/staff/card/{shop['code']}/stamp", data=data, headers=HTMX)
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<section id="card"')
    assert "Stamped: 1 of 3." in response.text
    new_key = _form_fields(response.text, f"/staff/card/{shop['code']}/stamp")["request_key"]
    assert new_key != data["request_key"]


def test_replayed_stamp_form_records_one_visit(app, client, shop):
    """The same form posted twice (double tap, resubmission) gives one visit."""
    page = client.get(f"/staff/card/{shop['code']}")
    data = _form_fields(page.text, f"/staff/card/{shop['code']}/stamp")
    first = client.post(f"/staff/card/{shop['code']}/stamp", data=data, headers=HTMX)
    second = client.post(f"/staff/card/{shop['code']}/stamp", data=data, headers=HTMX)
    assert "Stamped: 1 of 3." in first.text and "Stamped: 1 of 3." in second.text
    assert _visit_count(app, shop) == 1


def test_a_stamp_runs_only_the_queries_it_needs(app, client, shop):
    """An htmx stamp: the user (with what the merchant has set up), the card with the
    location and the vouchers shown, then the write; nothing after the commit, no ORM
    reload of the user or the card, no wallet or webhook look-up for a merchant with
    neither."""
    page = client.get(f"/staff/card/{shop['code']}")
    data = _form_fields(page.text, f"/staff/card/{shop['code']}/stamp")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(" ".join(statement.split()[:2]))

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
    try:
        response = client.post(f"/staff/card/{shop['code']}/stamp", data=data, headers=HTMX)
    finally:
        with app.app_context():
            event.remove(db.engine, "before_cursor_execute", record)
    assert "Stamped: 1 of 3." in response.text
    assert statements == [
        "BEGIN", "SELECT user.id,",             # the logged-in user (every request)
        "SELECT card.id,",                       # the card and where the staff member is
        "SELECT voucher.id,",                    # the vouchers the answer shows
        "COMMIT", "BEGIN IMMEDIATE",             # the write lock, on the same connection
        "SELECT card.id,",                       # the write, under the card's lock
        "INSERT INTO", "UPDATE card", "UPDATE customer", "INSERT INTO",
    ], statements


def test_n_stamps_and_amount_fill_the_card_and_issue_the_reward(app, client, shop):
    """Several stamps with an amount: the reward voucher appears with a Redeem button."""
    response = _stamp_post(client, shop["code"], {"stamps": "4", "amount": "12,40"},
                           headers=HTMX)
    assert "reward issued (Free cortado)" in response.text
    assert "Redeem" in response.text and "Reward ready" in response.text
    with app.app_context(), tenant(shop["merchant_id"]):
        visit = db.session.scalar(select(Visit))
        assert (visit.stamps, str(visit.amount)) == (4, "12.40")
        assert db.session.scalar(select(Customer.total_spent)) == visit.amount


def test_cooldown_shows_a_clear_message(app, client, shop):
    """A second stamp within the cooldown is refused with when the next is possible."""
    _stamp_post(client, shop["code"])
    response = _stamp_post(client, shop["code"], headers=HTMX)
    assert "Already stamped less than a minute ago" in response.text
    assert "next stamp possible in 5 minutes" in response.text
    assert _visit_count(app, shop) == 1
    # Without JavaScript the message is flashed on the card page.
    redirect = _stamp_post(client, shop["code"])
    assert "Already stamped" in client.get(redirect.headers["Location"]).text


@pytest.mark.parametrize(
    ("extra", "message", "kept"),
    [
        ({"stamps": "0"}, "Enter 1 to 20.", 'value="0"'),
        ({"stamps": "many"}, "Enter a whole number.", 'value="many"'),
        ({"amount": "-3"}, "The amount cannot be negative.", 'value="-3"'),
        ({"amount": "lots"}, "Enter the amount as a number", 'value="lots"'),
    ],
)
def test_bad_input_is_shown_next_to_the_field_and_kept(app, client, shop, extra, message, kept):
    """Bad stamps or amount: re-rendered with the message beside the field, nothing saved."""
    response = _stamp_post(client, shop["code"], extra)
    assert response.status_code == 422
    assert message in response.text
    assert kept in response.text
    assert re.search(r'class="field has-error".*?class="error"', response.text, re.S)
    assert _visit_count(app, shop) == 0


def test_redeem_needs_a_confirmation_and_works_once(app, client, shop):
    """Redeem: GET shows a confirmation page (no JS); POST redeems; a second POST refuses."""
    with app.app_context():
        result = stamping.record_stamps(shop["merchant_id"], shop["card_id"], stamps=3)
    voucher_id = result.voucher_ids[0]
    url = f"/staff/card/{shop['code']}/vouchers/{voucher_id}/redeem"
    card_page = client.get(f"/staff/card/{shop['code']}")
    assert f'hx-post="{url}"' in card_page.text and "hx-confirm=" in card_page.text
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Yes, redeem" in confirm.text
    token = csrf_token_from(confirm.text)
    done = client.post(url, data={"csrf_token": token})
    assert done.status_code == 303
    assert "Redeemed: Free cortado." in client.get(done.headers["Location"]).text
    again = client.post(url, data={"csrf_token": token}, headers=HTMX)
    assert "already redeemed" in again.text
    with app.app_context(), tenant(shop["merchant_id"]):
        voucher = db.session.get(Voucher, voucher_id)
        assert (voucher.status, voucher.redeemed_by_user_id) == ("redeemed", shop["staff_id"])
        assert voucher.redeemed_location_id is not None


def test_htmx_redeem_sends_the_csrf_header_only(app, client, shop):
    """The htmx Redeem button posts no form fields: the X-CSRFToken header suffices."""
    with app.app_context():
        result = stamping.record_stamps(shop["merchant_id"], shop["card_id"], stamps=3)
    page = client.get(f"/staff/card/{shop['code']}")
    url = f"/staff/card/{shop['code']}/vouchers/{result.voucher_ids[0]}/redeem"
    response = client.post(url, headers={**HTMX, "X-CSRFToken": csrf_token_from(page.text)})
    assert response.status_code == 200 and "Redeemed" in response.text
    assert client.post(url, headers=HTMX).status_code == 400  # no token at all


def test_undo_last_stamp_within_ten_minutes(app, client, shop):
    """Undo is offered after a stamp; using it writes a reversal and the button goes."""
    _stamp_post(client, shop["code"])
    page = client.get(f"/staff/card/{shop['code']}")
    assert "Undo last stamp" in page.text
    data = _form_fields(page.text, f"/staff/card/{shop['code']}/undo")
    response = client.post(f"/staff/card/{shop['code']}/undo", data=data, headers=HTMX)
    assert "The last stamp was undone." in response.text
    assert "Undo last stamp" not in response.text
    with app.app_context(), tenant(shop["merchant_id"]):
        assert db.session.scalar(select(Card.stamps)) == 0
        assert db.session.scalar(select(func.count(Visit.id)).filter_by(kind="reversal")) == 1


def test_undo_is_not_offered_after_ten_minutes(app, client, shop):
    """An older stamp shows no Undo button."""
    with app.app_context():
        stamping.record_stamps(shop["merchant_id"], shop["card_id"],
                               now=utcnow() - timedelta(minutes=11))
    assert "Undo last stamp" not in client.get(f"/staff/card/{shop['code']}").text


def test_badges_show_on_the_card(app, client, shop):
    """Birthday gift due and reward ready show as badges; the gift can be given."""
    with app.app_context(), tenant(shop["merchant_id"]):
        db.session.get(Card, shop["card_id"]).reward_state = "birthday_gift"
        db.session.commit()
        vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="reward",
                       title="Free cortado", valid_days=3)
        db.session.commit()
    page = client.get(f"/staff/card/{shop['code']}")
    for text in ("Birthday gift due", "Reward ready", "A voucher expires soon", "Give gift"):
        assert text in page.text
    confirm = client.get(f"/staff/card/{shop['code']}/birthday")
    given = client.post(f"/staff/card/{shop['code']}/birthday",
                        data={"csrf_token": csrf_token_from(confirm.text)}, headers=HTMX)
    assert "Birthday gift given" in given.text
    assert "Birthday gift due" not in given.text


def test_every_action_is_audited_with_staff_time_and_location(app, client, shop):
    """Stamp and undo from the page: audit rows with the staff user, location and IP."""
    _stamp_post(client, shop["code"])
    page = client.get(f"/staff/card/{shop['code']}")
    client.post(f"/staff/card/{shop['code']}/undo",
                data=_form_fields(page.text, f"/staff/card/{shop['code']}/undo"))
    with app.app_context(), tenant(shop["merchant_id"]):
        rows = db.session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        visit = db.session.scalar(select(Visit).filter_by(kind="stamp"))
    assert [r.action for r in rows] == ["stamp", "stamp.undo"]
    for row in rows:
        assert row.user_id == shop["staff_id"]
        assert row.location_id is not None and row.created_at is not None
        assert row.ip == "127.0.0.1"
    assert visit.device  # the phone's user agent


def test_staff_can_choose_their_location(app, client, shop):
    """Picking another location keeps it for the next stamps."""
    page = client.get("/staff")
    with app.app_context(), tenant(shop["merchant_id"]):
        kiosk = db.session.scalar(select(Location).filter_by(name="Harbour kiosk"))
    response = client.post("/staff/location", data={
        "csrf_token": csrf_token_from(page.text), "location_id": kiosk.id, "next": "/staff"})
    assert response.status_code == 303
    assert "You are stamping at Harbour kiosk." in client.get("/staff").text
    _stamp_post(client, shop["code"])
    with app.app_context(), tenant(shop["merchant_id"]):
        assert db.session.scalar(select(Visit.location_id)) == kiosk.id


def test_a_closed_location_is_not_stamped_at(app, client, shop):
    """The chosen location shows on the card and gets the stamps; once it is closed
    (inactive), the card falls back to the merchant's first active location."""
    page = client.get("/staff")
    with app.app_context(), tenant(shop["merchant_id"]):
        kiosk = db.session.scalar(select(Location).filter_by(name="Harbour kiosk"))
        first_id = db.session.scalar(select(Location.id).order_by(Location.id))
    client.post("/staff/location", data={
        "csrf_token": csrf_token_from(page.text), "location_id": kiosk.id, "next": "/staff"})
    assert "at Harbour kiosk" in client.get(f"/staff/card/{shop['code']}").text
    with app.app_context(), tenant(shop["merchant_id"]):
        db.session.get(Location, kiosk.id).active = False
        db.session.commit()
    card_page = client.get(f"/staff/card/{shop['code']}").text
    assert "at Harbour kiosk" not in card_page and "at Bean There" in card_page
    _stamp_post(client, shop["code"], headers=HTMX)
    with app.app_context(), tenant(shop["merchant_id"]):
        assert db.session.scalar(select(Visit.location_id)) == first_id


def test_another_merchants_card_is_not_found(app, client, shop):
    """A card code or voucher of another merchant answers 404 on every staff route."""
    with app.app_context():
        other = gen_merchant("rival")
        other_card = card_of(gen_customer(other))
        code = other_card.code
        result = stamping.record_stamps(other.id, other_card.id, stamps=10)
        other_location = Location(merchant_id=other.id, name="Rival HQ")
        with tenant(other.id):
            db.session.add(other_location)
            db.session.commit()
            other_location_id = other_location.id
    token = csrf_token_from(client.get("/staff").text)
    assert client.get(f"/staff/card/{code}").status_code == 404
    assert client.post(f"/staff/card/{code}/stamp", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/staff/card/{code}/undo", data={"csrf_token": token}).status_code == 404
    own = f"/staff/card/{shop['code']}/vouchers/{result.voucher_ids[0]}/redeem"
    assert client.get(own).status_code == 404
    assert client.post(own, data={"csrf_token": token}).status_code == 404
    client.post("/staff/location", data={"csrf_token": token, "location_id": other_location_id})
    assert "Rival HQ" not in client.get("/staff").text
    assert "Rival HQ" not in client.get(f"/staff/card/{shop['code']}").text
    search = client.get("/staff/search", query_string={"q": code}, headers=HTMX)
    assert "No card matches" in search.text and f"/staff/card/{code}" not in search.text


def test_staff_page_needs_login(app):
    """Logged out, every staff URL leads to the login page."""
    anonymous = app.test_client()
    for path in ("/staff", "/staff/search?q=ab", "/staff/card/ABCDEFGH"):
        response = anonymous.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_page_has_no_inline_styles_or_scripts(client, shop):
    """CSP allows no inline script or style: the card page uses classes only."""
    page = client.get(f"/staff/card/{shop['code']}").text
    assert "style=" not in page
    assert "<script>" not in page and "onclick" not in page


MEASURE_PAGE = """<html><body><iframe id="f" src="{name}" width="360" height="800"></iframe>
<script>
document.getElementById("f").addEventListener("load", () => {{
  const doc = document.getElementById("f").contentDocument;
  let right = 0;
  for (const el of doc.querySelectorAll("main *")) {{
    right = Math.max(right, el.getBoundingClientRect().right);
  }}
  const small = [...doc.querySelectorAll("main button, main .button")]
    .filter((el) => el.getBoundingClientRect().height < 44).length;
  document.body.setAttribute("data-measure", JSON.stringify({{
    width: doc.defaultView.innerWidth, scroll: doc.documentElement.scrollWidth,
    right: Math.round(right), small: small}}));
}});
</script></body></html>"""


@pytest.mark.browser
def test_card_page_fits_a_360px_phone_without_horizontal_scroll(app, client, shop, tmp_path):
    """Headless Chromium at 360 px: nothing wider than the screen, buttons >= 44 px tall."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    from .servers import find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine")
    with app.app_context(), tenant(shop["merchant_id"]):
        customer = db.session.get(Customer, shop["customer_id"])
        customer.first_name = "Maximiliana-Josephine"
        customer.last_name = "Vandersteenhovenmeyer"
        db.session.commit()
        stamping.record_stamps(shop["merchant_id"], shop["card_id"], stamps=4)
        vouchers.issue(shop["merchant_id"], shop["customer_id"], kind="campaign",
                       title="Twenty percent off any pastry of your choice", valid_days=3)
        db.session.commit()
    shutil.copytree(Path(app.static_folder), tmp_path / "static")
    pages = {"card": f"/staff/card/{shop['code']}", "search": "/staff/search?q=max"}
    for name, path in pages.items():
        html = client.get(path).text.replace('"/static/', '"static/')
        (tmp_path / f"{name}.html").write_text(html)
        (tmp_path / f"measure_{name}.html").write_text(MEASURE_PAGE.format(name=f"{name}.html"))
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--allow-file-access-from-files", "--virtual-time-budget=3000",
             "--dump-dom", f"file://{tmp_path}/measure_{name}.html"],
            capture_output=True, text=True, timeout=60,
        ).stdout
        found = re.search(r"data-measure=\"([^\"]+)\"", dom)
        assert found, f"no measurement for {name}"
        measure = json.loads(found.group(1).replace("&quot;", '"'))
        assert measure["width"] == 360, measure
        assert measure["scroll"] <= 360 and measure["right"] <= 360, (name, measure)
        assert measure["small"] == 0, (name, measure)
