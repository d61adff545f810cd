"""Bad input never loses what was typed: in a real browser, each form sent with a
mistake comes back with the message right beside the field at fault (tied to it
by aria-describedby, the field marked aria-invalid), everything else as typed,
and nothing saved.

One case per form a person fills in: the customer's join and preferences forms,
the owner's program, shop settings, locations and customer forms, and the staff
page's "several stamps" form (sent by htmx).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from stampweb.extensions import db
from stampweb.links import prefs_url
from stampweb.models import Customer, Location, Merchant, Program, Visit
from stampweb.tenancy import tenant, unscoped

from .browser import assert_no_browser_errors, assert_no_horizontal_scroll, login_in_browser
from .factories import card_of, gen_customer, gen_merchant, gen_user

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class FormCase:
    # Who is logged in ("owner", "staff", or None for the customer portal).
    who: str | None
    # Path of the page; "{customer}" and "{card}" are filled in.
    path: str
    # Input id -> what to type (or choose); "" clears the input.
    typed: dict[str, str]
    # Input ids that must come back with a message beside them.
    errors: tuple[str, ...]
    # The submit button's accessible name.
    submit: str
    # Open a <details> with this summary text before typing.
    open_details: str | None = None
    # Inputs whose typed value must come back (default: every typed input).
    kept: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)


CASES = {
    "join": FormCase(
        None, "/join/formcafe",
        {"first_name": "", "last_name": "Levi", "email": "not-an-email", "phone": "050 123"},
        ("first_name", "email"), "Get my card",
    ),
    "preferences": FormCase(
        None, "{prefs}", {"first_name": "", "last_name": "Kept Surname"},
        ("first_name",), "Save",
    ),
    "program": FormCase(
        "owner", "/admin/program",
        {"stamps_required": "0", "reward_text": "A kept reward", "voucher_validity_days": "30"},
        ("stamps_required",), "Save",
    ),
    "shop settings": FormCase(
        "owner", "/admin/settings",
        {"name": "A kept name", "sender_email": "not-an-email"},
        ("sender_email",), "Save",
    ),
    "new location": FormCase(
        "owner", "/admin/locations", {"name": "", "address": "1 Kept Street"},
        ("name",), "Add",
    ),
    "customer": FormCase(
        "owner", "/admin/customers/{customer}",
        {"first_name": "Kept", "last_name": "Name", "email": "not-an-email"},
        ("email",), "Save",
    ),
    "several stamps": FormCase(
        "staff", "/staff/card/{card}", {"stamps": "0", "amount": "4.50"},
        ("stamps",), "Add stamp", open_details="Several stamps or an amount",
    ),
}


def _state(merchant_id: int) -> tuple:
    """Everything the cases could wrongly save, to compare before and after."""
    with unscoped():
        merchant = db.session.get(Merchant, merchant_id)
        merchant_row = (merchant.name, merchant.sender_email)
    with tenant(merchant_id):
        program = db.session.scalars(select(Program)).one()
        customers = db.session.execute(
            select(Customer.first_name, Customer.last_name, Customer.email).order_by(Customer.id)
        ).all()
        return (
            merchant_row,
            (program.stamps_required, program.reward_text, program.voucher_validity_days),
            [tuple(c) for c in customers],
            db.session.scalar(select(func.count()).select_from(Location)),
            db.session.scalar(select(func.count()).select_from(Visit)),
        )


def _fill(page: Page, input_id: str, value: str) -> None:
    control = page.locator(f"#{input_id}")
    if control.evaluate("el => el.tagName") == "SELECT":
        control.select_option(value)
    else:
        control.fill(value)


@pytest.mark.parametrize("name", CASES)
def test_form_sent_with_a_mistake_keeps_what_was_typed(name, app, live_server, new_page):
    """The message sits beside the field at fault, the other inputs keep their
    values, and nothing is saved."""
    case = CASES[name]
    with app.app_context():
        merchant = gen_merchant("formcafe", name="Form Café")
        merchant_id = merchant.id
        staff_email = gen_user(merchant, "staff").email
        customer = gen_customer(merchant, first_name="Dana", last_name="Levi")
        customer_id, card_code = customer.id, card_of(customer).code
    server = live_server(app)
    with app.app_context():
        with tenant(merchant_id):
            prefs = prefs_url(db.session.get(Customer, customer_id))
        before = _state(merchant_id)
    path = case.path.format(customer=customer_id, card=card_code, prefs=prefs)

    page = new_page("phone")
    if case.who:
        email = staff_email if case.who == "staff" else "owner@formcafe.test"
        login_in_browser(page, server.url, email)
    page.goto(path if path.startswith("http") else server.url + path)
    if case.open_details:
        page.get_by_text(case.open_details).click()
    for input_id, value in case.typed.items():
        _fill(page, input_id, value)
    form = page.locator("form", has=page.locator(f"#{next(iter(case.typed))}"))
    form.get_by_role("button", name=case.submit, exact=True).click()

    for input_id in case.errors:
        message = page.locator(f"#{input_id}-error")
        expect(message).to_be_visible()
        control = page.locator(f"#{input_id}")
        expect(control).to_have_attribute("aria-invalid", "true")
        expect(control).to_have_attribute("aria-describedby", f"{input_id}-error")
        # Beside the field: inside the same .field wrapper as the input.
        wrapper = page.locator(".field.has-error", has=control)
        expect(wrapper.locator(f"#{input_id}-error")).to_have_count(1)
    for input_id in case.kept or tuple(case.typed):
        expect(page.locator(f"#{input_id}")).to_have_value(case.typed[input_id])

    assert_no_horizontal_scroll(page)
    assert_no_browser_errors(page, allow=(r"error response: 4\d\d (POST|GET) ",))
    with app.app_context():
        assert _state(merchant_id) == before, "bad input saved something"
