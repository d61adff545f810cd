"""The endpoints under /api/v1: thin views over the loyalty and campaign services.

Each view gets validated input from @operation and the merchant from the key
(`g.api_merchant_id`), calls one service and returns a response model.
"""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

from flask import g, request
from flask_babel import gettext as _
from sqlalchemy import select

from ..campaigns import sending
from ..campaigns import tags as tag_service
from ..campaigns.segments import SegmentError, count_audience, validate_rules
from ..campaigns.sending import CampaignStateError
from ..extensions import db
from ..loyalty import membership, stamping, vouchers
from ..loyalty.membership import CustomerNotFound, MembershipError
from ..loyalty.stamping import StampRefused
from ..loyalty.vouchers import VoucherRefused
from ..models import Card, Merchant, Voucher, utcnow
from ..models.api import SCOPE_WRITE
from ..tenancy import tenant
from . import idempotency, schemas, services
from .errors import ApiProblem, field_error, validation_problem
from .openapi import operation


def _merchant_id() -> int:
    return g.api_merchant_id


def _membership_problem(exc: MembershipError) -> ApiProblem:
    return validation_problem([field_error(exc.field, exc.message)])


# --- customers ----------------------------------------------------------------------------


@operation("POST", "/customers", summary="Create a customer", tag="customers",
           scope=SCOPE_WRITE, body=schemas.CustomerCreate, response=schemas.CustomerCreated,
           status=201, also=(200,))
def create_customer(body: schemas.CustomerCreate):
    """Makes a member with a card. Consent given here is recorded with source `api`, the
    wording, IP and user agent sent. An email or phone that is already a member answers
    200 with that member (`created: false`); their profile is not changed."""
    merchant_id = _merchant_id()
    if body.locale is None:
        with tenant(merchant_id):
            locale = db.session.get(Merchant, merchant_id).locale
    else:
        locale = body.locale
    birthday = body.birthday
    try:
        result = membership.join(
            merchant_id,
            first_name=body.first_name, last_name=body.last_name,
            email=body.email, phone=body.phone,
            birthday_day=birthday.day if birthday else None,
            birthday_month=birthday.month if birthday else None,
            birthday_year=birthday.year if birthday else None,
            locale=locale if locale in schemas.LOCALES else "en",
            email_marketing=body.consent.email, wallet_marketing=body.consent.wallet,
            ip=body.consent.ip, user_agent=body.consent.user_agent,
            wording=body.consent.wording, source="api",
        )
    except MembershipError as exc:
        raise _membership_problem(exc) from exc
    customer = services.get_customer(merchant_id, result.customer_id)
    out = services.customer_out(customer)
    created = schemas.CustomerCreated(
        **out.model_dump(), created=result.created,
        confirmation_needed=result.confirmation_needed,
    )
    return created, 201 if result.created else 200, {
        "Location": f"/api/v1/customers/{customer.id}"
    }


@operation("GET", "/customers", summary="List or find customers", tag="customers",
           query=schemas.CustomerQuery, response=schemas.CustomerPage)
def list_customers(query: schemas.CustomerQuery):
    """Pages by id: pass the `next_after` of one page as `after` for the next. Filter by
    `email`, `phone` or `card_code` to find one member."""
    return services.list_customers(_merchant_id(), query)


@operation("GET", "/customers/{customer_id}", summary="Get a customer", tag="customers",
           response=schemas.CustomerOut)
def get_customer(customer_id: int):
    return services.customer_out(services.get_customer(_merchant_id(), customer_id))


@operation("PATCH", "/customers/{customer_id}", summary="Update a customer", tag="customers",
           scope=SCOPE_WRITE, body=schemas.CustomerUpdate, response=schemas.CustomerOut)
