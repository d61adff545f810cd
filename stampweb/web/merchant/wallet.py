"""Wallet settings: what is configured, each certificate's subject and expiry, what is
missing; owners may upload the merchant's own credentials."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ...wallet.credentials import wallet_status
from ...wallet.settings import (
    CLEARABLE,
    Upload,
    WalletSettingsError,
    clear_wallet_setting,
    merchant_settings_overrides,
    save_wallet_settings,
)
from .. import manager_required, owner_required
from . import bp

MAX_UPLOAD = 64 * 1024


class WalletSettingsForm(FlaskForm):
    apple_pass_type_id = StringField(_l("Pass type ID"), validators=[Optional(), Length(max=128)])
    apple_team_id = StringField(_l("Team ID"), validators=[Optional(), Length(max=20)])
    apple_pass_cert = FileField(_l("Pass certificate (.pem, .cer or .p12)"))
    apple_pass_key = FileField(_l("Its private key (.pem; not needed with a .p12)"))
    key_password = PasswordField(_l("Password of the key or .p12 (if any)"),
                                 validators=[Optional(), Length(max=200)])
    apple_wwdr_cert = FileField(_l("Apple WWDR intermediate certificate (G4)"))
    apns_key_id = StringField(_l("APNs key ID"), validators=[Optional(), Length(max=20)])
    apns_key = FileField(_l("APNs auth key (.p8)"))
    google_issuer_id = StringField(_l("Google Wallet issuer ID"),
                                   validators=[Optional(), Length(max=40)])
    google_service_account = FileField(_l("Google service account key (.json)"))


class ClearForm(FlaskForm):
    name = HiddenField(validators=[DataRequired()])


def _upload(field) -> Upload | None:
    storage = field.data
    if not storage or not getattr(storage, "filename", ""):
        return None
    data = storage.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        field.errors = [_("This file is too large for a certificate or key.")]
        return None
    return Upload(filename=storage.filename, data=data)


def _page(form: WalletSettingsForm, status_code: int = 200):
    merchant_id = current_user.merchant_id
    return render_template(
        "merchant/wallet.html",
        form=form,
        clear_form=ClearForm(),
        status=wallet_status(merchant_id),
        overrides=merchant_settings_overrides(merchant_id),
        clearable=CLEARABLE,
        can_edit=current_user.has_role("owner"),
    ), status_code


@bp.get("/wallet")
@manager_required
def wallet_settings():
    return _page(WalletSettingsForm())


@bp.post("/wallet")
@owner_required
def save_wallet():
    form = WalletSettingsForm()
    if not form.validate_on_submit():
        return _page(form, 400)
    names = ("apple_pass_cert", "apple_pass_key", "apple_wwdr_cert", "apns_key",
             "google_service_account")
    uploads = {name: _upload(getattr(form, name)) for name in names}
    if any(getattr(form, name).errors for name in names):
        return _page(form, 400)
    try:
        save_wallet_settings(
            current_user.merchant_id,
            values={name: getattr(form, name).data for name in (
                "apple_pass_type_id", "apple_team_id", "apns_key_id", "google_issuer_id",
                "key_password")},
            uploads=uploads,
        )
    except WalletSettingsError as exc:
        for name, message in exc.errors.items():
            getattr(form, name).errors = [message]
        return _page(form, 400)
    flash(_("Wallet settings saved."), "success")
    return redirect(url_for("merchant.wallet_settings"), code=303)


@bp.post("/wallet/clear")
@owner_required
def clear_wallet():
    form = ClearForm()
    if not form.validate_on_submit() or form.name.data not in CLEARABLE:
        flash(_("Unknown setting."), "error")
    else:
        clear_wallet_setting(current_user.merchant_id, form.name.data)
        flash(_("The installation's setting applies again."), "success")
    return redirect(url_for("merchant.wallet_settings"), code=303)
