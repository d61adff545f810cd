"""Request and response models: the one source of both validation and the OpenAPI document.

Pydantic v2 emits JSON Schema draft 2020-12, which is the schema dialect of
OpenAPI 3.1, so the document embeds exactly the schemas requests are checked
against (stampweb/api/openapi.py). Request bodies are parsed in strict mode
with unknown fields refused, so the schema's types and
`additionalProperties: false` are what validation does, not a looser cousin.
Responses are built through the same models, so an answer that strays from
its documented shape fails in our tests, not in a client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from ..campaigns.rendering import WALLET_TEXT_LIMIT
from ..i18n import LANGUAGES
from ..loyalty.stamping import MAX_STAMPS_PER_VISIT
from ..models import CONSENT_STATES, VOUCHER_KINDS
from ..models.api import WEBHOOK_EVENTS  # noqa: F401  (documented beside the models)

MAX_ID = 2_147_483_647  # the id columns are 32-bit on PostgreSQL

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# No control characters: they have no place in names and PostgreSQL refuses NUL.
PLAIN = r"^[^\x00-\x1f\x7f]*$"
LOCALES = tuple(LANGUAGES)


def _text(max_length: int, min_length: int = 0, **kwargs):
    return Field(min_length=min_length, max_length=max_length, pattern=PLAIN, **kwargs)


def _drop_default(schema: dict) -> None:
    schema.pop("default", None)


def optional(**kwargs):
    """A field that may be left out (but, per the schema, is never null).

    Constraints go on the type (`Text(...)`, `Int(...)`): set on a union's
    Field, pydantic would check them but leave them out of the schema.
    """
    return Field(default=None, json_schema_extra=_drop_default, **kwargs)


def Text(max_length: int, min_length: int = 0, pattern: str = PLAIN):  # noqa: N802
    return Annotated[str, Field(min_length=min_length, max_length=max_length, pattern=pattern)]


def Int(ge: int, le: int):  # noqa: N802
    return Annotated[int, Field(ge=ge, le=le)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    # Query values arrive as strings: lax parsing turns "20" into 20.
    model_config = ConfigDict(extra="ignore")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- problems ---------------------------------------------------------------------


class FieldError(Out):
    field: str = Field(description="Dotted path of the offending input, e.g. `stamps`.")
    pointer: str = Field(description="The same as a JSON Pointer into the body or query.")
    message: str
    in_: Literal["body", "query", "header"] | None = Field(default=None, alias="in")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str = Field(description="Stable machine-readable reason, e.g. `cooldown`.")
    errors: list[FieldError] | SkipJsonSchema[None] = optional(
        description="Field-level messages (422)."
    )


# --- customers ----------------------------------------------------------------------


class BirthdayIn(Body):
    day: int = Field(ge=1, le=31)
    month: int = Field(ge=1, le=12)
    year: Int(1900, 2100) | SkipJsonSchema[None] = optional()


class ConsentIn(Body):
    """Marketing consent the customer gave at the till. Recorded with source `api`."""

    email: bool = False
    wallet: bool = False
    wording: Text(2000, pattern=r"^[^\x00]*$") | SkipJsonSchema[None] = optional(
        description="The exact wording the customer agreed to."
    )
    ip: Text(45) | SkipJsonSchema[None] = optional()
    user_agent: Text(300) | SkipJsonSchema[None] = optional()


class CustomerCreate(Body):
    first_name: str = _text(80, 1)
    last_name: str = _text(80, default="")
    email: Text(254) | SkipJsonSchema[None] = optional()
    phone: Text(32) | SkipJsonSchema[None] = optional()
    birthday: BirthdayIn | SkipJsonSchema[None] = optional()
    locale: Literal[LOCALES] | SkipJsonSchema[None] = optional(  # type: ignore[valid-type]
        description="Defaults to the merchant's language."
    )
    consent: ConsentIn = Field(default_factory=ConsentIn)


class ConsentUpdate(Body):
    email: bool | SkipJsonSchema[None] = optional()
    wallet: bool | SkipJsonSchema[None] = optional()
    reminders: bool | SkipJsonSchema[None] = optional()
    wording: Text(2000, pattern=r"^[^\x00]*$") | SkipJsonSchema[None] = optional()


class CustomerUpdate(Body):
    """Only the fields sent change. Email and phone are changed by the customer only."""

    first_name: Text(80, 1) | SkipJsonSchema[None] = optional()
    last_name: Text(80) | SkipJsonSchema[None] = optional()
    birthday: BirthdayIn | None = Field(
        default=None, description="`null` clears the birthday; leave out to keep it."
    )
    locale: Literal[LOCALES] | SkipJsonSchema[None] = optional()  # type: ignore[valid-type]
    consent: ConsentUpdate | SkipJsonSchema[None] = optional()


class CustomerQuery(Query):
    email: Text(254) | SkipJsonSchema[None] = optional(description="Exact, any case.")
    phone: Text(32) | SkipJsonSchema[None] = optional(description="Exact, after normalising.")
    card_code: Text(20) | SkipJsonSchema[None] = optional()
    after: int = Field(default=0, ge=0, le=MAX_ID, description="The last id of the page before.")
    limit: int = Field(default=50, ge=1, le=200)


class CardOut(Out):
    code: str
    url: str = Field(description="The customer's card page.")
    stamps: int
    stamps_required: int
    rewards_earned: int


class ConsentOut(Out):
    email: Literal[CONSENT_STATES]  # type: ignore[valid-type]
    wallet: Literal[CONSENT_STATES]  # type: ignore[valid-type]
    reminders: Literal[CONSENT_STATES]  # type: ignore[valid-type]


class BirthdayOut(Out):
    day: int
    month: int
    year: int | None


class TagRef(Out):
    id: int
    name: str


class CustomerOut(Out):
    id: int
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    birthday: BirthdayOut | None
    locale: str
    joined_at: datetime
    visit_count: int
    last_visit_at: datetime | None
    total_spent: str = Field(description="Decimal string, e.g. `12.50`.")
    stamps: int = Field(description="Stamps toward the next reward.")
    card: CardOut | None
    consent: ConsentOut
    tags: list[TagRef]


class CustomerCreated(CustomerOut):
    created: bool = Field(description="False when the email or phone was already a member.")
    confirmation_needed: bool = Field(description="A confirmation email was sent (double opt-in).")


class CustomerPage(Out):
    data: list[CustomerOut]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null at the end."
    )


class CustomerTagAdd(Body):
    tag_id: Id | SkipJsonSchema[None] = optional()
    name: Text(60, 1) | SkipJsonSchema[None] = optional()

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"oneOf": [{"required": ["tag_id"]}, {"required": ["name"]}]},
    )

    @model_validator(mode="after")
    def _one_of(self):
        if (self.tag_id is None) == (self.name is None):
            raise ValueError("give either tag_id or name")
        return self


# --- visits and vouchers ----------------------------------------------------------------


class VisitCreate(Body):
    card_code: Text(20, 1, r"^[A-Za-z0-9][A-Za-z0-9 \-]*$") | SkipJsonSchema[None] = optional()
    customer_id: Id | SkipJsonSchema[None] = optional()
    stamps: int = Field(default=1, ge=1, le=MAX_STAMPS_PER_VISIT)
    amount: Text(11, 1, r"^[0-9]{1,8}(\.[0-9]{1,2})?$") | SkipJsonSchema[None] = optional(
        description="What was spent, a decimal string with at most 2 decimals, e.g. `4.50`.",
    )
    location_id: Id | SkipJsonSchema[None] = optional()

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"oneOf": [{"required": ["card_code"]}, {"required": ["customer_id"]}]},
    )

    @model_validator(mode="after")
    def _one_of(self):
        if (self.card_code is None) == (self.customer_id is None):
            raise ValueError("give either card_code or customer_id")
        return self


class VoucherOut(Out):
    id: int
    customer_id: int
    kind: Literal[VOUCHER_KINDS]  # type: ignore[valid-type]
    title: str
    code: str
    status: Literal["active", "redeemed", "expired", "void"]
    usable: bool
    issued_at: datetime
    expires_at: datetime | None
    redeemed_at: datetime | None


class VoucherPage(Out):
    data: list[VoucherOut]
    next_after: int | None


class VoucherQuery(Query):
    customer_id: Id | SkipJsonSchema[None] = optional()
    code: Text(20) | SkipJsonSchema[None] = optional()
    status: (
        Literal["usable", "active", "redeemed", "expired", "void"] | SkipJsonSchema[None]
    ) = optional(description="`usable`: active and not expired.")
    after: int = Field(default=0, ge=0, le=MAX_ID)
    limit: int = Field(default=50, ge=1, le=200)


class VoucherRedeem(Body):
    location_id: Id | SkipJsonSchema[None] = optional()


class VisitOut(Out):
    id: int
    customer_id: int
    stamps_added: int
    amount: str | None
    card: CardOut
    vouchers_issued: list[VoucherOut]
    replayed: bool = Field(description="The stamping service had already seen this request.")


# --- segments, tags, campaigns --------------------------------------------------------------


class SegmentCount(Body):
    rules: dict[str, Any] = Field(
        description="A segment rule tree: {version, match: all|any, groups: [{match, "
        "conditions: [{field, op, value}]}]}; see the docs page."
    )
    # The rule tree is checked by the segment service, which names the bad part.
    model_config = ConfigDict(extra="forbid", strict=False)


class CountOut(Out):
    count: int


class TagOut(Out):
    id: int
    name: str
    kind: Literal["manual", "rule"]
    members: int


class TagList(Out):
    data: list[TagOut]


class TagCreate(Body):
    name: str = _text(60, 1)


class AudienceIn(Body):
    type: Literal["all", "segment", "tag", "rules"]
    segment_id: Id | SkipJsonSchema[None] = optional()
    tag_id: Id | SkipJsonSchema[None] = optional()
    rules: dict[str, Any] | SkipJsonSchema[None] = optional()

    model_config = ConfigDict(extra="forbid", strict=False)


class CampaignVariant(Body):
    """The message in one other language; see CampaignCreate.variants."""

    subject: str = _text(200, default="")
    preheader: str = _text(200, default="")
    body_markdown: str = Field(default="", max_length=20000, pattern=r"^[^\x00]*$")
    wallet_text: str = _text(WALLET_TEXT_LIMIT, default="")


class CampaignCreate(Body):
    name: str = _text(120, 1)
    channels: Literal["email", "wallet", "both"] = "email"
    subject: str = _text(200, default="")
    preheader: str = _text(200, default="")
    body_markdown: str = Field(default="", max_length=20000, pattern=r"^[^\x00]*$")
    wallet_text: str = _text(WALLET_TEXT_LIMIT, default="")
    audience: AudienceIn
    voucher_title: Text(200, 1) | SkipJsonSchema[None] = optional()
    voucher_valid_days: Int(1, 365) | SkipJsonSchema[None] = optional()
    variants: dict[Literal[LOCALES], CampaignVariant] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="The message in other languages, by language code. Customers who "
        "chose one get its version (an email version needs subject and body_markdown, a "
        "wallet version wallet_text); the others get the text above, in the merchant's "
        "default language.",
    )


class CampaignSchedule(Body):
    at: AwareDatetime = Field(description="When to send, with its UTC offset; in the future.")

    model_config = ConfigDict(extra="forbid", strict=False)


class CampaignOut(Out):
    id: int
    name: str
    kind: str
    status: Literal["draft", "scheduled", "sending", "paused", "sent", "cancelled"]
    channels: Literal["email", "wallet", "both"]
    audience: dict[str, Any]
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    paused_reason: str | None
    created_at: datetime
    counts: dict[str, int] = Field(
        description="Outbox rows by status (pending, sending, sent, failed, skipped, "
        "unknown, total) and skipped rows by reason (`skipped:no_consent`)."
    )


class CampaignPage(Out):
    data: list[CampaignOut]
    next_after: int | None


class PageQuery(Query):
    after: int = Field(default=0, ge=0, le=MAX_ID)
    limit: int = Field(default=50, ge=1, le=200)