def update_customer(customer_id: int, body: schemas.CustomerUpdate):
    """Changes only the fields sent. A consent set to false withdraws it; true asks for it
    (email may need the customer's confirmation). Recorded with source `api`."""
    merchant_id = _merchant_id()
    customer = services.get_customer(merchant_id, customer_id)
    if "birthday" in body.model_fields_set:
        birthday = body.birthday
        day, month, year = (birthday.day, birthday.month, birthday.year) if birthday else (
            None, None, None)
    else:
        day, month, year = customer.birthday_day, customer.birthday_month, customer.birthday_year
    consents = {}
    wording = None
    if body.consent is not None:
        consents = {channel: value for channel in ("email", "wallet", "reminders")
                    if (value := getattr(body.consent, channel)) is not None}
        wording = body.consent.wording
    try:
        membership.update_preferences(
            merchant_id, customer_id,
            first_name=body.first_name if body.first_name is not None else customer.first_name,
            last_name=body.last_name if body.last_name is not None else customer.last_name,
            birthday_day=day, birthday_month=month, birthday_year=year,
            locale=body.locale or customer.locale,
            consents=consents, wording={c: wording for c in consents} if wording else None,
            ip=request.remote_addr, source="api",
        )
    except MembershipError as exc:
        raise _membership_problem(exc) from exc
    except CustomerNotFound as exc:
        raise ApiProblem(404, _("No customer with this id.")) from exc
    return services.customer_out(services.get_customer(merchant_id, customer_id))


@operation("POST", "/customers/{customer_id}/tags", summary="Tag a customer", tag="tags",
           scope=SCOPE_WRITE, body=schemas.CustomerTagAdd, response=schemas.CustomerOut)
def tag_customer(customer_id: int, body: schemas.CustomerTagAdd):
    """Puts a manual tag on the customer, by `tag_id` or by `name` (made if new)."""
    merchant_id = _merchant_id()
    services.get_customer(merchant_id, customer_id)
    try:
        tag_service.add_manual_tag(merchant_id, customer_id, tag_id=body.tag_id, name=body.name)
    except SegmentError as exc:
        raise validation_problem(
            [field_error(path, message) for path, message in exc.errors]
        ) from exc
    db.session.commit()
    return services.customer_out(services.get_customer(merchant_id, customer_id))


@operation("DELETE", "/customers/{customer_id}/tags/{tag_id}", summary="Untag a customer",
           tag="tags", scope=SCOPE_WRITE, response=schemas.CustomerOut)
def untag_customer(customer_id: int, tag_id: int):
    """Takes a manual tag off (rule tags follow their rule). Untagging twice is harmless."""
    merchant_id = _merchant_id()
    services.get_customer(merchant_id, customer_id)
    tag_service.remove_manual_tag(merchant_id, customer_id, tag_id)
    db.session.commit()
    return services.customer_out(services.get_customer(merchant_id, customer_id))


# --- visits --------------------------------------------------------------------------------


def _card_for(merchant_id: int, body: schemas.VisitCreate) -> Card:
    if body.card_code is not None:
        card = stamping.card_by_code(merchant_id, body.card_code)
        if card is None:
            raise ApiProblem(404, _("No card with this code."), code="card_not_found",
                             errors=[field_error("card_code", _("No card with this code."))])
        return card
    with tenant(merchant_id):
        card = db.session.scalar(
            select(Card).where(Card.customer_id == body.customer_id).order_by(Card.id).limit(1)
        )
    if card is None:
        raise ApiProblem(404, _("No customer with this id."), code="customer_not_found",
                         errors=[field_error("customer_id", _("No customer with this id."))])
    return card


_REFUSAL_STATUS = {"not_found": 404, "cooldown": 409, "daily_cap": 409, "bad_request_key": 422,
                   "bad_count": 422, "bad_amount": 422}
_REFUSAL_FIELD = {"bad_count": "stamps", "bad_amount": "amount"}


@operation("POST", "/visits", summary="Record a visit", tag="visits", scope=SCOPE_WRITE,
           body=schemas.VisitCreate, response=schemas.VisitOut, status=201, errors=(404, 409))
