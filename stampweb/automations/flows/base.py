"""What every flow shares: the evaluated day, a candidate, and the flow interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask_babel import lazy_gettext as _l


@dataclass(frozen=True)
class Day:
    """One local date of one merchant, as the engine evaluates it."""

    merchant_id: int
    zone: ZoneInfo
    date: date
    now: datetime  # naive UTC: when the evaluation runs

    def start(self, day: date) -> datetime:
        """The naive-UTC instant the local `day` begins (DST-aware)."""
        return datetime.combine(day, time.min, tzinfo=self.zone).astimezone(UTC).replace(
            tzinfo=None
        )

    def local_date_of(self, moment: datetime) -> date:
        return moment.replace(tzinfo=UTC).astimezone(self.zone).date()

    def days_ago(self, days: int) -> tuple[datetime, datetime]:
        """[start, end) in naive UTC of the local date `days` before this one."""
        day = self.date - timedelta(days=days)
        return self.start(day), self.start(day + timedelta(days=1))


@dataclass(frozen=True)
class Candidate:
    """A customer a flow selects, with the occurrence that keeps it to one firing.

    `channels` None means the flow's channels; a tuple limits them (welcome:
    email only once the address is confirmed). An empty tuple means "not yet".
    """

    customer_id: int
    occurrence: str
    channels: tuple[str, ...] | None = None
    detail: str = ""


@dataclass(frozen=True)
class Setting:
    """One setting of a flow, shown as one form field."""

    name: str
    label: object
    default: object
    minimum: int = 0
    maximum: int = 365
    kind: str = "int"  # int | text | choice | tag
    choices: tuple = ()
    help: object = ""


@dataclass
class Grant:
    """What a firing gives the customer, done by the engine before any message goes."""

    voucher_kind: str | None = None
    voucher_title: str | None = None
    expires_at: datetime | None = None
    birthday_state_until: datetime | None = None
    extra: dict = field(default_factory=dict)


class Flow:
    """A kind of automation. Subclasses fill in the class attributes and `select`."""

    kind: str = ""
    label = _l("Automation")
    summary = ""  # not _l(""): gettext("") is the catalogue header
    settings: tuple[Setting, ...] = ()
    # Reminders about the customer's own card honour the "reminders" opt-in
    # (sending.REMINDER_KINDS) instead of marketing consent.
    reminder: bool = False
    # Evaluated on every engine run instead of once a day at the local hour.
    continuous: bool = False
    default_channels = "email"

    def defaults(self) -> dict:
        return {s.name: s.default for s in self.settings}

    def effective(self, settings: dict | None) -> dict:
        merged = self.defaults()
        merged.update({k: v for k, v in (settings or {}).items() if k in merged})
        return merged

    def default_content(self) -> dict:
        """subject, preheader, body_markdown, wallet_text in the current locale."""
        raise NotImplementedError

    def select(self, day: Day, settings: dict, flow) -> list[Candidate]:
        """Customers this flow fires for on `day` (already-fired ones are filtered later)."""
        raise NotImplementedError

    def grant(self, day: Day, settings: dict, program) -> Grant | None:
        """What to give with a firing (a voucher, a birthday state), or None."""
        return None

    def voucher_title(self, settings: dict, program) -> str | None:
        """The title of the voucher a firing issues, or None when it issues none."""
        return None


def optional_voucher(settings: dict) -> str | None:
    title = (settings.get("voucher_title") or "").strip()
    return title or None


def voucher_settings(default_days: int = 14) -> tuple[Setting, ...]:
    return (
        Setting("voucher_title", _l("Voucher to issue (leave empty for none)"), "",
                kind="text", help=_l("For example: a free pastry with your next coffee.")),
        Setting("voucher_valid_days", _l("Voucher valid for (days)"), default_days, 1, 365),
    )
