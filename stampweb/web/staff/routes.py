"""The staff page: phone-first stamping, redeeming and undoing.

Scanning a card's QR code with the phone's camera opens /staff/card/<code>;
search by phone, email, name or code is the fallback. Every POST redirects
back to the card (PRG) for a browser without JavaScript and answers with the
card fragment for htmx, so one URL serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from flask import (
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import get_locale, ngettext
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import bindparam, select

from ...extensions import db
from ...loyalty import badges, stamping
from ...loyalty import vouchers as voucher_service
from ...loyalty.stamping import StampRefused
from ...loyalty.vouchers import VoucherRefused
from ...models import Location, Voucher, utcnow
from ...models.loyalty import display_name
from ...security import is_safe_next
from ...tenancy import get_or_404
from .. import staff_required
from . import bp
from .forms import ConfirmForm, LocationForm, StampForm, StampFormView, StampPost, UndoForm

LOCATION_KEY = "staff_location"


def _is_htmx() -> bool:
    return bool(request.headers.get("HX-Request"))


def _device() -> str | None:
    return request.user_agent.string[:300] or None


def _locations() -> list[Location]:
    return list(
        db.session.scalars(
            select(Location).where(Location.active.is_(True)).order_by(Location.id)
        )
    )


@dataclass(frozen=True)
class CustomerView:
    display_name: str


@dataclass(frozen=True)
class ProgramView:
    stamps_required: int
    reward_text: str
    birthday_gift_text: str


@dataclass(frozen=True)
class CardView:
    """A card as the staff page shows it, in plain values.

    A service's commit expires the session's ORM objects; these values stay
    readable after it, and a stamp's result updates the balance, so answering
    a stamp needs no second load of the card. The template reads `card`,
    `customer` and `program` with the attribute names of the models.
    """

    id: int
    merchant_id: int
    customer_id: int
    code: str
    stamps: int
    reward_state: str
    reward_state_expires_at: datetime | None
    customer: CustomerView
    program: ProgramView

    @classmethod
    def of(cls, row) -> CardView:
        """From a row of stamping.staff_card_by_code."""
        return cls(
            row.id, row.merchant_id, row.customer_id, row.code, row.stamps,
            row.reward_state, row.reward_state_expires_at,
            CustomerView(display_name(row.first_name, row.last_name, row.email, row.phone,
                                      row.customer_id)),
            ProgramView(row.stamps_required, row.reward_text, row.birthday_gift_text),
        )


def _card_or_404(code: str) -> CardView:
    """The current merchant's card with this code; another merchant's code is a 404.

    The same query finds where the staff member stamps (current_location()).
    """
    row = stamping.staff_card_by_code(current_user.merchant_id, code, _chosen_location_id())
    if row is None:
        abort(404)
    if "staff_location" not in g:
        g.staff_location = (StaffLocation(row.location_id, row.location_name)
                            if row.location_id is not None else None)
    return CardView.of(row)


@dataclass(frozen=True)
class StaffLocation:
    id: int
    name: str


def current_location() -> StaffLocation | None:
    """Where this staff member works now (chosen on the page, kept in the session).

    Defaults to the merchant's first active location. Looked up once per
    request and kept as plain values, so a service's commit does not expire it.
    """
    if "staff_location" in g:
        return g.staff_location
    merchant_id = current_user.merchant_id
    connection = db.session.connection()
    location = None
    chosen = _chosen_location_id()
    if chosen is not None:
        location = connection.execute(
            _CHOSEN_LOCATION, {"merchant_id": merchant_id, "location_id": chosen}
        ).first()
    if location is None:
        location = connection.execute(_FIRST_LOCATION, {"merchant_id": merchant_id}).first()
    g.staff_location = StaffLocation(location.id, location.name) if location else None
    return g.staff_location


def _chosen_location_id() -> int | None:
    """The location chosen on the staff page for this merchant, if any (not yet checked)."""
    chosen = session.get(LOCATION_KEY)
    if isinstance(chosen, list) and len(chosen) == 2 and chosen[0] == current_user.merchant_id:
        return chosen[1]
    return None


# Asked on every tap of the staff page: Core statements built once, naming
# the merchant themselves (the tenant listener sees only ORM queries).
_location_table = Location.__table__
_CHOSEN_LOCATION = select(_location_table.c.id, _location_table.c.name).where(
    _location_table.c.id == bindparam("location_id"),
    _location_table.c.merchant_id == bindparam("merchant_id"),
    _location_table.c.active.is_(True),
)
_FIRST_LOCATION = (
    select(_location_table.c.id, _location_table.c.name)
    .where(_location_table.c.merchant_id == bindparam("merchant_id"),
           _location_table.c.active.is_(True))
    .order_by(_location_table.c.id)
    .limit(1)
)


def _location_id() -> int | None:
    location = current_location()
    return location.id if location is not None else None


def _location_form(next_url: str) -> LocationForm:
    form = LocationForm(formdata=None)
    form.location_id.choices = [(loc.id, loc.name) for loc in _locations()]
    form.location_id.data = _location_id()
    form.next.data = next_url
    return form


@dataclass(frozen=True)
class JustStamped:
    """The stamp this request recorded: it is the card's undoable one, no query needed."""

    id: int
    stamps: int