def record_visit(body: schemas.VisitCreate):
    """Stamps the card (found by `card_code` or `customer_id`) and answers with the card's
    new state and any reward voucher the stamps issued. The program's cooldown and daily
    cap apply (409, code `cooldown` / `daily_cap`). Send an Idempotency-Key: a retried
    request then never stamps twice."""
    merchant_id = _merchant_id()
    card = _card_for(merchant_id, body)
    services.check_location(merchant_id, body.location_id)
    key = request.headers.get(idempotency.HEADER)
    try:
        result = stamping.record_stamps(
            merchant_id, card.id, stamps=body.stamps,
            amount=Decimal(body.amount) if body.amount is not None else None,
            location_id=body.location_id,
            request_key=idempotency.request_key_for_stamping(key) if key else None,
            source="api", device=f"API key: {g.api_key_name}"[:300], ip=request.remote_addr,
        )
    except StampRefused as exc:
        status = _REFUSAL_STATUS.get(exc.reason_code, 409)
        field = _REFUSAL_FIELD.get(exc.reason_code)
        extra = {}
        headers = {}
        if exc.retry_after is not None:
            seconds = max(1, int(exc.retry_after.total_seconds()))
            extra["retry_after_seconds"] = seconds
            headers["Retry-After"] = str(seconds)
        raise ApiProblem(status, exc.message, code=exc.reason_code, headers=headers,
                         errors=[field_error(field, exc.message)] if field else None,
                         **extra) from exc
    with tenant(merchant_id):
        card = db.session.scalar(
            select(Card).where(Card.id == result.card_id)
            .execution_options(populate_existing=True)
        )
        issued = list(db.session.scalars(
            select(Voucher).where(Voucher.id.in_(result.voucher_ids)).order_by(Voucher.id)
        )) if result.voucher_ids else []
    return schemas.VisitOut(
        id=result.visit_id, customer_id=card.customer_id, stamps_added=body.stamps,
        amount=body.amount and services.money(Decimal(body.amount)),
        card=services.card_out(card), vouchers_issued=[services.voucher_out(v) for v in issued],
        replayed=result.replayed,
    ), 201


# --- vouchers -------------------------------------------------------------------------------


@operation("GET", "/vouchers", summary="List vouchers", tag="vouchers",
           query=schemas.VoucherQuery, response=schemas.VoucherPage)
def list_vouchers(query: schemas.VoucherQuery):
    """Filter by `customer_id`, `code` or `status` (`usable`: active and not expired)."""
    return services.list_vouchers(_merchant_id(), query)


@operation("GET", "/vouchers/{voucher_id}", summary="Get a voucher", tag="vouchers",
           response=schemas.VoucherOut)
def get_voucher(voucher_id: int):
    return services.voucher_out(services.get_voucher(_merchant_id(), voucher_id))


_VOUCHER_REFUSAL_STATUS = {"not_found": 404}


@operation("POST", "/vouchers/{voucher_id}/redeem", summary="Redeem a voucher", tag="vouchers",
           scope=SCOPE_WRITE, body=schemas.VoucherRedeem, body_required=False,
           response=schemas.VoucherOut, errors=(409,))
def redeem_voucher(voucher_id: int, body: schemas.VoucherRedeem):
    """Marks the voucher used. Already redeemed, void or expired: 409 with the reason."""
    merchant_id = _merchant_id()
    services.check_location(merchant_id, body.location_id)
    try:
        vouchers.redeem(merchant_id, voucher_id, staff_user_id=None,
                        location_id=body.location_id, ip=request.remote_addr)
    except VoucherRefused as exc:
        raise ApiProblem(_VOUCHER_REFUSAL_STATUS.get(exc.reason_code, 409), exc.message,
                         code=exc.reason_code) from exc
    return services.voucher_out(services.get_voucher(merchant_id, voucher_id))


# --- segments and tags -------------------------------------------------------------------------


@operation("POST", "/segments/count", summary="Count a rule set's audience", tag="segments",
           body=schemas.SegmentCount, response=schemas.CountOut)
def count_segment(body: schemas.SegmentCount):
    """How many customers match the rule tree right now. Problems are named by path, e.g.
    `rules.groups.0.conditions.1.value`."""
    merchant_id = _merchant_id()
    try:
        rules = validate_rules(body.rules, merchant_id)
    except SegmentError as exc:
        raise validation_problem(
            [field_error(f"rules.{path}", message) for path, message in exc.errors]
        ) from exc
    return schemas.CountOut(count=count_audience(merchant_id, rules))


@operation("GET", "/tags", summary="List tags", tag="tags", response=schemas.TagList)
def list_tags():
    """The merchant's tags with their member counts."""
    return services.tag_list(_merchant_id())


@operation("POST", "/tags", summary="Create a manual tag", tag="tags", scope=SCOPE_WRITE,
           body=schemas.TagCreate, response=schemas.TagOut, status=201)
