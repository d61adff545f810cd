"""Forms of the campaign builder.

The fields only carry what was typed (and the CSRF token): the builder
service (stampweb/campaigns/builder.py) checks every rule and says which field
is at fault, so the form re-renders with each message beside its input.
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice

from ...campaigns.builder import CampaignValues
from ...campaigns.rendering import WALLET_TEXT_LIMIT

CHANNEL_LABELS = [
    SelectChoice("email", _l("Email")),
    SelectChoice("wallet", _l("Wallet card")),
    SelectChoice("both", _l("Email and wallet card")),
]


class CampaignForm(FlaskForm):
    name = StringField(_l("Name"))
    audience = SelectField(_l("Audience"), validate_choice=False, default="all")
    channels = RadioField(_l("Send by"), choices=CHANNEL_LABELS, validate_choice=False,
                          default="email")
    subject = StringField(_l("Subject"))
    preheader = StringField(_l("Preheader (optional)"))
    body_markdown = TextAreaField(_l("Message"), render_kw={"rows": 8})
    wallet_text = StringField(_l("Wallet text"),
                              render_kw={"maxlength": WALLET_TEXT_LIMIT + 50})
    voucher = BooleanField(_l("Give each recipient a voucher"))
    voucher_title = StringField(_l("Voucher"))
    voucher_valid_days = StringField(_l("Valid for (days)"),
                                     render_kw={"inputmode": "numeric"})

    def set_audience_choices(self, groups: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """Options grouped as builder.audience_choices gives them ("" = no group)."""
        self.audience.choices = [
            SelectChoice(value, name, optgroup=label or None)
            for label, choices in groups for value, name in choices
        ]

    def values(self) -> CampaignValues:
        return CampaignValues(
            name=self.name.data or "",
            audience=self.audience.data or "",
            channels=self.channels.data or "",
            subject=self.subject.data or "",
            preheader=self.preheader.data or "",
            body_markdown=self.body_markdown.data or "",
            wallet_text=self.wallet_text.data or "",
            voucher=bool(self.voucher.data),
            voucher_title=self.voucher_title.data or "",
            voucher_valid_days=self.voucher_valid_days.data or "",
        )

    @classmethod
    def from_values(cls, values: CampaignValues) -> CampaignForm:
        return cls(formdata=None, **vars(values))

    def show_errors(self, errors: dict[str, str]) -> None:
        for name, message in errors.items():
            if name in self._fields:
                self[name].errors = [message]


class ScheduleForm(FlaskForm):
    scheduled_at = StringField(_l("Send at"), render_kw={"type": "datetime-local"})


class ConfirmForm(FlaskForm):
    """Send, pause, resume, cancel and test buttons: the CSRF token is all they carry."""
