"""Program settings, merchant settings, locations and the printable join posters."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import current_user

from ...loyalty import program as program_service
from ...models import Location
from ...qr import qr_svg
from ...tenancy import get_or_404
from .. import manager_required
from . import bp
from .forms import LocationForm, ProgramForm, SettingsForm


def _show_errors(form, errors: dict) -> None:
    """Put a service's per-field answers next to the form's fields."""
    for name, message in errors.items():
        target = getattr(form, name, None)
        if target is not None:
            target.errors = [*target.errors, str(message)]
        else:
            flash(str(message), "error")


def _number(value):
    return float(value) if value is not None else None


def _settings_page(form, save, fields: tuple[str, ...], saved: str, endpoint: str,
                   template: str):
    """A settings form: valid input goes to `save(**fields)`; the service's per-field
    refusals come back beside their fields; success redirects (post/redirect/get)."""
    if form.validate_on_submit():
        try:
            save(current_user.merchant_id, **{name: getattr(form, name).data for name in fields})
        except program_service.SettingsError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(saved, "success")
            return redirect(url_for(endpoint))
    return render_template(template, form=form)


@bp.route("/program", methods=["GET", "POST"])
@manager_required
def program():
    form = ProgramForm(obj=program_service.get_program(current_user.merchant_id))
    return _settings_page(
        form, program_service.update_program,
        ("stamps_required", "reward_text", "birthday_gift_text", "voucher_validity_days",
         "stamp_cooldown_minutes", "daily_stamp_cap"),
        _("The program is saved."), "merchant.program", "merchant/program.html")


@bp.route("/settings", methods=["GET", "POST"])
@manager_required
def settings():
    form = SettingsForm(obj=program_service.get_merchant(current_user.merchant_id))
    return _settings_page(
        form, program_service.update_merchant_settings,
        ("name", "timezone", "locale", "brand_color", "sender_name", "sender_email",
         "postal_address", "quiet_hours_start", "quiet_hours_end", "frequency_cap",
         "double_opt_in"),
        _("The settings are saved."), "merchant.settings", "merchant/program_settings.html")


@bp.route("/locations", methods=["GET", "POST"])
@manager_required
def locations():
    merchant_id = current_user.merchant_id
    form = LocationForm()
    if form.validate_on_submit():
        try:
            program_service.save_location(
                merchant_id,
                None,
                name=form.name.data,
                address=form.address.data,
                latitude=_number(form.latitude.data),
                longitude=_number(form.longitude.data),
            )
        except program_service.SettingsError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(_("%(name)s is added.", name=form.name.data), "success")
            return redirect(url_for("merchant.locations"))
    return render_template(
        "merchant/locations.html",
        form=form,
        locations=program_service.list_locations(merchant_id),
    )


@bp.route("/locations/<int:location_id>", methods=["GET", "POST"])
@manager_required
def location(location_id: int):
    location = get_or_404(Location, location_id)
    form = LocationForm(obj=location)
    if form.validate_on_submit():
        try:
            program_service.save_location(
                current_user.merchant_id,
                location.id,
                name=form.name.data,
                address=form.address.data,
                latitude=_number(form.latitude.data),
                longitude=_number(form.longitude.data),
            )
        except program_service.SettingsError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(_("%(name)s is saved.", name=form.name.data), "success")
            return redirect(url_for("merchant.locations"))
    return render_template("merchant/locations_edit.html", form=form, location=location)


@bp.post("/locations/<int:location_id>/active")
@manager_required
def location_active(location_id: int):
    location = get_or_404(Location, location_id)
    changed = program_service.set_location_active(
        current_user.merchant_id, location.id, not location.active
    )
    if changed.active:
        flash(_("%(name)s is active again.", name=changed.name), "success")
    else:
        flash(_("%(name)s is deactivated.", name=changed.name), "success")
    return redirect(url_for("merchant.locations"))


def _render_poster(location_id: int | None):
    poster = program_service.poster(
        current_user.merchant_id, current_app.config["BASE_URL"], location_id
    )
    return render_template(
        "merchant/poster.html", poster=poster, qr=qr_svg(poster.join_url, border=1)
    )


@bp.get("/poster")
@manager_required
def poster():
    return _render_poster(None)


@bp.get("/locations/<int:location_id>/poster")
@manager_required
def location_poster(location_id: int):
    location = get_or_404(Location, location_id)
    return _render_poster(location.id)
