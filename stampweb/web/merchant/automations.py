"""The automations page: each flow's switch, settings, message, 7-day preview and results.

The switch is a small form per flow: without JavaScript it posts and comes
back to the page; with htmx it swaps the flow's card in place.
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice

from ...automations import engine, manage
from ...automations.flows import FLOWS
from ...campaigns import tags as tag_service
from ...extensions import db
from ...models import Campaign
from .. import manager_required
from . import bp
from .campaign_forms import (
    ConfirmForm,
    MessageForm,
    open_variant_locales,
    show_error,
    variants_data,
    variants_kwargs,
)
from .campaigns import preview_context, wallet_count_context

# The flows as the page groups them: a step and its follow-up share a section.
SECTIONS = (
    ("birthday",),
    ("winback", "winback2"),
    ("reward_ready", "voucher_expiry"),
    ("welcome",),
    ("tag_notify",),
)


class SwitchForm(FlaskForm):
    pass


def _is_htmx() -> bool:
    return bool(request.headers.get("HX-Request"))


def _merchant_id() -> int:
    return current_user.merchant_id


def _flow_form_class(kind: str):
    """A form with the flow's own settings, its firing hour and its message."""
    spec = FLOWS[kind]
    tag_choices = [SelectChoice("", _("Choose a tag"))] + [
        SelectChoice(str(tag.id), tag.name) for tag, _count in tag_service.list_tags(_merchant_id())
    ]

    class FlowForm(MessageForm):
        local_hour = SelectField(_("Send at (your local time)"),
                                 choices=[SelectChoice(str(h), f"{h:02d}:00") for h in range(24)])

    for setting in spec.settings:
        if setting.kind == "int":
            field = StringField(setting.label, render_kw={
                "inputmode": "numeric", "type": "number",
                "min": setting.minimum, "max": setting.maximum})
        elif setting.kind == "choice":
            field = RadioField(setting.label, choices=[SelectChoice(v, str(label))
                                                       for v, label in setting.choices])
        elif setting.kind == "tag":
            field = SelectField(setting.label, choices=tag_choices)
        else:
            field = StringField(setting.label)
        setattr(FlowForm, f"setting_{setting.name}", field)
    return FlowForm


def _settings_fields(form, kind: str) -> list:
    return [(getattr(form, f"setting_{s.name}"), s.help) for s in FLOWS[kind].settings]


def _form_for(kind: str, formdata=None):
    flow = manage.get_flow(_merchant_id(), kind)
    form_class = _flow_form_class(kind)
    if formdata is not None:
        return flow, form_class()
    campaign = db.session.get(Campaign, flow.campaign_id)
    settings = FLOWS[kind].effective(flow.settings)
    data = {f"setting_{name}": "" if value is None else str(value)
            for name, value in settings.items()}
    data.update(local_hour=str(flow.local_hour), channels=campaign.channels,
                **{name: getattr(campaign, name) for name in manage.CONTENT_FIELDS},
                **variants_kwargs(campaign.variants))
    return flow, form_class(formdata=None, data=data)


def _card_context(flow, total: int | None = None) -> dict:
    merchant_id = _merchant_id()
    if total is None:
        total, _rows = engine.preview(merchant_id, flow.kind, limit=0)
    return {
        "flow": flow,
        "spec": FLOWS[flow.kind],
        "results": manage.results(merchant_id, flow.kind),
        "preview_total": total,
        "switch_form": SwitchForm(formdata=None),
    }


@bp.get("/automations")
@manager_required
def automations():
    flows = {flow.kind: flow for flow in manage.ensure_flows(_merchant_id())}
    sections = [[_card_context(flows[kind]) for kind in section] for section in SECTIONS]
    return render_template("merchant/automations.html", sections=sections)


@bp.post("/automations/<kind>/switch")
@manager_required
def automation_switch(kind: str):
    if kind not in FLOWS:
        abort(404)
    form = SwitchForm()
    if not form.validate_on_submit():
        abort(400)
    turn_on = request.form.get("enabled") == "1"
    error = None
    try:
        flow = manage.set_enabled(_merchant_id(), kind, turn_on)
    except manage.AutomationError as exc:
        db.session.rollback()
        flow = manage.get_flow(_merchant_id(), kind)
        error = _("Finish the settings first: %(problems)s",
                  problems="; ".join(str(m) for m in exc.errors.values()))
    if _is_htmx():
        return render_template("merchant/_automation_flow.html", error=error,
                               **_card_context(flow))
    if error:
        flash(error, "error")
        return redirect(url_for("merchant.automation_edit", kind=kind))
    flash(_("%(name)s is on.", name=FLOWS[kind].label) if turn_on
          else _("%(name)s is off.", name=FLOWS[kind].label), "success")
    return redirect(url_for("merchant.automations"))


@bp.route("/automations/<kind>", methods=["GET", "POST"])
@manager_required
def automation_edit(kind: str):
    if kind not in FLOWS:
        abort(404)
    status = 200
    adding = None
    if request.method == "POST" and request.form.get("add_variant"):
        # "Write a version in …": show that language's fields, save nothing.
        flow, form = _form_for(kind, formdata=request.form)
        form.validate()
        adding = request.form["add_variant"]
    elif request.method == "POST":
        flow, form = _form_for(kind, formdata=request.form)
        form.validate()  # CSRFProtect has checked the token; the service checks the values
        try:
            manage.save_flow(
                _merchant_id(), kind,
                settings={s.name: getattr(form, f"setting_{s.name}").data
                          for s in FLOWS[kind].settings},
                local_hour=form.local_hour.data, channels=form.channels.data or "",
                content={name: getattr(form, name).data or ""
                         for name in manage.CONTENT_FIELDS},
                variants=variants_data(form),
            )
        except manage.AutomationError as exc:
            db.session.rollback()
            for name, message in exc.errors.items():
                if not (show_error(form, name, message)
                        or show_error(form, f"setting_{name}", message)):
                    flash(str(message), "error")
            status = 422
        else:
            flash(_("Saved."), "success")
            return redirect(url_for("merchant.automation_edit", kind=kind))
    else:
        flow, form = _form_for(kind)
    total, rows = engine.preview(_merchant_id(), kind)
    # The flow's message is its backing campaign: the same preview and test send
    # as the campaign editor, of the saved version.
    campaign = db.session.get(Campaign, flow.campaign_id)
    shown = preview_context(campaign)
    back_args = {k: v for k, v in shown["preview_args"].items() if k != "campaign_id"}
    return render_template(
        "merchant/automations_edit.html", form=form, settings_fields=_settings_fields(form, kind),
        preview_rows=rows, **_card_context(flow, total),
        variant_locales=open_variant_locales(form, current_user.merchant.locale, adding),
        adding_variant=adding, campaign=campaign, confirm_form=ConfirmForm(formdata=None),
        test_next=url_for("merchant.automation_edit", kind=kind, **back_args) + "#preview",
        **wallet_count_context(form.wallet_text.data), **shown,
    ), status
