"""Forms of the campaign builder.

The fields only carry what was typed (and the CSRF token): the builder
service (stampweb/campaigns/builder.py) checks every rule and says which field
is at fault, so the form re-renders with each message beside its input.
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    Form,
    FormField,
    RadioField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice

from ...campaigns.builder import CampaignValues
from ...campaigns.rendering import WALLET_TEXT_LIMIT
from ...i18n import LANGUAGES

CHANNEL_LABELS = [
    SelectChoice("email", _l("Email")),
    SelectChoice("wallet", _l("Wallet card")),
    SelectChoice("both", _l("Email and wallet card")),
]


class VariantForm(Form):
    """One language's version of the message; a plain Form: the page's CSRF token covers it."""

    subject = StringField(_l("Subject"))
    preheader = StringField(_l("Preheader (optional)"))
    body_markdown = TextAreaField(_l("Message"), render_kw={"rows": 6})
    wallet_text = StringField(_l("Wallet text"), render_kw={"maxlength": WALLET_TEXT_LIMIT + 50})


def add_variant_fields(form_class: type) -> type:
    """Give `form_class` a `variant_<code>` sub-form per shipped language.

    Every language gets one; the template shows all but the merchant's
    default, whose text is the form's own fields.
    """
    for code in LANGUAGES:
        setattr(form_class, f"variant_{code}", FormField(VariantForm, label=LANGUAGES[code]))
    return form_class


def variants_data(form) -> dict[str, dict[str, str]]:
    """What was typed in each language's sub-form."""
    return {code: {name: value or "" for name, value in form[f"variant_{code}"].data.items()}
            for code in LANGUAGES}


def variants_kwargs(variants: dict | None) -> dict[str, dict[str, str]]:
    """Stored variants as keyword data for a form built with add_variant_fields."""
    return {f"variant_{code}": dict((variants or {}).get(code) or {}) for code in LANGUAGES}


def open_variant_locales(form, default_locale: str, adding: str | None = None) -> list[str]:
    """The languages whose section the editor shows: written ones, ones with an
    error, and `adding` (the language the user just asked to add). The rest
    are only buttons, so an unused language adds no inputs to the page."""
    shown = []
    for code in LANGUAGES:
        if code == default_locale:
            continue
        sub = form[f"variant_{code}"]
        if code == adding or any(sub.data.values()) or sub.errors:
            shown.append(code)
    return shown


def show_error(form, key: str, message) -> bool:
    """Put `message` beside the field `key` names (`subject` or `variant_ru-subject`)."""
    name, _sep, sub = key.partition("-")
    if name not in form._fields:
        return False
    target = form[name][sub] if sub else form[name]
    target.errors = [*target.errors, str(message)]
    return True


@add_variant_fields
class MessageForm(FlaskForm):
    """The message of a campaign or an automation: channels, email, wallet text and
    the per-language versions. One definition for both editors, which render it
    with the same partial (templates/merchant/_message_editor.html)."""

    channels = RadioField(_l("Send by"), choices=CHANNEL_LABELS, validate_choice=False,
                          default="email")
    subject = StringField(_l("Subject"))
    preheader = StringField(_l("Preheader (optional)"))
    body_markdown = TextAreaField(_l("Message"), render_kw={"rows": 8})
    wallet_text = StringField(_l("Wallet text"),
                              render_kw={"maxlength": WALLET_TEXT_LIMIT + 50})


class CampaignForm(MessageForm):
    name = StringField(_l("Name"))
    audience = SelectField(_l("Audience"), validate_choice=False, default="all")
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
            variants=variants_data(self),
        )

    @classmethod
    def from_values(cls, values: CampaignValues) -> CampaignForm:
        data = {name: value for name, value in vars(values).items() if name != "variants"}
        return cls(formdata=None, **data, **variants_kwargs(values.variants))

    def show_errors(self, errors: dict[str, str]) -> None:
        for name, message in errors.items():
            show_error(self, name, message)


class ScheduleForm(FlaskForm):
    scheduled_at = StringField(_l("Send at"), render_kw={"type": "datetime-local"})


class ConfirmForm(FlaskForm):
    """Send, pause, resume, cancel and test buttons: the CSRF token is all they carry."""
