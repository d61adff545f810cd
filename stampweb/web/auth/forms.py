from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length

from ...accounts import MIN_PASSWORD_LENGTH
from ...i18n import LANGUAGES
from ...validation import EmailAddress

ROLE_CHOICES = [
    SelectChoice("staff", _l("Staff")),
    SelectChoice("manager", _l("Manager")),
    SelectChoice("owner", _l("Owner")),
]


class LoginForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), EmailAddress()])
    password = PasswordField(_l("Password"), validators=[DataRequired()])


class UserForm(FlaskForm):
    name = StringField(_l("Name"), validators=[Length(max=120)])
    email = EmailField(_l("Email"), validators=[DataRequired(), EmailAddress(), Length(max=254)])
    role = SelectField(
        _l("Role"),
        choices=ROLE_CHOICES,
    )
    password = PasswordField(
        _l("Password"), validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH)]
    )


class RoleForm(FlaskForm):
    role = SelectField(
        _l("Role"),
        choices=ROLE_CHOICES,
    )


class PasswordForm(FlaskForm):
    current_password = PasswordField(_l("Current password"), validators=[DataRequired()])
    new_password = PasswordField(
        _l("New password"), validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH)]
    )
    confirm = PasswordField(
        _l("Repeat the new password"),
        validators=[DataRequired(), EqualTo("new_password", message=_l("The passwords differ."))],
    )


class LanguageForm(FlaskForm):
    # Each language is named in itself, so whoever reads it can find their own.
    # "" follows the merchant's default language.
    locale = RadioField(
        _l("Language"),
        choices=[SelectChoice("", _l("The business’s default"))]
        + [SelectChoice(code, name) for code, name in LANGUAGES.items()],
        default="",
    )
