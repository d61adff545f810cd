"""Test factories: merchants, users, customers and cards with sensible defaults."""

from __future__ import annotations

import itertools
import re

from stampweb.accounts import create_merchant, create_user
from stampweb.extensions import db
from stampweb.models import Card, Customer, Merchant, Program, User
from stampweb.tenancy import tenant, unscoped

PASSWORD = "correct horse battery"
_seq = itertools.count(1)


def gen_merchant(slug: str | None = None, **kwargs) -> Merchant:
    """A merchant with its program, a location, and an owner `owner@<slug>.test`."""
    n = next(_seq)
    slug = slug or f"shop{n}"
    with unscoped():
        merchant = create_merchant(
            name=kwargs.pop("name", f"Shop {n}"),
            slug=slug,
            timezone=kwargs.pop("timezone", "UTC"),
            locale=kwargs.pop("locale", "en"),
            owner_email=f"owner@{slug}.test",
            owner_password=PASSWORD,
        )
        for key, value in kwargs.items():
            setattr(merchant, key, value)
        db.session.commit()
        db.session.refresh(merchant)
    return merchant


def gen_user(merchant: Merchant, role: str = "staff", email: str | None = None) -> User:
    with tenant(merchant.id):
        user = create_user(
            merchant_id=merchant.id,
            email=email or f"{role}{next(_seq)}@{merchant.slug}.test",
            password=PASSWORD,
            role=role,
        )
        db.session.commit()
        db.session.refresh(user)
        return user


def owner_of(merchant: Merchant) -> User:
    with unscoped():
        return db.session.query(User).filter_by(email=f"owner@{merchant.slug}.test").one()


def gen_customer(merchant: Merchant, **kwargs) -> Customer:
    """A customer with a card on the merchant's program."""
    n = next(_seq)
    with tenant(merchant.id):
        first = kwargs.pop("first_name", f"Customer{n}")
        customer = Customer(
            merchant_id=merchant.id,
            first_name=first,
            last_name=kwargs.pop("last_name", "Test"),
            email=kwargs.pop("email", f"customer{n}@example.com"),
            **kwargs,
        )
        customer.search_name = f"{customer.first_name} {customer.last_name}".lower()
        db.session.add(customer)
        db.session.flush()
        program = db.session.query(Program).filter_by(merchant_id=merchant.id).first()
        db.session.add(
            Card(merchant_id=merchant.id, customer_id=customer.id, program_id=program.id)
        )
        db.session.commit()
        db.session.refresh(customer)
        return customer


def csrf_token_from(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'"X-CSRFToken": "([^"]+)"', html
    )
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client, email: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf_token_from(page.text)},
    )


def card_of(customer: Customer) -> Card:
    with tenant(customer.merchant_id):
        card = db.session.query(Card).filter_by(customer_id=customer.id).one()
        db.session.refresh(card)
        return card
