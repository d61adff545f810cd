"""Settings → API: keys for POS systems and scripts, webhook endpoints and their delivery log."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import SelectField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length
from wtforms.widgets import CheckboxInput, ListWidget

from ... import webhooks
from ...api import auth
from ...models.api import API_SCOPES, SCOPE_WRITE, WEBHOOK_EVENTS, WebhookDelivery
from ...tenancy import get_or_404
from .. import owner_required
from . import bp


class ApiKeyForm(FlaskForm):
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=auth.NAME_MAX)])
    scope = SelectField(
        _l("Access"), default=SCOPE_WRITE,
        choices=[SelectChoice("write", _l("Read and write")),
                 SelectChoice("read", _l("Read only"))],
    )


class WebhookForm(FlaskForm):
    url = StringField(_l("URL"), validators=[DataRequired(), Length(max=webhooks.URL_MAX)])
    description = StringField(_l("Description (optional)"), validators=[Length(max=200)])
    events = SelectMultipleField(
        _l("Events"), choices=[SelectChoice(event, event) for event in WEBHOOK_EVENTS],
        default=list(WEBHOOK_EVENTS), widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
    )


def _page(key_form=None, webhook_form=None, new_key=None, new_endpoint=None, status=200):
    merchant_id = current_user.merchant_id
    return render_template(
        "merchant/api.html",
        keys=auth.list_keys(merchant_id),
        endpoints=webhooks.list_endpoints(merchant_id),
        key_form=key_form or ApiKeyForm(formdata=None),
        webhook_form=webhook_form or WebhookForm(formdata=None),
        new_key=new_key,
        new_endpoint=new_endpoint,
        scopes=API_SCOPES,
    ), status


@bp.get("/settings/api")
@owner_required
def api_settings():
    return _page()


@bp.post("/settings/api/keys")
@owner_required
def api_key_create():
    form = ApiKeyForm()
    if form.validate_on_submit():
        try:
            new_key = auth.create_key(current_user.merchant_id, form.name.data, form.scope.data,
                                      created_by_user_id=current_user.id)
        except auth.ApiKeyError as exc:
            getattr(form, exc.field, form.name).errors.append(str(exc.message))
        else:
            # Shown on this page only: the key is never stored and never in a cookie.
            return _page(new_key=new_key)
    return _page(key_form=form, status=422)


@bp.post("/settings/api/keys/<int:key_id>/revoke")
@owner_required
def api_key_revoke(key_id: int):
    if not auth.revoke_key(current_user.merchant_id, key_id):
        abort(404)
    flash(_("The key is revoked; requests with it are refused from now on."), "success")
    return redirect(url_for("merchant.api_settings"))


@bp.post("/settings/api/webhooks")
@owner_required
def api_webhook_create():
    form = WebhookForm()
    if form.validate_on_submit():
        try:
            endpoint = webhooks.create_endpoint(current_user.merchant_id, form.url.data,
                                                form.events.data, form.description.data)
        except webhooks.WebhookError as exc:
            getattr(form, exc.field, form.url).errors.append(str(exc.message))
        else:
            return _page(new_endpoint=endpoint)
    return _page(webhook_form=form, status=422)


@bp.post("/settings/api/webhooks/<int:endpoint_id>/delete")
@owner_required
def api_webhook_delete(endpoint_id: int):
    if not webhooks.delete_endpoint(current_user.merchant_id, endpoint_id):
        abort(404)
    flash(_("The endpoint is removed."), "success")
    return redirect(url_for("merchant.api_settings"))


@bp.get("/settings/api/webhooks/<int:endpoint_id>")
@owner_required
def api_webhook(endpoint_id: int):
    """The endpoint's secret and delivery log; htmx polls the log fragment."""
    merchant_id = current_user.merchant_id
    endpoint = webhooks.get_endpoint(merchant_id, endpoint_id)
    if endpoint is None:
        abort(404)
    log = webhooks.deliveries(merchant_id, endpoint_id)
    template = ("merchant/_api_deliveries.html" if request.headers.get("HX-Request")
                else "merchant/api_webhook.html")
    response = render_template(template, endpoint=endpoint, deliveries=log)
    return response, 200, {"Vary": "HX-Request"}


@bp.post("/settings/api/deliveries/<int:delivery_id>/retry")
@owner_required
def api_delivery_retry(delivery_id: int):
    merchant_id = current_user.merchant_id
    get_or_404(WebhookDelivery, delivery_id)  # another merchant's delivery does not exist
    endpoint_id = request.form.get("endpoint_id", type=int)
    if webhooks.retry_delivery(merchant_id, delivery_id):
        flash(_("Sending it again."), "success")
    else:
        flash(_("Only a failed delivery can be sent again."), "error")
    if endpoint_id and webhooks.get_endpoint(merchant_id, endpoint_id) is not None:
        return redirect(url_for("merchant.api_webhook", endpoint_id=endpoint_id))
    return redirect(url_for("merchant.api_settings"))