_UNKNOWN = object()


def _card_context(
    card: CardView, *, stamp_form: StampForm | None = None, notices=(), undoable=_UNKNOWN,
    vouchers=None,
) -> dict:
    now = utcnow()
    if vouchers is None:
        vouchers = voucher_service.usable_for_customer(card.merchant_id, card.customer_id, now)
    if undoable is _UNKNOWN:
        undoable = stamping.undoable_visit(card.merchant_id, card.id, now)
    return {
        "card": card,
        "customer": card.customer,
        "program": card.program,
        "vouchers": vouchers,
        "badges": badges.for_card(card, now, vouchers),
        "stamp_form": StampFormView.of(stamp_form) if stamp_form else StampFormView.fresh(),
        "undoable": undoable,
        "notices": list(notices),
        "location": current_location(),
    }


def _render_card(card: CardView, status: int = 200, **kwargs):
    context = _card_context(card, **kwargs)
    if _is_htmx():
        # htmx only swaps 2xx answers; the notices in the fragment carry the news.
        return render_template("staff/_card.html", **context), 200
    return render_template(
        "staff/card.html", location_form=_location_form(request.path), **context
    ), status


def _done(found: CardView, message: str, category: str, *, now: CardView | None = None,
          **context):
    """After a POST: the card fragment for htmx, else flash and redirect (PRG).

    `now` is the card as the service left it, when the view knows; otherwise
    the card is loaded again (one query), as the service committed it.
    """
    if _is_htmx():
        if now is None:
            now = CardView.of(stamping.staff_card_by_code(found.merchant_id, found.code))
        return _render_card(now, notices=[(category, message)], **context)
    flash(message, category)
    return redirect(url_for("staff.card", code=found.code), code=303)


@bp.get("/staff")
@staff_required
def index():
    return _search_page(request.args.get("q", ""))


@bp.get("/staff/search")
@staff_required
def search():
    query = request.args.get("q", "")
    if _is_htmx():
        cards = stamping.find_cards(current_user.merchant_id, query)
        return render_template("staff/_results.html", cards=cards, query=query)
    return _search_page(query)


def _search_page(query: str):
    cards = stamping.find_cards(current_user.merchant_id, query) if query else []
    if query and len(cards) == 1 and cards[0].code == query.strip().upper().replace(" ", ""):
        # The full card code typed and submitted: go straight to the card.
        return redirect(url_for("staff.card", code=cards[0].code))
    return render_template(
        "staff/index.html",
        query=query,
        cards=cards,
        location=current_location(),
        location_form=_location_form(url_for("staff.index")),
    )


@bp.get("/staff/card/<code>")
@staff_required
def card(code: str):
    found = _card_or_404(code)
    if found.code != code:
        return redirect(url_for("staff.card", code=found.code))
    return _render_card(found)


@bp.post("/staff/card/<code>/stamp")
@staff_required
def stamp(code: str):
    found = _card_or_404(code)
    post = StampPost.read_plain(request.form)
    if post is None:
        form = StampForm()
        if not form.validate_on_submit():
            return _render_card(found, status=422, stamp_form=form)
        post = StampPost.of(form)
    location_id = _location_id()
    stamps_given = post.stamps
    # The page's language comes from the logged-in user. Settle it before the
    # stamp's commit expires the user, or translating the answer reloads the
    # user and the merchant (two more queries).
    get_locale()
    # The vouchers the answer lists, read with the card: a stamp changes them
    # only when it fills the card, and then they are read again. This keeps the
    # answer from opening a transaction after the stamp's commit.
    vouchers = voucher_service.usable_for_customer(found.merchant_id, found.customer_id)
    try:
        result = stamping.record_stamps(
            current_user.merchant_id,
            found.id,
            stamps=stamps_given,
            amount=post.amount,
            staff_user_id=current_user.id,
            location_id=location_id,
            request_key=post.request_key,
            device=_device(),
            ip=request.remote_addr,
        )
    except StampRefused as exc:
        return _done(found, exc.message, "error")
    if len(result.voucher_ids) == 1:
        message = _("Stamped! The card is full: reward issued (%(reward)s).",
                    reward=found.program.reward_text)
    elif result.voucher_ids:
        # Several cards' worth in one tap. The count is in every form, because
        # some languages use their "one" form for 21, 31… (or for all counts).
        message = ngettext(
            "Stamped! %(num)d reward issued (%(reward)s).",
            "Stamped! %(num)d rewards issued (%(reward)s).",
            len(result.voucher_ids),
            reward=found.program.reward_text,
        )
    else:
        message = _(
            "Stamped: %(stamps)d of %(required)d.",
            stamps=result.stamps,
            required=result.stamps_required,
        )
    # The balance under the card's lock is the card as it is now; nothing
    # else shown on the card changes when it is stamped.
    stamped = replace(found, stamps=result.stamps)
    if result.voucher_ids:
        vouchers = None  # the rewards just issued are listed too
    if result.replayed:
        return _done(found, message, "success", now=stamped, vouchers=vouchers)
    return _done(found, message, "success", now=stamped, vouchers=vouchers,
                 undoable=JustStamped(result.visit_id, stamps_given))


