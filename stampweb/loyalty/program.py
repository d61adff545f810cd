"""Program settings, merchant settings and locations: what the owner or a manager configures.

Every function takes the merchant's id and plain values, checks them against
the same limits the admin forms show, and raises `SettingsError` naming the
field at fault, so an API or a CLI command gets the same answers as the page.
Nothing is saved unless every value is acceptable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ..extensions import db
from ..i18n import LANGUAGES
from ..models import Location, Merchant, Program
from ..tenancy import tenant
from ..validation import normalize_email_address

# The limits the forms show and the services enforce.
STAMPS_REQUIRED = (1, 100)
VOUCHER_VALIDITY_DAYS = (1, 3650)
STAMP_COOLDOWN_MINUTES = (0, 1440)
DAILY_STAMP_CAP = (1, 100)
FREQUENCY_CAP = (1, 50)
HOURS = (0, 23)
LATITUDE = (-90.0, 90.0)
LONGITUDE = (-180.0, 180.0)
BRAND_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


class SettingsError(ValueError):
    """Unacceptable settings; `errors` maps each field at fault to its message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _check_range(errors: dict, field: str, value, bounds) -> None:
    low, high = bounds
    if value is None or not (low <= value <= high):
        errors[field] = _l("Enter a number from %(low)s to %(high)s.", low=low, high=high)


def _check_length(errors: dict, field: str, value: str | None, maximum: int, required=False):
    if required and not (value or "").strip():
        errors[field] = _l("This field is required.")
    elif value and len(value) > maximum:
        errors[field] = _l("Use at most %(n)s characters.", n=maximum)


# --- program -----------------------------------------------------------------


def get_program(merchant_id: int) -> Program:
    """The merchant's stamp card program (one per merchant today)."""
    with tenant(merchant_id):
        program = db.session.scalars(select(Program).order_by(Program.id)).first()
    if program is None:
        raise LookupError(f"merchant {merchant_id} has no program")
    return program


def update_program(
    merchant_id: int,
    *,
    stamps_required: int | None,
    reward_text: str,
    birthday_gift_text: str,
    voucher_validity_days: int | None,
    stamp_cooldown_minutes: int | None,
    daily_stamp_cap: int | None,
) -> Program:
    """Check and save the program's rules; raise SettingsError and change nothing if any is bad.

    Cards already stamped keep their stamps when `stamps_required` changes; a
    card above a lowered target gets its reward at its next stamp.
    """
    errors: dict[str, str] = {}
    _check_range(errors, "stamps_required", stamps_required, STAMPS_REQUIRED)
    _check_length(errors, "reward_text", reward_text, 200, required=True)
    _check_length(errors, "birthday_gift_text", birthday_gift_text, 200, required=True)
    _check_range(errors, "voucher_validity_days", voucher_validity_days, VOUCHER_VALIDITY_DAYS)
    _check_range(errors, "stamp_cooldown_minutes", stamp_cooldown_minutes, STAMP_COOLDOWN_MINUTES)
    if daily_stamp_cap is not None:
        _check_range(errors, "daily_stamp_cap", daily_stamp_cap, DAILY_STAMP_CAP)
    if errors:
        raise SettingsError(errors)
    program = get_program(merchant_id)
    with tenant(merchant_id):
        program.stamps_required = stamps_required
        program.reward_text = reward_text.strip()
        program.birthday_gift_text = birthday_gift_text.strip()
        program.voucher_validity_days = voucher_validity_days
        program.stamp_cooldown_minutes = stamp_cooldown_minutes
        program.daily_stamp_cap = daily_stamp_cap
        db.session.commit()
    return program


# --- merchant settings -------------------------------------------------------


def get_merchant(merchant_id: int) -> Merchant:
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
        raise LookupError(f"no merchant {merchant_id}")
    return merchant


