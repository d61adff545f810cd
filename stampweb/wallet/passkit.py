"""Apple Wallet passes for cards, and the PassKit web service's rules.

A card's pass is identified by (pass type id, card.wallet_serial) and
authenticated by card.wallet_auth_token, both fixed for the card's life.
Devices find passes across merchants (one phone holds cards of several
shops), so lookups by serial or device are explicitly unscoped; everything
after the lookup runs under the card's own merchant.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..i18n import LANGUAGES
from ..models import (
    REWARD_STATE_BIRTHDAY,
    VOUCHER_ACTIVE,
    Card,
    Location,
    Merchant,
    Voucher,
    WalletPass,
    WalletRegistration,
    utcnow,
)
from ..tenancy import tenant, unscoped
from . import apple_pass
from .credentials import AppleConfig, apple_config

# A device's "what changed since?" answer never claims to be newer than this
# far behind the clock: a pass whose change commits while we list is then
# listed again next time instead of being skipped for good.
LIST_SAFETY_MARGIN = timedelta(seconds=2)


class WalletNotConfigured(RuntimeError):
    """Apple Wallet lacks credentials for this merchant (the settings page says which)."""


# --- pass state ------------------------------------------------------------------------


def wallet_pass_for(card: Card) -> WalletPass:
    """The card's WalletPass row, created on first need (caller commits)."""
    row = db.session.scalar(select(WalletPass).where(WalletPass.card_id == card.id))
    if row is None:
        row = WalletPass(merchant_id=card.merchant_id, card_id=card.id,
                         modified_at=_next_second(utcnow()))
        db.session.add(row)
        db.session.flush()
    return row


def _next_second(moment: datetime) -> datetime:
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def mark_modified(row: WalletPass, now: datetime | None = None) -> datetime:
    """Move the pass's modification time on: whole seconds, strictly increasing.

    Last-Modified has one-second resolution; two versions in one second must
    still differ, or a device holding the first would get 304 for the second.
    """
    candidate = _next_second(now or utcnow())
    previous = row.modified_at
    if previous is not None and candidate <= previous:
        candidate = previous + timedelta(seconds=1)
    row.modified_at = candidate
    return candidate


def tag_of(moment: datetime) -> str:
    """A `passesUpdatedSince` tag: milliseconds since the epoch, as a JSON string."""
    return str(int(moment.replace(tzinfo=UTC).timestamp() * 1000))


def moment_of_tag(tag: str | None) -> datetime | None:
    if not tag:
        return None
    try:
        millis = int(tag)
    except ValueError:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).replace(tzinfo=None)


# --- lookups -----------------------------------------------------------------------------


@dataclass
class PassRef:
    """A pass a device asked about, resolved to its card and the merchant's credentials."""

    card: Card
    config: AppleConfig


def find_pass(pass_type_id: str, serial: str) -> PassRef | None:
    """The card behind (pass type id, serial), if Apple Wallet is configured for its merchant."""
    with unscoped():
        card = db.session.scalar(select(Card).where(Card.wallet_serial == serial))
    if card is None:
        return None
    with tenant(card.merchant_id):
        config = apple_config(card.merchant_id)
    if config is None or not hmac.compare_digest(config.pass_type_id, pass_type_id):
        return None
    return PassRef(card=card, config=config)


def authorized(card: Card, authorization: str | None) -> bool:
    """Does the `Authorization: ApplePass <token>` header carry this card's token?"""
    scheme, _sep, token = (authorization or "").partition(" ")
    if scheme != "ApplePass" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), card.wallet_auth_token.encode())


def card_by_token(token: str) -> Card | None:
    """A card by the public token of its card page (the download link carries it)."""
    with unscoped():
        return db.session.scalar(select(Card).where(Card.token == token))


def card_by_code_anywhere(code: str) -> list[Card]:
    """Cards with this printed code, across merchants (codes are unique per merchant only)."""
    with unscoped():
        return list(db.session.scalars(select(Card).where(Card.code == code.strip().upper())))


# --- building the pass -------------------------------------------------------------------------


def usable_vouchers(card: Card, now: datetime) -> list[Voucher]:
    vouchers = db.session.scalars(
        select(Voucher).where(Voucher.customer_id == card.customer_id,
                              Voucher.status == VOUCHER_ACTIVE)
    ).all()
    return [v for v in vouchers if v.expires_at is None or v.expires_at > now]


def reward_state_text(card: Card, vouchers: list[Voucher], now: datetime) -> str | None:
    """'Reward ready' / 'Birthday gift' for the pass, or None when neither applies."""
    rewards = [v for v in vouchers if v.kind == "reward"]
    if rewards:
        return _("Reward ready: %(reward)s", reward=rewards[0].title)
    birthday_vouchers = [v for v in vouchers if v.kind == "birthday"]
    birthday_state = card.reward_state == REWARD_STATE_BIRTHDAY and (
        card.reward_state_expires_at is None or card.reward_state_expires_at > now
    )
    if birthday_vouchers or birthday_state:
        gift = birthday_vouchers[0].title if birthday_vouchers else card.program.birthday_gift_text
        return _("Birthday gift: %(gift)s", gift=gift)
    return None