@bp.post("/staff/card/<code>/undo")
@staff_required
def undo(code: str):
    found = _card_or_404(code)
    form = UndoForm()
    if not form.validate_on_submit() or not (form.visit_id.data or "").isdigit():
        return _done(found, _("That stamp cannot be undone; reload the card."), "error")
    location_id = _location_id()
    try:
        stamping.undo_stamp(
            current_user.merchant_id,
            int(form.visit_id.data),
            staff_user_id=current_user.id,
            card_id=found.id,
            location_id=location_id,
            reason=form.reason.data or None,
            device=_device(),
            ip=request.remote_addr,
        )
    except StampRefused as exc:
        return _done(found, exc.message, "error")
    return _done(found, _("The last stamp was undone."), "success")


def _confirm_then(found, *, title, subject, detail, action, confirm_label, act, done):
    """A voucher action behind a confirmation: GET asks (the no-JavaScript path,
    one more tap), POST does `act(location_id)` and shows `done(result)`."""
    form = ConfirmForm()
    if request.method == "GET":
        return render_template("staff/confirm.html", card=found, form=form, title=title,
                               subject=subject, detail=detail, action=action,
                               confirm_label=confirm_label)
    if not form.validate_on_submit():
        abort(400)
    try:
        result = act(_location_id())
    except VoucherRefused as exc:
        return _done(found, exc.message, "error")
    return _done(found, done(result), "success")


@bp.route("/staff/card/<code>/vouchers/<int:voucher_id>/redeem", methods=["GET", "POST"])
@staff_required
def redeem(code: str, voucher_id: int):
    found = _card_or_404(code)
    voucher = get_or_404(Voucher, voucher_id, customer_id=found.customer_id)
    return _confirm_then(
        found,
        title=_("Redeem this voucher?"),
        subject=voucher.title,
        detail=_("Code %(code)s", code=voucher.code),
        action=url_for("staff.redeem", code=found.code, voucher_id=voucher.id),
        confirm_label=_("Yes, redeem"),
        act=lambda location_id: voucher_service.redeem(
            current_user.merchant_id, voucher.id, staff_user_id=current_user.id,
            location_id=location_id, ip=request.remote_addr),
        done=lambda result: _("Redeemed: %(title)s.", title=result.title),
    )


@bp.route("/staff/card/<code>/birthday", methods=["GET", "POST"])
@staff_required
def birthday_gift(code: str):
    found = _card_or_404(code)
    return _confirm_then(
        found,
        title=_("Give the birthday gift?"),
        subject=found.program.birthday_gift_text,
        detail=found.customer.display_name,
        action=url_for("staff.birthday_gift", code=found.code),
        confirm_label=_("Yes, give it"),
        act=lambda location_id: voucher_service.give_birthday_gift(
            current_user.merchant_id, found.id, staff_user_id=current_user.id,
            location_id=location_id, ip=request.remote_addr),
        done=lambda result: _("Birthday gift given: %(title)s.", title=result.title),
    )


@bp.post("/staff/location")
@staff_required
def choose_location():
    form = LocationForm()
    form.location_id.choices = [(loc.id, loc.name) for loc in _locations()]
    target = form.next.data if is_safe_next(form.next.data) else url_for("staff.index")
    if form.validate_on_submit():
        location = get_or_404(Location, form.location_id.data)
        session[LOCATION_KEY] = [current_user.merchant_id, location.id]
        flash(_("You are stamping at %(name)s.", name=location.name), "success")
    else:
        flash(_("Choose one of the locations."), "error")
    return redirect(target, code=303)