def update_merchant_settings(
    merchant_id: int,
    *,
    name: str,
    timezone: str,
    locale: str,
    brand_color: str,
    sender_name: str | None,
    sender_email: str | None,
    postal_address: str | None,
    quiet_hours_start: int | None,
    quiet_hours_end: int | None,
    frequency_cap: int | None,
    double_opt_in: bool,
) -> Merchant:
    """Check and save the merchant's own settings; SettingsError and no change if any is bad.

    Quiet hours with start equal to end mean "no quiet hours".
    """
    errors: dict[str, str] = {}
    _check_length(errors, "name", name, 120, required=True)
    try:
        ZoneInfo(timezone or "")
    except (ZoneInfoNotFoundError, ValueError):
        errors["timezone"] = _l("Choose a time zone from the list.")
    if locale not in LANGUAGES:
        errors["locale"] = _l("Choose a language from the list.")
    if not BRAND_COLOR_RE.match(brand_color or ""):
        errors["brand_color"] = _l("Use a colour like #6b3e26.")
    _check_length(errors, "sender_name", sender_name, 120)
    _check_length(errors, "postal_address", postal_address, 300)
    normalized_sender = None
    if sender_email and sender_email.strip():
        try:
            normalized_sender = normalize_email_address(sender_email)
        except ValueError:
            errors["sender_email"] = _l("Enter a valid email address.")
    _check_range(errors, "quiet_hours_start", quiet_hours_start, HOURS)
    _check_range(errors, "quiet_hours_end", quiet_hours_end, HOURS)
    _check_range(errors, "frequency_cap", frequency_cap, FREQUENCY_CAP)
    if errors:
        raise SettingsError(errors)
    merchant = get_merchant(merchant_id)
    merchant.name = name.strip()
    merchant.timezone = timezone
    merchant.locale = locale
    merchant.brand_color = brand_color.lower()
    merchant.sender_name = (sender_name or "").strip() or None
    merchant.sender_email = normalized_sender
    merchant.postal_address = (postal_address or "").strip() or None
    merchant.quiet_hours_start = quiet_hours_start
    merchant.quiet_hours_end = quiet_hours_end
    merchant.frequency_cap = frequency_cap
    merchant.double_opt_in = bool(double_opt_in)
    db.session.commit()
    return merchant


# --- locations ---------------------------------------------------------------


def list_locations(merchant_id: int, *, include_inactive: bool = True) -> list[Location]:
    with tenant(merchant_id):
        query = select(Location).order_by(Location.active.desc(), Location.name, Location.id)
        if not include_inactive:
            query = query.where(Location.active.is_(True))
        return list(db.session.scalars(query))


def _check_location(name, address, latitude, longitude) -> dict[str, str]:
    errors: dict[str, str] = {}
    _check_length(errors, "name", name, 120, required=True)
    _check_length(errors, "address", address, 300)
    if (latitude is None) != (longitude is None):
        missing = "longitude" if longitude is None else "latitude"
        errors[missing] = _l("Give both latitude and longitude, or neither.")
    if latitude is not None and not (LATITUDE[0] <= latitude <= LATITUDE[1]):
        errors["latitude"] = _l("Latitude is between -90 and 90.")
    if longitude is not None and not (LONGITUDE[0] <= longitude <= LONGITUDE[1]):
        errors["longitude"] = _l("Longitude is between -180 and 180.")
    return errors


def save_location(
    merchant_id: int,
    location_id: int | None,
    *,
    name: str,
    address: str | None,
    latitude: float | None,
    longitude: float | None,
) -> Location:
    """Add a location (location_id None) or change one; SettingsError and no change if bad.

    Latitude and longitude feed the wallet pass's "nearby" text, so they come
    as a pair or not at all.
    """
    errors = _check_location(name, address, latitude, longitude)
    if errors:
        raise SettingsError(errors)
    with tenant(merchant_id):
        if location_id is None:
            location = Location(merchant_id=merchant_id)
            db.session.add(location)
        else:
            location = db.session.scalars(select(Location).filter_by(id=location_id)).one()
        location.name = name.strip()
        location.address = (address or "").strip() or None
        location.latitude = latitude
        location.longitude = longitude
        db.session.commit()
    return location


def set_location_active(merchant_id: int, location_id: int, active: bool) -> Location:
    """Deactivate (or bring back) a location. Visits keep pointing at it either way."""
    with tenant(merchant_id):
        location = db.session.scalars(select(Location).filter_by(id=location_id)).one()
        location.active = active
        db.session.commit()
    return location


# --- join URL and poster -----------------------------------------------------


@dataclass(frozen=True)
class Poster:
    merchant_name: str
    brand_color: str
    location_name: str | None
    location_address: str | None
    join_url: str
    stamps_required: int
    reward_text: str


def join_url(base_url: str, merchant_slug: str, location_id: int | None = None) -> str:
    """The absolute join URL the poster's QR code encodes.

    `?location=<id>` lets a join be attributed to the shop whose poster was scanned.
    """
    url = f"{base_url.rstrip('/')}/join/{merchant_slug}"
    if location_id is not None:
        url += "?" + urlencode({"location": location_id})
    return url


def poster(merchant_id: int, base_url: str, location_id: int | None = None) -> Poster:
    """What a printable join poster shows, for the merchant or one of its locations."""
    merchant = get_merchant(merchant_id)
    program = get_program(merchant_id)
    location = None
    if location_id is not None:
        with tenant(merchant_id):
            location = db.session.scalars(select(Location).filter_by(id=location_id)).one()
    return Poster(
        merchant_name=merchant.name,
        brand_color=merchant.brand_color,
        location_name=location.name if location else None,
        location_address=location.address if location else None,
        join_url=join_url(base_url, merchant.slug, location.id if location else None),
        stamps_required=program.stamps_required,
        reward_text=program.reward_text,
    )
