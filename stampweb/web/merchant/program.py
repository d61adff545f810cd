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


@bp.route("/program", methods=["GET", "POST"])
@manager_required
def program():
    merchant_id = current_user.merchant_id
    current = program_service.get_program(merchant_id)
    form = ProgramForm(obj=current)
    if form.validate_on_submit():
        try:
            program_service.update_program(
                merchant_id,
                stamps_required=form.stamps_required.data,
                reward_text=form.reward_text.data,
                birthday_gift_text=form.birthday_gift_text.data,
                voucher_validity_days=form.voucher_validity_days.data,
                stamp_cooldown_minutes=form.stamp_cooldown_minutes.data,
                daily_stamp_cap=form.daily_stamp_cap.data,
            )
        except program_service.SettingsError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(_("The program is saved."), "success")
            return redirect(url_for("merchant.program"))
    return render_template("merchant/program.html", form=form)


@bp.route("/settings", methods=["GET", "POST"])
@manager_required
def settings():
    merchant_id = current_user.merchant_id
    merchant = program_service.get_merchant(merchant_id)
    form = SettingsForm(obj=merchant)
    if form.validate_on_submit():
        try:
            program_service.update_merchant_settings(
                merchant_id,
                name=form.name.data,
                timezone=form.timezone.data,
                locale=form.locale.data,
                brand_color=form.brand_color.data,
                sender_name=form.sender_name.data,
                sender_email=form.sender_email.data,
                postal_address=form.postal_address.data,
                quiet_hours_start=form.quiet_hours_start.data,
                quiet_hours_end=form.quiet_hours_end.data,
                frequency_cap=form.frequency_cap.data,
                double_opt_in=form.double_opt_in.data,
            )
        except program_service.SettingsError as exc:
            _show_errors(form, exc.errors)
        else:
            flash(_("The settings are saved."), "success")
            return redirect(url_for("merchant.settings"))
    return render_template("merchant/program_settings.html", form=form)


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
