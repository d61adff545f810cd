"""Input checks shared by forms, the API and imports."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from flask_babel import lazy_gettext as _l
from wtforms.validators import ValidationError


def normalize_email_address(value: str) -> str:
    """Return the address lower-cased and normalised, or raise ValueError with a reason.

    `.test` domains are accepted: the demo merchant's logins use them.
    """
    try:
        result = validate_email(
            value.strip(), check_deliverability=False, test_environment=True
        )
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return result.normalized.lower()


class EmailAddress:
    """WTForms validator built on normalize_email_address()."""

    def __init__(self, message=None):
        self.message = message

    def __call__(self, form, field):
        if not field.data:
            return
        try:
            normalize_email_address(field.data)
        except ValueError as exc:
            raise ValidationError(self.message or _l("Enter a valid email address.")) from exc
