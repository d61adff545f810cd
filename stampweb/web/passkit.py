"""Wallet endpoints: Apple's PassKit web service (/wallet/v1/…), pass downloads and
the Google Wallet save link.

The v1 routes are called by iPhones, not people: no CSRF token, no HTML
error pages (stampweb.web answers JSON under /wallet/), bodies JSON or empty.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, request
from flask_babel import gettext as _
from werkzeug.http import http_date

from ..extensions import csrf, db, limiter
from ..models import Merchant
from ..tenancy import set_tenant
from ..wallet import apple_pass, passkit, updates
from ..wallet.google import GoogleWalletError

bp = Blueprint("passkit", __name__, url_prefix="/wallet")
csrf.exempt(bp)
log = logging.getLogger(__name__)

# A phone registers, lists and fetches in bursts; a few hundred a minute per
# address still lets a whole shop's Wi-Fi through.
def _device_limit() -> str:
    return current_app.config.get("WALLET_DEVICE_RATE_LIMIT", "300 per minute")


def _download_limit() -> str:
    return current_app.config.get("WALLET_DOWNLOAD_RATE_LIMIT", "30 per minute")


@bp.errorhandler(401)
def _unauthorized(_error):
    return jsonify(error="unauthorized", status=401), 401


def _empty(status: int) -> Response:
    return Response(status=status)


def _resolve(pass_type_id: str, serial: str, authorization: str | None) -> passkit.PassRef:
    """The pass named in the URL, if the Authorization header carries its token; else 401.

    An unknown serial answers 401 as well, so serials cannot be probed.
    """
    ref = passkit.find_pass(pass_type_id, serial)
    if ref is None or not passkit.authorized(ref.card, authorization):
        abort(401)
    set_tenant(ref.card.merchant_id)
    return ref


@bp.post("/v1/devices/<device_id>/registrations/<pass_type_id>/<serial>")
@limiter.limit(_device_limit)
def register(device_id: str, pass_type_id: str, serial: str):
    ref = _resolve(pass_type_id, serial, request.headers.get("Authorization"))
    body = request.get_json(silent=True) or {}
    push_token = body.get("pushToken") if isinstance(body, dict) else None
    if not isinstance(push_token, str) or not push_token or len(push_token) > 200:
        return jsonify(error="pushToken missing"), 400
    created = passkit.register_device(ref.card, device_id[:128], pass_type_id, push_token)
    return _empty(201 if created else 200)


@bp.delete("/v1/devices/<device_id>/registrations/<pass_type_id>/<serial>")
@limiter.limit(_device_limit)
def unregister(device_id: str, pass_type_id: str, serial: str):
    ref = _resolve(pass_type_id, serial, request.headers.get("Authorization"))
    passkit.unregister_device(ref.card, device_id, pass_type_id)
    return _empty(200)


@bp.get("/v1/devices/<device_id>/registrations/<pass_type_id>")
@limiter.limit(_device_limit)
def updated_serials(device_id: str, pass_type_id: str):
    found = passkit.serials_updated_since(device_id, pass_type_id,
                                          request.args.get("passesUpdatedSince"))
    if not found or not found[0]:
        return _empty(204)
    serials, last_updated = found
    return jsonify(serialNumbers=serials, lastUpdated=last_updated)


@bp.route("/v1/passes/<pass_type_id>/<serial>", methods=["GET", "HEAD"])
@limiter.limit(_device_limit)
def latest_pass(pass_type_id: str, serial: str):
    ref = _resolve(pass_type_id, serial, request.headers.get("Authorization"))
    row = passkit.wallet_pass_for(ref.card)
    db.session.commit()
    if passkit.not_modified_since(row.modified_at, request.if_modified_since):
        response = _empty(304)
        response.headers["Last-Modified"] = http_date(row.modified_at)
        return response
    built = passkit.build_card_pass(ref.card.merchant_id, ref.card.id)
    return _pkpass_response(built, attachment=False)


@bp.post("/v1/log")
@limiter.limit(_device_limit)
def device_log():
    body = request.get_json(silent=True) or {}
    logs = body.get("logs") if isinstance(body, dict) else None
    for line in (logs or [])[:50]:
        log.warning("Apple Wallet device log: %s", str(line)[:500])
    return _empty(200)


def _pkpass_response(built: passkit.BuiltPass, *, attachment: bool) -> Response:
    response = Response(built.data, mimetype=apple_pass.PKPASS_MIMETYPE)
    response.headers["Last-Modified"] = http_date(built.modified_at)
    response.headers["Cache-Control"] = "no-store"
    if attachment:
        response.headers["Content-Disposition"] = 'attachment; filename="card.pkpass"'
    return response


# --- for customers -------------------------------------------------------------------


@bp.get("/pass/<token>.pkpass")
@limiter.limit(_download_limit)
def download_pass(token: str):
    """The signed pass of the card whose page has this token ("Add to Apple Wallet")."""
    card = passkit.card_by_token(token)
    if card is None:
        abort(404)
    set_tenant(card.merchant_id)
    try:
        built = passkit.build_card_pass(card.merchant_id, card.id)
    except passkit.WalletNotConfigured:
        abort(404)
    return _pkpass_response(built, attachment=True)


@bp.get("/google/<token>")
@limiter.limit(_download_limit)
def google_save(token: str):
    """Create the card's Google Wallet object if needed, then go to Google's save page."""
    card = passkit.card_by_token(token)
    if card is None:
        abort(404)
    set_tenant(card.merchant_id)
    try:
        url = updates.google_save_url(card.merchant_id, card.id)
    except passkit.WalletNotConfigured:
        abort(404)
    except GoogleWalletError as exc:
        current_app.logger.warning("Google Wallet save link failed: %s", exc)
        return jsonify(error=_("Google Wallet is not reachable right now; try again soon.")), 503
    return redirect(url, code=303)


@bp.get("/logo/<int:merchant_id>.png")
@limiter.exempt
def merchant_logo(merchant_id: int):
    """The merchant's square logo, public: Google Wallet shows it as the programLogo."""
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
        abort(404)
    data = apple_pass.square_logo(merchant.name, merchant.brand_color, merchant.logo)
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
