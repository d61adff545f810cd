"""The demo merchant `make run` seeds: a cafe with a few hundred believable customers."""

from __future__ import annotations

import random
import secrets
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from .accounts import create_merchant, create_user
from .extensions import db
from .models import (
    CONSENT_GRANTED,
    CONSENT_NONE,
    ROLE_MANAGER,
    ROLE_STAFF,
    VISIT_STAMP,
    VOUCHER_ACTIVE,
    VOUCHER_REDEEMED,
    Card,
    ConsentEvent,
    Customer,
    Location,
    Merchant,
    Program,
    Visit,
    Voucher,
    utcnow,
)
from .tenancy import tenant

DEMO_SLUG = "demo"
DEMO_USERS = ("owner@demo.test", "manager@demo.test", "staff@demo.test")

FIRST_NAMES = [
    "Aigerim", "Daniyar", "Olga", "Ivan", "Noa", "Yael", "Sara", "Reza", "Maryam",
    "Emma", "Liam", "Sofia", "Lucas", "Mia", "Arman", "Dana", "Timur", "Leila",
    "Nika", "Omar", "Anna", "David", "Ella", "Amir", "Zhanna", "Pavel", "Tom",
]
LAST_NAMES = [
    "Nurlanova", "Sadykov", "Petrova", "Ivanov", "Levi", "Cohen", "Mizrahi",
    "Ahmadi", "Karimi", "Smith", "Brown", "Garcia", "Muller", "Rossi", "Bekov",
    "Abenova", "Kuznetsov", "Hosseini", "Novak", "Haddad", "Friedman",
]
LOCALES = ["en"] * 6 + ["ru"] * 3 + ["kk", "he", "fa"]


def demo_exists() -> bool:
    return db.session.scalar(select(Merchant.id).filter_by(slug=DEMO_SLUG)) is not None


def seed_demo(password: str | None = None, customers: int = 300, seed: int = 7) -> str:
    """Create the demo merchant and its users and customers; return the password."""
    password = password or secrets.token_urlsafe(9)
    merchant = create_merchant(
        name="Demo Coffee",
        slug=DEMO_SLUG,
        timezone="Asia/Almaty",
        locale="en",
        owner_email=DEMO_USERS[0],
        owner_password=password,
        owner_name="Olivia Owner",
    )
    merchant.sender_name = "Demo Coffee"
    merchant.sender_email = "hello@demo.test"
    merchant.postal_address = "12 Abay Avenue, Almaty 050000"
    with tenant(merchant.id):
        create_user(
            merchant_id=merchant.id, email=DEMO_USERS[1], password=password,
            role=ROLE_MANAGER, name="Max Manager",
        )
        create_user(
            merchant_id=merchant.id, email=DEMO_USERS[2], password=password,
            role=ROLE_STAFF, name="Sam Barista",
        )
        program = db.session.scalar(select(Program))
        program.reward_text = "A free coffee of your choice"
        program.birthday_gift_text = "A slice of cake on us"
        first = db.session.scalar(select(Location))
        first.name, first.address = "Demo Coffee Abay", "12 Abay Avenue, Almaty"
        first.latitude, first.longitude = 43.2389, 76.9455
        second = Location(
            merchant_id=merchant.id, name="Demo Coffee Dostyk",
            address="40 Dostyk Avenue, Almaty", latitude=43.2425, longitude=76.9560,
        )
        db.session.add(second)
        db.session.flush()
        _seed_customers(merchant, program, [first, second], customers, random.Random(seed))
    db.session.commit()
    return password