def create_tag(body: schemas.TagCreate):
    merchant_id = _merchant_id()
    try:
        tag = tag_service.create_tag(merchant_id, body.name)
    except SegmentError as exc:
        raise validation_problem(
            [field_error(path, message) for path, message in exc.errors]
        ) from exc
    db.session.commit()
    return schemas.TagOut(id=tag.id, name=tag.name, kind=tag.kind, members=0), 201


# --- campaigns ----------------------------------------------------------------------------------


@operation("POST", "/campaigns", summary="Create a campaign (draft)", tag="campaigns",
           scope=SCOPE_WRITE, body=schemas.CampaignCreate, response=schemas.CampaignOut,
           status=201)
def create_campaign(body: schemas.CampaignCreate):
    """A one-off campaign as a draft. Send it now with `/send`, or later with `/schedule`.
    Placeholders such as `{first_name|friend}` work as in the admin."""
    campaign = services.create_campaign(_merchant_id(), body)
    return services.campaign_out(campaign), 201, {
        "Location": f"/api/v1/campaigns/{campaign.id}"
    }


@operation("GET", "/campaigns", summary="List campaigns", tag="campaigns",
           query=schemas.PageQuery, response=schemas.CampaignPage)
def list_campaigns(query: schemas.PageQuery):
    return services.list_campaigns(_merchant_id(), query)


@operation("GET", "/campaigns/{campaign_id}", summary="Campaign status and counts",
           tag="campaigns", response=schemas.CampaignOut)
def get_campaign(campaign_id: int):
    """The campaign's status and its outbox counts (sent, skipped by reason, failed…)."""
    return services.campaign_out(services.get_campaign(_merchant_id(), campaign_id))


def _lifecycle(campaign_id: int, change) -> schemas.CampaignOut:
    merchant_id = _merchant_id()
    campaign = services.get_campaign(merchant_id, campaign_id)
    if campaign.kind != "oneoff":
        raise ApiProblem(409, _("This campaign belongs to an automation; change it there."),
                         code="automation_campaign")
    try:
        with tenant(merchant_id):
            change()
    except CampaignStateError as exc:
        db.session.rollback()
        raise ApiProblem(409, str(exc), code="invalid_state") from exc
    return services.campaign_out(services.get_campaign(merchant_id, campaign_id))


@operation("POST", "/campaigns/{campaign_id}/send", summary="Send a campaign now",
           tag="campaigns", scope=SCOPE_WRITE, response=schemas.CampaignOut, errors=(409,))
def send_campaign(campaign_id: int):
    """From draft or scheduled; 409 from any other state."""
    return _lifecycle(campaign_id, lambda: sending.start(campaign_id))


@operation("POST", "/campaigns/{campaign_id}/schedule", summary="Schedule a campaign",
           tag="campaigns", scope=SCOPE_WRITE, body=schemas.CampaignSchedule,
           response=schemas.CampaignOut, errors=(409,))
def schedule_campaign(campaign_id: int, body: schemas.CampaignSchedule):
    when = body.at.astimezone(UTC).replace(tzinfo=None)
    if when <= utcnow():
        raise validation_problem([field_error("at", _("Choose a time in the future."))])
    return _lifecycle(campaign_id, lambda: sending.schedule(campaign_id, when))


@operation("POST", "/campaigns/{campaign_id}/pause", summary="Pause a sending campaign",
           tag="campaigns", scope=SCOPE_WRITE, response=schemas.CampaignOut, errors=(409,))
def pause_campaign(campaign_id: int):
    return _lifecycle(campaign_id, lambda: sending.pause(campaign_id, "paused by the API"))


@operation("POST", "/campaigns/{campaign_id}/resume", summary="Resume a paused campaign",
           tag="campaigns", scope=SCOPE_WRITE, response=schemas.CampaignOut, errors=(409,))
def resume_campaign(campaign_id: int):
    return _lifecycle(campaign_id, lambda: sending.resume(campaign_id))


@operation("POST", "/campaigns/{campaign_id}/cancel", summary="Cancel a campaign",
           tag="campaigns", scope=SCOPE_WRITE, response=schemas.CampaignOut, errors=(409,))
def cancel_campaign(campaign_id: int):
    """Stops for good; messages not yet sent are skipped as cancelled."""
    return _lifecycle(campaign_id, lambda: sending.cancel(campaign_id))
