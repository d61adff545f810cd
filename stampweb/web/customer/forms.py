"""Forms of the customer portal. The services check the rules; these parse the input."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, IntegerField, SelectField, StringField, TelField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from ...i18n import LANGUAGES
from ...validation import EmailAddress

MONTHS = [
    _l("January"),
    _l("February"),
    _l("March"),
    _l("April"),
    _l("May"),
    _l("June"),
    _l("July"),
    _l("August"),
    _l("September"),
    _l("October"),
    _l("November"),
    _l("December"),
]


def _int_or_none(value):
    if value in (None, "", "None"):
        return None
    return int(value)


class BirthdayFields:
    """Day and month as selects (no typing on a phone), the year optional."""

    birthday_day = SelectField(
        _l("Birthday: day"),
        choices=[SelectChoice("", "—")] + [SelectChoice(str(d)) for d in range(1, 32)],
        coerce=_int_or_none,
        validate_choice=False,
    )
    birthday_month = SelectField(
        _l("Birthday: month"),
        choices=[SelectChoice("", "—")]
        + [SelectChoice(str(i + 1), name) for i, name in enumerate(MONTHS)],
        coerce=_int_or_none,
        validate_choice=False,
    )
    birthday_year = IntegerField(
        _l("Year (optional)"),
        validators=[Optional(), NumberRange(min=1900, max=2100)],
    )


def _language_choices():
    return [SelectChoice(code, name) for code, name in LANGUAGES.items()]


class JoinForm(BirthdayFields, FlaskForm):
    first_name = StringField(
        _l("First name"), validators=[DataRequired(_l("Tell us your first name.")), Length(max=80)]
    )
    last_name = StringField(_l("Last name (optional)"), validators=[Length(max=80)])
    email = EmailField(_l("Email"), validators=[Optional(), EmailAddress(), Length(max=254)])
    phone = TelField(_l("Phone"), validators=[Optional(), Length(max=25)])
    locale = SelectField(_l("Language"), choices=_language_choices())
    # Unticked unless the customer ticks it; its label is the wording recorded
    # with the consent (set per merchant in the view).
    email_marketing = BooleanField(default=False)


class PreferencesForm(BirthdayFields, FlaskForm):
    first_name = StringField(
        _l("First name"), validators=[DataRequired(_l("Tell us your first name.")), Length(max=80)]
    )
    last_name = StringField(_l("Last name (optional)"), validators=[Length(max=80)])
    locale = SelectField(_l("Language"), choices=_language_choices())
    email_marketing = BooleanField()
    wallet_marketing = BooleanField()
    reminders = BooleanField()
