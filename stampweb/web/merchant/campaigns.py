"""Campaigns: the builder (audience, channels, content, voucher), preview, test send,
send now or schedule, and the live progress while sending.

Drafts and scheduled campaigns open in the builder; once a campaign has
started, its page shows a read-only summary, its progress and the controls
that still apply (pause, resume, cancel). Every control is a POST form with a
CSRF token; sending and cancelling go through a confirmation page first.
"""

from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_babel import format_datetime
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from ...campaigns import builder, results, sending
from ...campaigns.rendering import WALLET_TEXT_LIMIT
from ...campaigns.sending import CampaignStateError
from ...extensions import db
from ...i18n import LANGUAGES
from ...messaging.transport import TransportError
from ...models.campaigns import Campaign
from ...security import is_safe_next
from ...tenancy import get_or_404
from .. import manager_required
from . import bp
from .campaign_forms import CampaignForm, ConfirmForm, ScheduleForm, open_variant_locales

# The email preview is merchant-authored HTML: it renders in a sandboxed frame
# of our own pages only, with no scripts, forms or plugins, whatever it contains.
PREVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data: https:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)
PREVIEW_FORMATS = ("html", "text", "wallet")


def _merchant_id() -> int:
    return current_user.merchant_id


def _is_htmx() -> bool:
    return bool(request.headers.get("HX-Request"))


STATUS_LABELS = {
    "draft": _l("Draft"),
    "scheduled": _l("Scheduled"),
    "sending": _l("Sending"),
    "paused": _l("Paused"),
    "sent": _l("Sent"),
    "cancelled": _l("Cancelled"),
}
CHANNEL_NAMES = {"email": _l("Email"), "wallet": _l("Wallet"), "both": _l("Email and wallet")}


@bp.app_template_global("campaign_status_label")
def campaign_status_label(status: str) -> str:
    return str(STATUS_LABELS.get(status, status))


@bp.app_template_global("campaign_channels_label")
def campaign_channels_label(channels: str) -> str:
    return str(CHANNEL_NAMES.get(channels, channels))


def _state_error(campaign: Campaign) -> None:
    """Another tab (or the sender) changed the campaign first: say what it is now."""
    db.session.rollback()
    flash(_("That can't be done now: the campaign is %(status)s.",
            status=campaign_status_label(campaign.status).lower()), "error")


def _preview_customer_id() -> int | None:
    value = request.args.get("customer_id", type=int)
    return value if value and value > 0 else None


def _preview_locale() -> str | None:
    """?lang=: show the campaign as a customer who reads that language gets it."""
    value = request.args.get("lang")
    return value if value in LANGUAGES else None


def _preview_args(campaign_id: int) -> dict:
    """The preview's URL arguments as they are now, for its frame and its test send."""
    args = {"campaign_id": campaign_id}
    if customer_id := _preview_customer_id():
        args["customer_id"] = customer_id
    if locale := _preview_locale():
        args["lang"] = locale
    return args


# --- list ------------------------------------------------------------------------------------


@bp.get("/campaigns")
@manager_required
def campaigns():
    return render_template("merchant/campaigns.html",
                           rows=builder.list_campaigns(_merchant_id()))


# --- the builder ----------------------------------------------------------------------------


@bp.route("/campaigns/new", methods=["GET", "POST"])
@manager_required
def campaign_new():
    if request.method == "GET":
        form = CampaignForm.from_values(builder.CampaignValues())
        return _editor_page(None, form)
    form = CampaignForm()
    form.validate()  # CSRFProtect has checked the token; the service checks the rest
    if request.form.get("add_variant"):  # "write a version in …": show it, save nothing
        return _editor_page(None, form, adding=request.form["add_variant"])
    try:
        campaign = builder.save(_merchant_id(), form.values(), user_id=current_user.id)
    except builder.BuilderError as exc:
        db.session.rollback()
        form.show_errors(exc.errors)
        return _editor_page(None, form, status=422)
    db.session.commit()
    flash(_("Campaign “%(name)s” saved as a draft.", name=campaign.name), "success")
    return redirect(url_for("merchant.campaign_edit", campaign_id=campaign.id), code=303)


