"""Forms of the merchant admin: program, settings, locations, customers and imports.

Forms check the shape of what was typed (a number is a number); the services
check the rules and answer per field, and the views put those answers next
to the fields. The limits shown here come from the services' constants.
"""

from __future__ import annotations

from zoneinfo import available_timezones

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    ColorField,
    DecimalField,
    EmailField,
    HiddenField,
    IntegerField,
    SelectField,
    StringField,
    TelField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from ...i18n import LANGUAGES
from ...loyalty import program as program_service
from ...loyalty.csv_io import TARGET_FIELDS, TARGET_LABELS
from ...validation import EmailAddress


def _range(bounds, message=None):
    low, high = bounds
    return NumberRange(
        min=low, max=high, message=message or _l("Enter a number from %(min)s to %(max)s.")
    )


WHOLE_NUMBER = _l("Enter a whole number.")
LANGUAGE_CHOICES = [SelectChoice(code, name) for code, name in LANGUAGES.items()]


class ProgramForm(FlaskForm):
    stamps_required = IntegerField(
        _l("Stamps for a reward"),
        validators=[InputRequired(WHOLE_NUMBER), _range(program_service.STAMPS_REQUIRED)],
    )
    reward_text = StringField(_l("Reward"), validators=[DataRequired(), Length(max=200)])
    birthday_gift_text = StringField(
        _l("Birthday gift"), validators=[DataRequired(), Length(max=200)]
    )
    voucher_validity_days = IntegerField(
        _l("Vouchers are valid for (days)"),
        validators=[InputRequired(WHOLE_NUMBER), _range(program_service.VOUCHER_VALIDITY_DAYS)],
    )
    stamp_cooldown_minutes = IntegerField(
        _l("Minutes between two stamps on one card"),
        validators=[InputRequired(WHOLE_NUMBER), _range(program_service.STAMP_COOLDOWN_MINUTES)],
    )
    daily_stamp_cap = IntegerField(
        _l("Most stamps per card per day (empty: no limit)"),
        validators=[Optional(), _range(program_service.DAILY_STAMP_CAP)],
    )


class SettingsForm(FlaskForm):
    name = StringField(_l("Business name"), validators=[DataRequired(), Length(max=120)])
    timezone = SelectField(_l("Time zone"), choices=[])
    locale = SelectField(_l("Default language"), choices=LANGUAGE_CHOICES)
    brand_color = ColorField(_l("Brand colour"), validators=[DataRequired()])
    sender_name = StringField(_l("Sender name for emails"), validators=[Length(max=120)])
    sender_email = EmailField(
        _l("Sender email address"), validators=[Optional(), EmailAddress(), Length(max=254)]
    )
    postal_address = TextAreaField(
        _l("Postal address (shown in every email's footer)"), validators=[Length(max=300)]
    )
    quiet_hours_start = IntegerField(
        _l("Quiet hours start (hour, 0–23)"),
        validators=[InputRequired(WHOLE_NUMBER), _range(program_service.HOURS)],
    )
    quiet_hours_end = IntegerField(
        _l("Quiet hours end (hour, 0–23)"),
        validators=[InputRequired(WHOLE_NUMBER), _range(program_service.HOURS)],
    )
    frequency_cap = IntegerField(
        _l("Most marketing messages per customer per 7 days"),
        validators=[InputRequired(WHOLE_NUMBER), _range(program_service.FREQUENCY_CAP)],
    )
    double_opt_in = BooleanField(_l("Confirm marketing email consent by a link (double opt-in)"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timezone.choices = [SelectChoice(tz, tz) for tz in sorted(available_timezones())]


class LocationForm(FlaskForm):
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=120)])
    address = StringField(_l("Address"), validators=[Length(max=300)])
    latitude = DecimalField(
        _l("Latitude"),
        places=None,
        validators=[
            Optional(),
            _range(program_service.LATITUDE, _l("Latitude is between -90 and 90.")),
        ],
    )
    longitude = DecimalField(
        _l("Longitude"),
        places=None,
        validators=[
            Optional(),
            _range(program_service.LONGITUDE, _l("Longitude is between -180 and 180.")),
        ],
    )


class CustomerForm(FlaskForm):
    first_name = StringField(_l("First name"), validators=[Length(max=80)])
    last_name = StringField(_l("Last name"), validators=[Length(max=80)])
    email = EmailField(_l("Email"), validators=[Optional(), EmailAddress(), Length(max=254)])
    phone = TelField(_l("Phone"), validators=[Length(max=30)])
    birthday_day = IntegerField(
        _l("Birthday: day"), validators=[Optional(), NumberRange(min=1, max=31)]
    )
    birthday_month = IntegerField(
        _l("Birthday: month"), validators=[Optional(), NumberRange(min=1, max=12)]
    )
    birthday_year = IntegerField(_l("Birthday: year (optional)"), validators=[Optional()])
    locale = SelectField(_l("Language"), choices=LANGUAGE_CHOICES)
    email_consent = BooleanField(_l("Agrees to marketing email"))
    wallet_consent = BooleanField(_l("Agrees to wallet messages"))
    reminders_consent = BooleanField(_l("Agrees to reminders about the card"))


class ImportUploadForm(FlaskForm):
    file = FileField(_l("CSV file"), validators=[FileRequired(_l("Choose a CSV file."))])
    basis = TextAreaField(
        _l("Where does the consent in this file come from?"),
        validators=[DataRequired(), Length(max=2000)],
        description=_l(
            "For example: \"Paper sign-up forms 2023–2024 with a newsletter tick box\". "
            "It is kept with every consent this import records."
        ),
    )
    consent_is_email_optin = BooleanField(
        _l("The file's consent column means the customer opted in to marketing email")
    )


NOT_IN_FILE = ""


class ImportMappingForm(FlaskForm):
    """One select per target field; its choices are the file's columns."""

    def __init__(self, headers: list[str], *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [SelectChoice(NOT_IN_FILE, _l("— not in the file —"))] + [
            SelectChoice(str(i), header or f"#{i + 1}") for i, header in enumerate(headers)
        ]
        for target in TARGET_FIELDS:
            getattr(self, target).choices = choices


for _target in TARGET_FIELDS:
    setattr(ImportMappingForm, _target, SelectField(TARGET_LABELS[_target], choices=[]))


class ReverseStampForm(FlaskForm):
    """A manager reverses a card's latest stamp: the stamp shown, and why."""

    visit_id = HiddenField(validators=[DataRequired()])
    reason = StringField(
        _l("Reason"),
        validators=[DataRequired(_l("Say why the stamp is reversed.")), Length(max=200)],
    )