def staff_scan_url(card: Card) -> str:
    return f"{current_app.config['BASE_URL']}/staff/card/{card.code}"


def card_page_url(card: Card) -> str:
    return f"{current_app.config['BASE_URL']}/card/{card.token}"


def web_service_url() -> str:
    return f"{current_app.config['BASE_URL']}/wallet/"


def _pass_labels(merchant: Merchant) -> dict[str, str]:
    """The pass's fixed texts in the current language, by role."""
    return {
        "stamps": _("Stamps"), "stamps_changed": _("Stamps: %@"), "reward": _("Reward"),
        "news": _("Latest news"), "next_reward": _("Next reward"), "vouchers": _("Vouchers"),
        "member": _("Member"), "code": _("Card code"), "rules": _("How it works"),
        "card_page": _("Your card online"),
        "description": _("%(merchant)s stamp card", merchant=merchant.name),
    }


def pass_localizations(merchant: Merchant, labels: dict[str, str]) -> dict[str, dict[str, str]]:
    """<locale>.lproj/pass.strings for every shipped language: pass.json's label
    (in the customer's language) → the same label in that language. A phone set
    to a language we do not ship shows pass.json's own text."""
    localizations = {}
    for locale in LANGUAGES:
        with force_locale(locale):
            theirs = _pass_labels(merchant)
        localizations[locale] = {labels[role]: text for role, text in theirs.items()}
    return localizations


def pass_content(card: Card, merchant: Merchant, config: AppleConfig, row: WalletPass,
                 now: datetime | None = None) -> apple_pass.PassContent:
    """What the card's pass shows, in the customer's language (labels also in the
    phone's language, through pass.strings)."""
    now = now or utcnow()
    program = card.program
    customer = card.customer
    with force_locale(customer.locale or merchant.locale or "en"):
        labels = _pass_labels(merchant)
        vouchers = usable_vouchers(card, now)
        state = reward_state_text(card, vouchers, now)
        remaining = max(program.stamps_required - card.stamps, 0)
        stamps = apple_pass.PassField(
            "stamps", labels["stamps"], f"{card.stamps}/{program.stamps_required}",
            change_message=labels["stamps_changed"],
        )
        if state:
            status = apple_pass.PassField("reward_state", labels["reward"], state,
                                          change_message="%@")
        else:
            status = apple_pass.PassField(
                "reward_state", labels["reward"],
                _("%(count)d more stamps to %(reward)s", count=remaining,
                  reward=program.reward_text),
            )
        message = apple_pass.PassField(
            "message", labels["news"], row.message or "—",
            change_message="%@" if row.message else None,
        )
        locations = db.session.scalars(
            select(Location)
            .where(Location.active.is_(True), Location.latitude.is_not(None),
                   Location.longitude.is_not(None))
            .order_by(Location.id)
            .limit(apple_pass.MAX_LOCATIONS)
        ).all()
        return apple_pass.PassContent(
            pass_type_id=config.pass_type_id,
            team_id=config.team_id,
            serial=card.wallet_serial,
            auth_token=card.wallet_auth_token,
            web_service_url=web_service_url(),
            organization=merchant.name,
            description=labels["description"],
            logo_text=merchant.name,
            brand_color=merchant.brand_color,
            barcode_message=staff_scan_url(card),
            barcode_alt_text=card.code,
            header=[stamps],
            primary=[status],
            secondary=[
                apple_pass.PassField("next_reward", labels["next_reward"], program.reward_text),
                apple_pass.PassField("vouchers", labels["vouchers"], len(vouchers)),
            ],
            auxiliary=[apple_pass.PassField("member", labels["member"], customer.display_name)],
            back=[
                message,
                apple_pass.PassField("code", labels["code"], card.code),
                apple_pass.PassField(
                    "rules", labels["rules"],
                    _("Collect %(count)d stamps for %(reward)s.",
                      count=program.stamps_required, reward=program.reward_text),
                ),
                apple_pass.PassField("card_page", labels["card_page"], card_page_url(card)),
            ],
            locations=[
                (loc.latitude, loc.longitude,
                 _("%(place)s is nearby: show your card for a stamp.", place=loc.name))
                for loc in locations
            ],
            localizations=pass_localizations(merchant, labels),
        )


@dataclass
class BuiltPass:
    data: bytes
    modified_at: datetime
    serial: str