@bp.route("/campaigns/<int:campaign_id>", methods=["GET", "POST"])
@manager_required
def campaign_edit(campaign_id: int):
    campaign = _oneoff_or_404(campaign_id)
    if campaign.status not in builder.EDITABLE_STATES:
        if request.method == "POST":
            flash(_("A campaign that has started can't be changed."), "error")
            return redirect(url_for("merchant.campaign_edit", campaign_id=campaign.id), code=303)
        return _summary_page(campaign)
    if request.method == "GET":
        form = CampaignForm.from_values(builder.CampaignValues.from_campaign(campaign))
        return _editor_page(campaign, form)
    form = CampaignForm()
    form.validate()
    if request.form.get("add_variant"):
        return _editor_page(campaign, form, adding=request.form["add_variant"])
    try:
        builder.save(_merchant_id(), form.values(), campaign_id=campaign.id)
    except builder.BuilderError as exc:
        db.session.rollback()
        form.show_errors(exc.errors)
        return _editor_page(campaign, form, status=422)
    except CampaignStateError:
        _state_error(campaign)
        return redirect(url_for("merchant.campaign_edit", campaign_id=campaign.id), code=303)
    db.session.commit()
    flash(_("Campaign “%(name)s” saved.", name=campaign.name), "success")
    return redirect(url_for("merchant.campaign_edit", campaign_id=campaign.id), code=303)


def wallet_count_context(wallet_text: str | None) -> dict:
    """The wallet text's character counter (merchant/_campaign_wallet_count.html)."""
    return {"wallet_count": len((wallet_text or "").strip()), "wallet_limit": WALLET_TEXT_LIMIT}


def _zone_name() -> str:
    return builder.merchant_zone(current_user.merchant).key


def _editor_page(campaign: Campaign | None, form: CampaignForm, *, status: int = 200,
                 schedule_form: ScheduleForm | None = None, adding: str | None = None):
    form.set_audience_choices(builder.audience_choices(_merchant_id()))
    values = form.values()
    context = {
        "campaign": campaign,
        "form": form,
        "variant_locales": open_variant_locales(form, current_user.merchant.locale, adding),
        "adding_variant": adding,
        "action_url": (url_for("merchant.campaign_edit", campaign_id=campaign.id) if campaign
                       else url_for("merchant.campaign_new")),
        "audience": builder.audience_summary(_merchant_id(), values.audience, values.channels),
        **wallet_count_context(values.wallet_text),
        "zone_name": _zone_name(),
        "confirm_form": ConfirmForm(formdata=None),
    }
    if campaign is not None:
        if schedule_form is None:
            schedule_form = ScheduleForm(formdata=None, scheduled_at=builder.utc_to_local_input(
                campaign.scheduled_at, builder.merchant_zone(current_user.merchant)))
        context.update(
            schedule_form=schedule_form,
            progress=builder.progress(_merchant_id(), campaign.id),
            **preview_context(campaign),
        )
    return render_template("merchant/campaigns_edit.html", **context), status


def preview_context(campaign: Campaign) -> dict:
    """The preview panel's context (merchant/_campaign_preview.html), for this
    request's ?customer_id= and ?lang=; the automation editor shows it too."""
    customer_id = _preview_customer_id()
    try:
        shown = builder.preview(_merchant_id(), campaign.id, customer_id, _preview_locale())
    except LookupError:
        abort(404)
    stored = builder.audience_summary(_merchant_id(), builder.audience_key(campaign.audience),
                                      campaign.channels)
    return {"preview": shown, "preview_customer_id": customer_id,
            "preview_choices": stored.sample, "preview_locale": _preview_locale(),
            "preview_args": _preview_args(campaign.id)}


