"""Forms of the staff page. Each carries the CSRF token; htmx also sends it as a header."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from ...loyalty.stamping import MAX_STAMPS_PER_VISIT, StampRefused, parse_amount

AMOUNT_MAX_LENGTH = 20
REQUEST_KEY_MAX_LENGTH = 80


def new_request_key() -> str:
    """A fresh key for one rendering of the stamp form: a replay of it is recognised."""
    return secrets.token_urlsafe(16)


class AmountValidator:
    def __call__(self, form, field):
        try:
            field.amount = parse_amount(field.data)
        except StampRefused as exc:
            raise ValidationError(exc.message) from exc


class StampForm(FlaskForm):
    request_key = HiddenField(validators=[Optional(), Length(max=REQUEST_KEY_MAX_LENGTH)])
    stamps = IntegerField(
        _l("Stamps"),
        default=1,
        validators=[Optional(), NumberRange(min=1, max=MAX_STAMPS_PER_VISIT,
                                            message=_l("Enter 1 to %(max)d.",
                                                       max=MAX_STAMPS_PER_VISIT))],
        invalid_value_message=_l("Enter a whole number."),
        render_kw={"min": 1, "max": MAX_STAMPS_PER_VISIT, "inputmode": "numeric"},
    )
    amount = StringField(
        _l("Amount spent (optional)"),
        validators=[Optional(), Length(max=AMOUNT_MAX_LENGTH), AmountValidator()],
        render_kw={"inputmode": "decimal", "autocomplete": "off", "placeholder": "0.00"},
    )

    def stamp_count(self) -> int:
        return self.stamps.data or 1

    def amount_value(self):
        return getattr(self.amount, "amount", None) if self.amount.data else None


@dataclass(frozen=True)
class StampPost:
    """What a valid stamp POST asks for."""

    stamps: int
    amount: Decimal | None
    request_key: str | None

    @classmethod
    def of(cls, form: StampForm) -> StampPost:
        """From a StampForm that validated."""
        return cls(form.stamp_count(), form.amount_value(), form.request_key.data or None)

    @classmethod
    def read_plain(cls, formdata) -> StampPost | None:
        """The usual POST (a stamp count in digits, an amount or none) read without
        StampForm; None for anything else.

        Building a StampForm took more time than anything else the view does
        before stamping, and nearly every POST is one tap: stamps=1, no
        amount. What this accepts, StampForm accepts with the same values (a
        test holds them together); anything it does not (an error to show, an
        unusual spelling) goes through StampForm, for its messages. The CSRF
        token was checked before the view, by CSRFProtect.
        """
        request_key = formdata.get("request_key")
        if request_key is not None and len(request_key) > REQUEST_KEY_MAX_LENGTH:
            return None
        stamps = formdata.get("stamps")
        if stamps is None:
            count = 1
        elif stamps.isascii() and stamps.isdigit() and 1 <= int(stamps) <= MAX_STAMPS_PER_VISIT:
            count = int(stamps)
        else:
            return None
        amount = formdata.get("amount")
        if not amount:
            value = None
        elif len(amount) > AMOUNT_MAX_LENGTH or not amount.strip():
            return None
        else:
            try:
                value = parse_amount(amount)
            except StampRefused:
                return None
        return cls(count, value, request_key or None)


@dataclass(frozen=True)
class StampFormView:
    """The stamp form as the card fragment writes it out: plain values, no WTForms.

    A fresh form (every answer to a stamp) needs no form object at all; a
    refused POST keeps what was typed and the errors of its StampForm.
    """

    request_key: str
    stamps: str = "1"
    amount: str = ""
    stamps_errors: tuple[str, ...] = ()
    amount_errors: tuple[str, ...] = ()
    max_stamps: int = MAX_STAMPS_PER_VISIT
    amount_max_length: int = AMOUNT_MAX_LENGTH

    @property
    def errors(self) -> bool:
        return bool(self.stamps_errors or self.amount_errors)

    @classmethod
    def fresh(cls) -> StampFormView:
        return cls(new_request_key())

    @classmethod
    def of(cls, form: StampForm) -> StampFormView:
        """What a submitted form shows again: its values as typed, its errors."""
        return cls(
            form.request_key.data or new_request_key(),
            form.stamps._value(),
            form.amount._value(),
            tuple(form.stamps.errors),
            tuple(form.amount.errors),
        )


class UndoForm(FlaskForm):
    visit_id = HiddenField(validators=[DataRequired()])
    reason = StringField(_l("Reason (optional)"), validators=[Optional(), Length(max=200)])


class ConfirmForm(FlaskForm):
    """Redeem and give-gift confirmations: the CSRF token is all they carry."""


class LocationForm(FlaskForm):
    location_id = SelectField(_l("Location"), coerce=int, validators=[DataRequired()])
    next = HiddenField()
