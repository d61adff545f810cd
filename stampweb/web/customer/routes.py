"""The customer portal: join, card, confirmation, preferences and unsubscribe (no login).

Every page here is public. Each one finds its merchant from what it loads (a
slug, a card token, a signed link), then sets the tenant, `g.merchant` and the
language, so scoping and base.html work as on any other page. Pages with a
person's data are never cached (Cache-Control: no-store).
"""

from __future__ import annotations

import json
import re

import flask_babel
from flask import (
    Response,
    abort,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import force_locale, get_locale
from flask_babel import gettext as _
from sqlalchemy import select

from ...extensions import csrf, db, limiter
from ...i18n import normalize_locale
from ...links import (
    LinkExpired,
    LinkInvalid,
    LinkTarget,
    prefs_token,
    verify_confirm_token,
    verify_prefs_token,
    verify_unsubscribe_token,
)
from ...loyalty import membership
from ...loyalty.membership import CustomerNotFound, MembershipError
from ...loyalty.stamping import staff_card_url
from ...messaging.transactional import request_card_link_email, request_confirmation_email
from ...models import (
    CONSENT_GRANTED,
    CONSENT_PENDING,
    CONSENT_WITHDRAWN,
    VOUCHER_ACTIVE,
    Card,
    Customer,
    Merchant,
    Program,
    Visit,
    Voucher,
    utcnow,
)
from ...qr import qr_svg
from ...tenancy import set_tenant, unscoped
from . import bp
from .forms import JoinForm, PreferencesForm

# Card tokens this browser joined with, so a double-tapped join form (or the
# back button) leads back to the card instead of "you are already a member".
_SESSION_CARDS = "joined_cards"
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
HISTORY_LENGTH = 20


# --- helpers ----------------------------------------------------------------------


def _enter(merchant: Merchant, locale: str | None = None) -> None:
    """Act for this merchant on a public page, in the customer's language if known."""
    set_tenant(merchant.id)
    g.merchant = merchant
    if locale:
        g.locale = locale
    flask_babel.refresh()


def _private(response) -> Response:
    response = response if isinstance(response, Response) else _make(response)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _make(value) -> Response:
    return make_response(value)


def _client() -> dict:
    return {"ip": request.remote_addr, "user_agent": request.user_agent.string or None}


def _merchant_by_slug(slug: str) -> Merchant:
    merchant = db.session.scalars(select(Merchant).filter_by(slug=slug)).first()
    if merchant is None:
        abort(404)
    return merchant


def _customer_for(target: LinkTarget) -> Customer | None:
    """The customer a signed link names, entering their merchant; None if gone."""
    with unscoped():
        customer = db.session.get(Customer, target.customer_id)
    if customer is None or customer.merchant_id != target.merchant_id:
        return None
    _enter(db.session.get(Merchant, customer.merchant_id), customer.locale)
    return customer


def _message(title: str, text: str, status: int = 200, link: tuple[str, str] | None = None):
    return _private(
        _make(
            (
                render_template(
                    "customer/message.html",
                    merchant=g.get("merchant"),
                    title=title,
                    text=text,
                    link=link,
                ),
                status,
            )
        )
    )


def _link_invalid():
    return _message(
        _("This link does not work"),
        _("It may have been copied incompletely, or it belongs to a card that was deleted."),
        status=404,
    )


def _consent_wordings(merchant: Merchant) -> dict[str, str]:
    """The exact sentences shown next to each opt-in; recorded with the consent."""
    return {
        "email": _(
            "Yes, %(merchant)s may send me offers and news by email. "
            "I can unsubscribe at any time.",
            merchant=merchant.name,
        ),
        "wallet": _(
            "Yes, %(merchant)s may show me offers on my wallet card.", merchant=merchant.name
        ),
        "reminders": _(
            "Remind me about my card: rewards waiting, a missing birthday.",
        ),
    }


def _apply_error(form, error: MembershipError) -> None:
    field = getattr(form, error.field, None)
    if field is None:
        flash(str(error.message), "error")
        return
    field.errors = [*field.errors, error.message]


def _remember_card(token: str) -> None:
    tokens = [t for t in session.get(_SESSION_CARDS, []) if t != token]
    session[_SESSION_CARDS] = [*tokens, token][-5:]


# --- branding -----------------------------------------------------------------------------


@bp.get("/brand/<slug>.css")
def brand_css(slug: str):
    """The merchant's colour as CSS variables (the CSP allows no inline styles)."""
    with unscoped():
        merchant = _merchant_by_slug(slug)
    color = merchant.brand_color if _HEX_COLOR.match(merchant.brand_color or "") else "#6b3e26"
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    # Dark text on light brand colours, white on dark ones (perceived brightness).
    ink = "#1f1a17" if (red * 299 + green * 587 + blue * 114) / 1000 > 150 else "#ffffff"
    response = Response(f":root {{ --brand: {color}; --brand-ink: {ink}; }}\n", mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# --- join ------------------------------------------------------------------------------------


@bp.route("/join/<slug>", methods=["GET", "POST"])
@limiter.limit("30 per minute", methods=["POST"])
def join(slug: str):
    merchant = _merchant_by_slug(slug)
    _enter(merchant)
    wording = _consent_wordings(merchant)["email"]
    form = JoinForm()
    form.email_marketing.label.text = wording
    if request.method == "GET":
        form.locale.data = normalize_locale(str(get_locale()), merchant.locale)
    if form.validate_on_submit():
        try:
            result = membership.join(
                merchant.id,
                first_name=form.first_name.data,
                last_name=form.last_name.data or "",
                email=form.email.data or None,
                phone=form.phone.data or None,
                birthday_day=form.birthday_day.data,
                birthday_month=form.birthday_month.data,
                birthday_year=form.birthday_year.data,
                locale=form.locale.data,
                email_marketing=bool(form.email_marketing.data),
                wording=wording if form.email_marketing.data else None,
                **_client(),
            )
        except MembershipError as exc:
            _apply_error(form, exc)
        else:
            return _after_join(merchant, result, form.locale.data)
    return render_template("customer/join.html", form=form, merchant=merchant)


def _after_join(merchant: Merchant, result: membership.JoinResult, locale: str):
    known = result.card_token in session.get(_SESSION_CARDS, [])
    if result.created or known:
        _remember_card(result.card_token)
        with force_locale(locale):
            if result.created:
                flash(_("Welcome! This is your card. Show the code to staff when you visit."),
                      "success")
            if result.confirmation_needed:
                flash(_("Check your email: click the link we sent to confirm your address."),
                      "info")
        return redirect(url_for(".card", token=result.card_token), code=303)
    # Someone typed the email or phone of an existing member. The card (and its
    # links to the member's data) goes only to whoever controls the address.
    emailed = result.email_on_file and request_card_link_email(result.customer_id)
    return render_template(
        "customer/already_member.html", merchant=merchant, emailed=result.email_on_file,
        sent_now=emailed,
    )


# --- card page --------------------------------------------------------------------------------


@bp.get("/card/<token>")
def card(token: str):
    with unscoped():
        found = db.session.scalars(select(Card).filter_by(token=token)).first()
    if found is None:
        abort(404)
    merchant = db.session.get(Merchant, found.merchant_id)
    set_tenant(merchant.id)
    customer = db.session.get(Customer, found.customer_id)
    _enter(merchant, customer.locale)
    program = db.session.get(Program, found.program_id)
    now = utcnow()
    vouchers = db.session.scalars(
        select(Voucher)
        .filter_by(customer_id=customer.id, status=VOUCHER_ACTIVE)
        .where((Voucher.expires_at.is_(None)) | (Voucher.expires_at > now))
        .order_by(Voucher.expires_at.is_(None), Voucher.expires_at, Voucher.id)
    ).all()
    history = db.session.scalars(
        select(Visit)
        .filter_by(card_id=found.id)
        .order_by(Visit.created_at.desc(), Visit.id.desc())
        .limit(HISTORY_LENGTH)
    ).all()
    context = {
        "merchant": merchant,
        "customer": customer,
        "card": found,
        "program": program,
        "vouchers": vouchers,
        "history": history,
        "qr": qr_svg(staff_card_url(found)),
        "prefs_link": url_for(".prefs", token=prefs_token(customer.id, merchant.id)),
    }
    live_only = bool(request.headers.get("HX-Request"))
    template = "customer/_card_live.html" if live_only else "customer/card.html"
    return _private(_make(render_template(template, **context)))


# --- email confirmation (double opt-in) ----------------------------------------------------


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str):
    """GET shows a button; only its POST confirms, so link scanners confirm nothing."""
    try:
        target = verify_confirm_token(token)
    except LinkExpired as exc:
        return _confirm_expired(exc)
    except LinkInvalid:
        return _link_invalid()
    customer = _customer_for(target)
    if customer is None:
        return _link_invalid()
    merchant = g.merchant
    wording = _("Yes, send me offers and news from %(merchant)s by email.", merchant=merchant.name)
    if request.method == "POST":
        confirmed = membership.confirm_email(
            merchant.id, customer.id, wording=wording, **_client()
        )
        prefs = url_for(".prefs", token=prefs_token(customer.id, merchant.id))
        if confirmed:
            return _message(
                _("Thank you, your email is confirmed"),
                _("You will get offers and news from %(merchant)s. You can stop them at any time.",
                  merchant=merchant.name),
                link=(prefs, _("Your preferences")),
            )
        return _message(
            _("Nothing to confirm"),
            _("You are not signed up for email from %(merchant)s. "
              "You can sign up on your preferences page.", merchant=merchant.name),
            link=(prefs, _("Your preferences")),
        )
    already = customer.email_consent == CONSENT_GRANTED
    return _private(
        _make(
            render_template(
                "customer/confirm.html",
                merchant=merchant,
                customer=customer,
                wording=wording,
                already=already,
            )
        )
    )


def _confirm_expired(expired: LinkExpired):
    customer = _customer_for(LinkTarget(expired.customer_id, expired.merchant_id))
    if customer is None:
        return _link_invalid()
    if request.method == "POST" and customer.email_consent == CONSENT_PENDING:
        request_confirmation_email(customer.id)
        return _message(
            _("We sent you a new link"),
            _("Check your email and click the new link within 7 days."),
        )
    return _private(
        _make(
            (
                render_template(
                    "customer/link_expired.html",
                    merchant=g.merchant,
                    can_resend=customer.email_consent == CONSENT_PENDING,
                ),
                410,
            )
        )
    )


# --- preferences -----------------------------------------------------------------------------


def _prefs_customer(token: str):
    """(customer, None) for a good link, else (None, the page to answer with)."""
    try:
        target = verify_prefs_token(token)
    except LinkExpired as exc:
        customer = _customer_for(LinkTarget(exc.customer_id, exc.merchant_id))
        if customer is None:
            return None, _link_invalid()
        page = render_template(
            "customer/link_expired.html",
            merchant=g.merchant,
            can_resend=bool(customer.email),
            renew_url=url_for(".prefs_renew", token=token),
        )
        return None, _private(_make((page, 410)))
    except LinkInvalid:
        return None, _link_invalid()
    customer = _customer_for(target)
    if customer is None:
        return None, _link_invalid()
    return customer, None


@bp.route("/prefs/<token>", methods=["GET", "POST"])
def prefs(token: str):
    customer, answer = _prefs_customer(token)
    if answer is not None:
        return answer
    merchant = g.merchant
    wordings = _consent_wordings(merchant)
    form = PreferencesForm(obj=None if request.method == "POST" else customer)
    if request.method == "GET":
        form.email_marketing.data = customer.email_consent in (CONSENT_GRANTED, CONSENT_PENDING)
        form.wallet_marketing.data = customer.wallet_consent == CONSENT_GRANTED
        form.reminders.data = customer.reminders_consent == CONSENT_GRANTED
    form.email_marketing.label.text = wordings["email"]
    form.wallet_marketing.label.text = wordings["wallet"]
    form.reminders.label.text = wordings["reminders"]
    if form.validate_on_submit():
        consents = {
            "wallet": bool(form.wallet_marketing.data),
            "reminders": bool(form.reminders.data),
        }
        if customer.email:
            consents["email"] = bool(form.email_marketing.data)
        try:
            result = membership.update_preferences(
                merchant.id,
                customer.id,
                first_name=form.first_name.data,
                last_name=form.last_name.data or "",
                birthday_day=form.birthday_day.data,
                birthday_month=form.birthday_month.data,
                birthday_year=form.birthday_year.data,
                locale=form.locale.data,
                consents=consents,
                wording=wordings,
                **_client(),
            )
        except MembershipError as exc:
            _apply_error(form, exc)
        else:
            with force_locale(form.locale.data):
                flash(_("Your preferences are saved."), "success")
                if result.confirmation_needed:
                    flash(_("Check your email: click the link we sent to confirm your address."),
                          "info")
            return redirect(url_for(".prefs", token=token), code=303)
    return _private(
        _make(
            render_template(
                "customer/prefs.html",
                form=form,
                merchant=merchant,
                customer=customer,
                token=token,
                email_pending=customer.email_consent == CONSENT_PENDING,
                all_withdrawn=all(
                    membership.consent_of(customer, c) in (CONSENT_WITHDRAWN, "none")
                    for c in ("email", "wallet", "reminders")
                ),
            )
        )
    )


@bp.post("/prefs/<token>/unsubscribe")
def prefs_unsubscribe(token: str):
    customer, answer = _prefs_customer(token)
    if answer is not None:
        return answer
    membership.unsubscribe_all(
        g.merchant.id,
        customer.id,
        source="preferences",
        wording=_("Unsubscribe from all marketing"),
        **_client(),
    )
    flash(_("You are unsubscribed from all marketing. You will still see your card."), "success")
    return redirect(url_for(".prefs", token=token), code=303)


@bp.post("/prefs/<token>/export")
def prefs_export(token: str):
    customer, answer = _prefs_customer(token)
    if answer is not None:
        return answer
    data = membership.export_customer_data(g.merchant.id, customer.id)
    response = Response(
        json.dumps(data, ensure_ascii=False, indent=2),
        mimetype="application/json",
    )
    response.headers["Content-Disposition"] = (
        f'attachment; filename="my-data-{g.merchant.slug}.json"'
    )
    return _private(response)


@bp.route("/prefs/<token>/delete", methods=["GET", "POST"])
def prefs_delete(token: str):
    customer, answer = _prefs_customer(token)
    if answer is not None:
        return answer
    merchant = g.merchant
    if request.method == "POST":
        membership.delete_customer(merchant.id, customer.id, **_client())
        session[_SESSION_CARDS] = []
        return _message(
            _("Your profile is deleted"),
            _("%(merchant)s no longer has your name, contact details or card. "
              "Visits stay in their counts without your name.", merchant=merchant.name),
        )
    return _private(
        _make(
            render_template(
                "customer/delete.html", merchant=merchant, customer=customer, token=token
            )
        )
    )


@bp.post("/prefs/<token>/renew")
@limiter.limit("5 per hour")
def prefs_renew(token: str):
    """An expired preferences link asks for a fresh one, sent to the address on file."""
    try:
        target = verify_prefs_token(token)
    except LinkExpired as exc:
        target = LinkTarget(exc.customer_id, exc.merchant_id)
    except LinkInvalid:
        return _link_invalid()
    customer = _customer_for(target)
    if customer is None:
        return _link_invalid()
    if customer.email:
        request_card_link_email(customer.id)
    return _message(
        _("We sent you a new link"),
        _("Check your email for the links to your card and preferences."),
    )


# --- one-click unsubscribe (RFC 8058) --------------------------------------------------------


@bp.route("/u/<token>", methods=["GET", "POST"])
@csrf.exempt
def unsubscribe(token: str):
    """POST unsubscribes at once: no login, no cookie, no CSRF token, never a redirect.

    Mail providers POST `List-Unsubscribe=One-Click` here from the message's
    header; the page's own button posts the same. An unknown or mangled token
    answers 200 and changes nothing. GET only shows the button: link scanners
    and prefetchers must not unsubscribe anybody.
    """
    try:
        target = verify_unsubscribe_token(token)
    except LinkInvalid:
        target = None
    customer = _customer_for(target) if target is not None else None
    if request.method == "GET":
        if customer is None:
            return _link_invalid()
        return _private(
            _make(render_template("customer/unsubscribe.html", merchant=g.merchant, token=token))
        )
    if customer is None:
        return _message(
            _("This link does not work"),
            _("Nothing was changed. Use the preferences link in a recent email instead."),
        )
    client = _client()
    try:
        if target.channel == "all":
            membership.unsubscribe_all(
                target.merchant_id, target.customer_id, source="unsubscribe", **client
            )
        else:
            membership.set_consent(
                target.merchant_id,
                target.customer_id,
                target.channel,
                CONSENT_WITHDRAWN,
                source="unsubscribe",
                **client,
            )
    except CustomerNotFound:
        pass
    prefs = url_for(".prefs", token=prefs_token(target.customer_id, target.merchant_id))
    return _message(
        _("You are unsubscribed"),
        _("%(merchant)s will send you no more marketing.", merchant=g.merchant.name),
        link=(prefs, _("Your preferences")),
    )