def _summary_page(campaign: Campaign):
    labels = builder.audience_labels(_merchant_id())
    return render_template(
        "merchant/campaigns_summary.html", campaign=campaign,
        audience_label=labels.get(builder.audience_key(campaign.audience), _("(deleted)")),
        progress=builder.progress(_merchant_id(), campaign.id),
        confirm_form=ConfirmForm(formdata=None), zone_name=_zone_name(),
        results=results.campaign_results(_merchant_id(), campaign.id),
        **preview_context(campaign),
    )


@bp.post("/campaigns/audience")
@manager_required
def campaign_audience():
    """The live audience panel for the builder's current audience and channels."""
    form = CampaignForm()
    summary = builder.audience_summary(_merchant_id(), form.audience.data or "",
                                       form.channels.data or "")
    return render_template("merchant/_campaign_audience.html", audience=summary)


@bp.post("/campaigns/wallet-count")
@manager_required
def campaign_wallet_count():
    """The wallet text's character counter, recounted as the merchant types."""
    form = CampaignForm()
    return render_template("merchant/_campaign_wallet_count.html",
                           **wallet_count_context(form.wallet_text.data))


# --- preview and test send ---------------------------------------------------------------


@bp.get("/campaigns/<int:campaign_id>/preview")
@manager_required
def campaign_preview(campaign_id: int):
    """Exactly what one recipient gets: the email's HTML or text, or the wallet card's back."""
    campaign = get_or_404(Campaign, campaign_id)
    kind = request.args.get("format", "html")
    if kind not in PREVIEW_FORMATS:
        abort(404)
    try:
        shown = builder.preview(_merchant_id(), campaign.id, _preview_customer_id(),
                                _preview_locale())
    except LookupError:
        abort(404)
    if kind == "wallet":
        template = ("merchant/_campaign_wallet_back.html" if _is_htmx()
                    else "merchant/campaigns_wallet_preview.html")
        return render_template(template, campaign=campaign, preview=shown)
    if kind == "text":
        response = make_response(shown.text)
        response.mimetype = "text/plain"
    else:
        response = make_response(shown.html)
        response.mimetype = "text/html"
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/campaigns/<int:campaign_id>/test")
@manager_required
def campaign_test(campaign_id: int):
    """Send the email version to the logged-in user's own address, now."""
    campaign = get_or_404(Campaign, campaign_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        address = builder.send_test(_merchant_id(), campaign.id, current_user.email,
                                    _preview_customer_id(), _preview_locale())
    except TransportError as exc:
        db.session.rollback()
        flash(_("The test email could not be sent: %(error)s", error=str(exc)), "error")
    else:
        flash(_("Test email sent to %(address)s.", address=address), "success")
    # The automation editor sends its flow's test from here and wants its page back.
    back = request.form.get("next")
    if not is_safe_next(back):
        back = (url_for("merchant.campaign_edit", campaign_id=campaign.id)
                if campaign.kind == "oneoff"
                else url_for("merchant.automation_edit", kind=campaign.kind))
    return redirect(back, code=303)


# --- controls --------------------------------------------------------------------------------


def _back(campaign: Campaign):
    return redirect(url_for("merchant.campaign_edit", campaign_id=campaign.id), code=303)


def _readiness_error(exc: builder.BuilderError) -> None:
    for message in exc.errors.values():
        flash(_("Fix this first: %(problem)s", problem=message), "error")


@bp.route("/campaigns/<int:campaign_id>/send", methods=["GET", "POST"])
@manager_required
def campaign_send(campaign_id: int):
    """GET asks “send to N customers now?”; POST starts sending."""
    campaign = _oneoff_or_404(campaign_id)
    if request.method == "GET":
        audience = builder.audience_summary(
            _merchant_id(), builder.audience_key(campaign.audience), campaign.channels)
        return render_template("merchant/campaigns_confirm.html", campaign=campaign,
                               action="send", audience=audience,
                               confirm_form=ConfirmForm(formdata=None))
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        builder.send_now(_merchant_id(), campaign.id)
    except builder.BuilderError as exc:
        db.session.rollback()
        _readiness_error(exc)
    except CampaignStateError:
        _state_error(campaign)
    else:
        flash(_("Sending “%(name)s” now.", name=campaign.name), "success")
    return _back(campaign)


@bp.post("/campaigns/<int:campaign_id>/schedule")
@manager_required
def campaign_schedule(campaign_id: int):
    campaign = _oneoff_or_404(campaign_id)
    schedule_form = ScheduleForm()
    if not schedule_form.validate_on_submit():
        abort(400)
    try:
        scheduled = builder.schedule(_merchant_id(), campaign.id,
                                     schedule_form.scheduled_at.data or "")
    except builder.BuilderError as exc:
        db.session.rollback()
        if "scheduled_at" not in exc.errors:
            _readiness_error(exc)
            return _back(campaign)
        schedule_form.scheduled_at.errors = [exc.errors["scheduled_at"]]
        form = CampaignForm.from_values(builder.CampaignValues.from_campaign(campaign))
        return _editor_page(campaign, form, status=422, schedule_form=schedule_form)
    except CampaignStateError:
        _state_error(campaign)
        return _back(campaign)
    flash(_("Scheduled for %(when)s (%(zone)s).",
            when=_format_local(scheduled.scheduled_at), zone=_zone_name()), "success")
    return _back(campaign)


def _oneoff_or_404(campaign_id: int) -> Campaign:
    """A one-off campaign of this merchant. An automation's backing campaign is edited,
    switched on and off on its automation page; sending, pausing or cancelling it from
    here would start or stop the automation behind its switch's back."""
    return get_or_404(Campaign, campaign_id, kind="oneoff")


def _format_local(when) -> str:
    return format_datetime(when, "medium")  # Flask-Babel shows it in the merchant's zone


def _transition(campaign_id: int, change, done_message):
    campaign = _oneoff_or_404(campaign_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        change(campaign.id)
    except CampaignStateError:
        _state_error(campaign)
    else:
        flash(done_message(campaign.name), "success")
    return _back(campaign)


@bp.post("/campaigns/<int:campaign_id>/pause")
@manager_required
def campaign_pause(campaign_id: int):
    return _transition(campaign_id, sending.pause,
                       lambda name: _("“%(name)s” is paused.", name=name))


@bp.post("/campaigns/<int:campaign_id>/resume")
@manager_required
def campaign_resume(campaign_id: int):
    return _transition(campaign_id, sending.resume,
                       lambda name: _("“%(name)s” is sending again.", name=name))


@bp.route("/campaigns/<int:campaign_id>/cancel", methods=["GET", "POST"])
@manager_required
def campaign_cancel(campaign_id: int):
    """GET asks for confirmation; POST cancels for good (unsent messages are skipped)."""
    if request.method == "GET":
        campaign = _oneoff_or_404(campaign_id)
        return render_template("merchant/campaigns_confirm.html", campaign=campaign,
                               action="cancel", confirm_form=ConfirmForm(formdata=None))
    return _transition(campaign_id, sending.cancel,
                       lambda name: _("“%(name)s” is cancelled.", name=name))


@bp.get("/campaigns/<int:campaign_id>/progress")
@manager_required
def campaign_progress(campaign_id: int):
    """The progress panel. While sending (or scheduled) it asks again every 2 s; when the
    status differs from the one the page was drawn with, htmx reloads the page so the
    controls match."""
    campaign = _oneoff_or_404(campaign_id)
    progress = builder.progress(_merchant_id(), campaign.id)
    response = make_response(render_template(
        "merchant/_campaign_progress.html", campaign=campaign, progress=progress,
        zone_name=_zone_name()))
    seen = request.args.get("seen")
    if _is_htmx() and seen and seen != progress.status:
        response.headers["HX-Refresh"] = "true"
    return response