def build_card_pass(merchant_id: int, card_id: int) -> BuiltPass:
    """The signed .pkpass of a card, as it is now. Raises WalletNotConfigured."""
    with tenant(merchant_id):
        config = apple_config(merchant_id)
        if config is None:
            raise WalletNotConfigured("Apple Wallet is not configured for this merchant")
        card = db.session.get(Card, card_id)
        if card is None or card.merchant_id != merchant_id:
            raise LookupError(f"no card {card_id} for merchant {merchant_id}")
        merchant = db.session.get(Merchant, merchant_id)
        row = wallet_pass_for(card)
        db.session.commit()
        content = pass_content(card, merchant, config, row)
        images = apple_pass.pass_images(merchant.name, merchant.brand_color, merchant.logo)
        data = apple_pass.build_pkpass(content, images, config.cert, config.key, config.wwdr)
        return BuiltPass(data=data, modified_at=row.modified_at, serial=card.wallet_serial)


def not_modified_since(modified_at: datetime, if_modified_since: datetime | None) -> bool:
    """True when the device's copy (per If-Modified-Since) is current: answer 304.

    modified_at is whole seconds and moves by at least one second per change,
    so comparing with the header's one-second resolution is exact.
    """
    if if_modified_since is None:
        return False
    if if_modified_since.tzinfo is not None:
        if_modified_since = if_modified_since.astimezone(UTC).replace(tzinfo=None)
    return modified_at <= if_modified_since


# --- the device registry --------------------------------------------------------------------


def register_device(card: Card, device_library_id: str, pass_type_id: str,
                    push_token: str) -> bool:
    """Remember that a device holds the card's pass. True when new, False when known.

    Devices retry and re-register; the latest push token wins.
    """
    with tenant(card.merchant_id):
        wallet_pass_for(card)
        existing = _registration(card.id, device_library_id, pass_type_id)
        if existing is not None:
            existing.push_token = push_token
            db.session.commit()
            return False
        db.session.add(WalletRegistration(
            merchant_id=card.merchant_id, card_id=card.id, device_library_id=device_library_id,
            pass_type_id=pass_type_id, push_token=push_token,
        ))
        try:
            db.session.commit()
        except IntegrityError:
            # The same device registering twice at once: the other request won.
            db.session.rollback()
            existing = _registration(card.id, device_library_id, pass_type_id)
            if existing is not None:
                existing.push_token = push_token
                db.session.commit()
            return False
        return True


def _registration(card_id: int, device_library_id: str,
                  pass_type_id: str) -> WalletRegistration | None:
    return db.session.scalar(select(WalletRegistration).where(
        WalletRegistration.card_id == card_id,
        WalletRegistration.device_library_id == device_library_id,
        WalletRegistration.pass_type_id == pass_type_id,
    ))


def unregister_device(card: Card, device_library_id: str, pass_type_id: str) -> bool:
    """Forget a device for a pass (the pass was removed from the phone)."""
    with tenant(card.merchant_id):
        existing = _registration(card.id, device_library_id, pass_type_id)
        if existing is None:
            return False
        db.session.delete(existing)
        db.session.commit()
        return True


def serials_updated_since(device_library_id: str, pass_type_id: str,
                          tag: str | None) -> tuple[list[str], str] | None:
    """Serials of the device's passes changed after `tag`, and the next tag.

    None when the device has no registrations at all (answer 204 as well).
    All changed serials are returned, not only the newest ones.
    """
    since = moment_of_tag(tag)
    with unscoped():
        rows = db.session.execute(
            select(Card.wallet_serial, WalletPass.modified_at)
            .join(WalletRegistration, WalletRegistration.card_id == Card.id)
            .join(WalletPass, WalletPass.card_id == Card.id)
            .where(WalletRegistration.device_library_id == device_library_id,
                   WalletRegistration.pass_type_id == pass_type_id)
        ).all()
    if not rows:
        return None
    changed = sorted({serial for serial, modified in rows if since is None or modified > since})
    if not changed:
        return [], tag or ""
    newest = max(modified for _serial, modified in rows)
    return changed, tag_of(min(newest, utcnow() - LIST_SAFETY_MARGIN))


def push_tokens_for_card(card_id: int) -> list[str]:
    """Distinct push tokens of the devices holding a card's pass (tenant already set)."""
    return sorted(set(db.session.scalars(
        select(WalletRegistration.push_token).where(WalletRegistration.card_id == card_id)
    )))


def forget_push_token(merchant_id: int, push_token: str) -> int:
    """APNs said the token is gone (410 / BadDeviceToken): drop its registrations."""
    with tenant(merchant_id):
        rows = db.session.scalars(
            select(WalletRegistration).where(WalletRegistration.push_token == push_token)
        ).all()
        for row in rows:
            db.session.delete(row)
        db.session.commit()
        return len(rows)