def _seed_customers(merchant, program, locations, count, rng) -> None:
    now = utcnow()
    today = now.date()
    used_emails = set()
    for n in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}.{n}@example.com".lower()
        if email in used_emails:
            continue
        used_emails.add(email)
        joined = now - timedelta(days=rng.randint(1, 400), minutes=rng.randint(0, 1440))
        customer = Customer(
            merchant_id=merchant.id,
            first_name=first,
            last_name=last,
            search_name=f"{first} {last}".lower(),
            email=email if rng.random() < 0.85 else None,
            phone=f"+7701{n:07d}" if rng.random() < 0.6 else None,
            locale=rng.choice(LOCALES),
            joined_at=joined,
        )
        if rng.random() < 0.7:
            if n % 25 == 0:
                # A few birthdays this week, so the badges and automations show.
                birthday = today + timedelta(days=rng.randint(0, 6))
            else:
                birthday = today + timedelta(days=rng.randint(0, 364))
            customer.birthday_month, customer.birthday_day = birthday.month, birthday.day
            customer.birthday_year = rng.randint(1960, 2006) if rng.random() < 0.5 else None
        if customer.email is None and customer.phone is None:
            customer.phone = f"+7702{n:07d}"
        db.session.add(customer)
        db.session.flush()
        for channel, rate in (("email", 0.6), ("wallet", 0.4), ("reminders", 0.5)):
            granted = rng.random() < rate and (channel != "email" or customer.email)
            setattr(customer, f"{channel}_consent", CONSENT_GRANTED if granted else CONSENT_NONE)
            if granted:
                db.session.add(ConsentEvent(
                    merchant_id=merchant.id, customer_id=customer.id, channel=channel,
                    state=CONSENT_GRANTED, source="join", created_at=joined,
                    wording="Seeded demo consent",
                ))
                if channel == "email":
                    customer.email_confirmed_at = joined + timedelta(minutes=3)
        card = Card(merchant_id=merchant.id, customer_id=customer.id, program_id=program.id,
                    created_at=joined)
        db.session.add(card)
        db.session.flush()
        _seed_visits(merchant, program, locations, customer, card, rng, now)


def _seed_visits(merchant, program, locations, customer, card, rng, now) -> None:
    # Regulars, occasionals and the lapsed, so segments have something to find.
    profile = rng.random()
    if profile < 0.25:
        visits, recent_days = rng.randint(12, 40), 10
    elif profile < 0.7:
        visits, recent_days = rng.randint(2, 11), 60
    elif profile < 0.9:
        visits, recent_days = rng.randint(1, 6), 200
    else:
        visits, recent_days = 0, 0
    span = max((now - customer.joined_at).days, 1)
    times = sorted(
        customer.joined_at + timedelta(days=rng.uniform(0, span), minutes=rng.randint(0, 600))
        for _ in range(visits)
    )
    if profile >= 0.25 and times:
        # Push the lapsed further back.
        last_allowed = now - timedelta(days=rng.randint(0, recent_days))
        times = [min(t, last_allowed) for t in times]
    stamps = 0
    for at in times:
        amount = Decimal(rng.randint(150, 2400)) / 100 if rng.random() < 0.8 else None
        visit = Visit(
            merchant_id=merchant.id, customer_id=customer.id, card_id=card.id,
            location_id=rng.choice(locations).id, kind=VISIT_STAMP, stamps=1,
            amount=amount, created_at=at, source="staff",
        )
        db.session.add(visit)
        customer.visit_count += 1
        customer.total_spent += amount or 0
        customer.last_visit_at = at
        stamps += 1
        if stamps >= program.stamps_required:
            stamps = 0
            card.rewards_earned += 1
            db.session.flush()
            expires = at + timedelta(days=program.voucher_validity_days)
            redeemed = expires < now or rng.random() < 0.5
            db.session.add(Voucher(
                merchant_id=merchant.id, customer_id=customer.id, card_id=card.id,
                kind="reward", title=program.reward_text, issued_at=at, expires_at=expires,
                status=VOUCHER_REDEEMED if redeemed else VOUCHER_ACTIVE,
                redeemed_at=min(at + timedelta(days=rng.randint(1, 20)), now) if redeemed else None,
                visit_id=visit.id,
            ))
    card.stamps = stamps
    card.last_stamp_at = times[-1] if times else None
