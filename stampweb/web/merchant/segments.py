"""Segments (the rule builder with its live audience count) and tags.

One URL per editor: GET shows the page; POST with a builder action re-renders
the builder (the whole page without JavaScript, the builder fragment for
htmx); POST with "save" validates and saves, or re-renders with each message
next to its condition and everything as typed.
"""

from __future__ import annotations

from babel.dates import get_month_names
from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select

from ...campaigns import segments as segment_service
from ...campaigns import tags as tag_service
from ...campaigns.segments import CHANNEL_LABELS, FIELDS, SegmentError
from ...extensions import db
from ...i18n import LANGUAGES
from ...models import Customer, Location, Segment, Tag
from ...models.segments import TAG_MANUAL, TAG_RULE
from ...security import is_safe_next
from ...tenancy import get_or_404
from .. import manager_required
from . import bp
from .segment_forms import (
    ConfirmForm,
    CustomerTagForm,
    ManualTagForm,
    RuleTagForm,
    SegmentForm,
    apply_action,
    draft_from_form,
    draft_from_rules,
    form_errors,
    new_draft,
    parse_action,
    rules_from_draft,
)

SAMPLE_SIZE = 5
MEMBERS_PAGE = 50


def _is_htmx() -> bool:
    return bool(request.headers.get("HX-Request"))


def _merchant_id() -> int:
    return current_user.merchant_id


def _builder_choices(exclude_tag_id: int | None = None) -> dict:
    tags = [(tag.id, tag.name) for tag, _count in tag_service.list_tags(_merchant_id())
            if tag.id != exclude_tag_id]
    locations = [(loc.id, loc.name) for loc in db.session.scalars(
        select(Location).order_by(Location.name))]
    names = get_month_names("wide", locale=get_locale())
    return {
        "fields": FIELDS,
        "tag_choices": tags,
        "location_choices": locations,
        "language_choices": list(LANGUAGES.items()),
        "channel_choices": list(CHANNEL_LABELS.items()),
        "month_choices": [(month, names[month]) for month in range(1, 13)],
    }


def _audience(rules: dict) -> dict:
    """The live count and a sample, or the first problem with the rules."""
    try:
        clean = segment_service.validate_rules(rules, _merchant_id())
    except SegmentError as exc:
        return {"audience_error": exc.message, "audience_count": None, "audience_sample": []}
    return {
        "audience_error": None,
        "audience_count": segment_service.count_audience(_merchant_id(), clean),
        "audience_sample": segment_service.sample_audience(_merchant_id(), clean, SAMPLE_SIZE),
    }


def _render_builder_page(template: str, *, draft: dict, errors: dict, status: int = 200,
                         builder_only: bool = False, exclude_tag_id: int | None = None,
                         **context):
    context.update(_builder_choices(exclude_tag_id), draft=draft, errors=errors,
                   count_url=url_for("merchant.segment_count"))
    if builder_only:
        response = render_template("merchant/_segment_builder.html", **context)
        # The audience panel listens for this and counts the changed rules again.
        return response, 200, {"HX-Trigger": "segment-changed"}
    context.update(_audience(rules_from_draft(draft)))
    return render_template(template, **context), status


# --- segments -----------------------------------------------------------------------------


@bp.get("/segments")
@manager_required
def segments():
    rows = []
    for segment in segment_service.list_segments(_merchant_id()):
        try:
            count = segment_service.count_audience(_merchant_id(), segment.rules)
        except SegmentError:
            count = None  # e.g. a condition names a deleted tag
        rows.append((segment, count))
    return render_template("merchant/segments.html", rows=rows)


@bp.route("/segments/new", methods=["GET", "POST"])
@manager_required
def segment_new():
    return _segment_editor(None)


@bp.route("/segments/<int:segment_id>", methods=["GET", "POST"])
@manager_required
def segment_edit(segment_id: int):
    return _segment_editor(get_or_404(Segment, segment_id))


def _segment_editor(segment: Segment | None):
    action_url = (url_for("merchant.segment_edit", segment_id=segment.id) if segment
                  else url_for("merchant.segment_new"))
    page = {"segment": segment, "action_url": action_url,
            "delete_form": ConfirmForm(formdata=None)}
    if request.method == "GET":
        form = SegmentForm(formdata=None, name=segment.name if segment else "")
        draft = draft_from_rules(segment.rules) if segment else new_draft()
        return _render_builder_page("merchant/segments_edit.html", draft=draft, errors={},
                                    form=form, **page)
    form = SegmentForm()
    form.validate()  # CSRFProtect has checked the token; the service checks the name
    draft = draft_from_form(request.form)
    action = parse_action(request.form)
    if action != "save":
        draft = apply_action(draft, action)
        return _render_builder_page("merchant/segments_edit.html", draft=draft, errors={},
                                    form=form, builder_only=_is_htmx(), **page)
    try:
        saved = segment_service.save_segment(
            _merchant_id(), form.name.data or "", rules_from_draft(draft),
            segment_id=segment.id if segment else None,
        )
    except SegmentError as exc:
        db.session.rollback()
        errors = form_errors(exc.errors)
        if "name" in errors:
            form.name.errors = [errors["name"]]
        return _render_builder_page("merchant/segments_edit.html", draft=draft, errors=errors,
                                    form=form, status=422, **page)
    db.session.commit()
    flash(_("Segment “%(name)s” saved.", name=saved.name), "success")
    return redirect(url_for("merchant.segment_edit", segment_id=saved.id), code=303)


@bp.post("/segments/<int:segment_id>/delete")
@manager_required
def segment_delete(segment_id: int):
    return _delete(get_or_404(Segment, segment_id), segment_service.delete_segment,
                   _("Segment “%(name)s” deleted."), "merchant.segments")


def _delete(row, delete, deleted: str, endpoint: str):
    """Confirmed delete of a segment or tag by its service, then back to the list."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    name = row.name
    delete(_merchant_id(), row.id)
    db.session.commit()
    flash(deleted % {"name": name}, "success")
    return redirect(url_for(endpoint), code=303)


@bp.post("/segments/count")
@manager_required
def segment_count():
    """The live audience panel: count and sample for the builder's current rules."""
    rules = rules_from_draft(draft_from_form(request.form))
    return render_template("merchant/_segment_audience.html", **_audience(rules))


# --- tags ---------------------------------------------------------------------------------


@bp.get("/tags")
@manager_required
def tags():
    return _tags_page(ManualTagForm(formdata=None))


def _tags_page(manual_form: ManualTagForm, status: int = 200):
    return render_template(
        "merchant/tags.html",
        rows=tag_service.list_tags(_merchant_id()),
        manual_form=manual_form,
        confirm_form=ConfirmForm(formdata=None),
    ), status


@bp.post("/tags")
@manager_required
def tag_create_manual():
    form = ManualTagForm()
    if not form.validate_on_submit():
        return _tags_page(form, 422)
    try:
        tag = tag_service.create_tag(_merchant_id(), form.name.data or "", TAG_MANUAL,
                                     description=form.description.data or "")
    except SegmentError as exc:
        db.session.rollback()
        form.name.errors = [exc.message]
        return _tags_page(form, 422)
    db.session.commit()
    flash(_("Tag “%(name)s” created.", name=tag.name), "success")
    return redirect(url_for("merchant.tags"), code=303)


@bp.post("/tags/recompute")
@manager_required
def tags_recompute():
    if not ConfirmForm().validate_on_submit():
        abort(400)
    updates = tag_service.update_tags(_merchant_id())
    flash(_("Rule tags recomputed: %(added)d added, %(removed)d removed.",
            added=sum(u.added for u in updates), removed=sum(u.removed for u in updates)),
          "success")
    return redirect(url_for("merchant.tags"), code=303)


@bp.route("/tags/new", methods=["GET", "POST"])
@manager_required
def tag_new_rule():
    return _rule_tag_editor(None)


@bp.route("/tags/<int:tag_id>", methods=["GET", "POST"])
@manager_required
def tag_edit(tag_id: int):
    tag = get_or_404(Tag, tag_id)
    if tag.kind == TAG_RULE:
        return _rule_tag_editor(tag)
    if request.method == "POST":
        abort(405)
    return render_template("merchant/tags_manual.html", tag=tag, **_members(tag),
                           confirm_form=ConfirmForm(formdata=None))


def _members(tag: Tag) -> dict:
    after = request.args.get("after", type=int) or 0
    members = tag_service.tag_members(_merchant_id(), tag.id, after=after,
                                      limit=MEMBERS_PAGE + 1)
    next_after = members[MEMBERS_PAGE - 1].id if len(members) > MEMBERS_PAGE else None
    return {"members": members[:MEMBERS_PAGE], "next_after": next_after}


def _rule_tag_editor(tag: Tag | None):
    action_url = (url_for("merchant.tag_edit", tag_id=tag.id) if tag
                  else url_for("merchant.tag_new_rule"))
    page = {"tag": tag, "action_url": action_url, "confirm_form": ConfirmForm(formdata=None),
            "exclude_tag_id": tag.id if tag else None}
    if tag is not None:
        page.update(_members(tag))
    if request.method == "GET":
        form = RuleTagForm(formdata=None, name=tag.name if tag else "",
                           description=tag.description if tag else "")
        draft = draft_from_rules(tag_service.rule_of(tag)) if tag else new_draft()
        return _render_builder_page("merchant/tags_edit.html", draft=draft, errors={},
                                    form=form, **page)
    form = RuleTagForm()
    form.validate()  # CSRFProtect has checked the token; the service checks the rest
    draft = draft_from_form(request.form)
    action = parse_action(request.form)
    if action != "save":
        draft = apply_action(draft, action)
        return _render_builder_page("merchant/tags_edit.html", draft=draft, errors={},
                                    form=form, builder_only=_is_htmx(), **page)
    try:
        if tag is None:
            saved = tag_service.create_tag(_merchant_id(), form.name.data or "", TAG_RULE,
                                           rule=rules_from_draft(draft),
                                           description=form.description.data or "")
        else:
            saved = tag_service.update_tag_rule(_merchant_id(), tag.id, form.name.data or "",
                                                rules_from_draft(draft),
                                                description=form.description.data or "")
    except SegmentError as exc:
        db.session.rollback()
        errors = form_errors(exc.errors)
        if "name" in errors:
            form.name.errors = [errors["name"]]
        return _render_builder_page("merchant/tags_edit.html", draft=draft, errors=errors,
                                    form=form, status=422, **page)
    db.session.commit()
    update = tag_service.recompute_tag(_merchant_id(), saved.id)
    flash(_("Tag “%(name)s” saved: %(added)d added, %(removed)d removed.",
            name=update.name, added=update.added, removed=update.removed), "success")
    return redirect(url_for("merchant.tag_edit", tag_id=saved.id), code=303)


@bp.post("/tags/<int:tag_id>/delete")
@manager_required
def tag_delete(tag_id: int):
    return _delete(get_or_404(Tag, tag_id), tag_service.delete_tag,
                   _("Tag “%(name)s” deleted."), "merchant.tags")


# --- manual tags on one customer ------------------------------------------------------------


@bp.app_template_global("manual_tag_choices")
def manual_tag_choices() -> list[Tag]:
    """Manual tags of the logged-in merchant, for the customer page's tag picker."""
    if not current_user.is_authenticated:
        return []
    return tag_service.manual_tags(current_user.merchant_id)


@bp.app_template_global("customer_tags")
def customer_tags(customer_id: int) -> list[Tag]:
    """One customer's tags, for pages that include _tags_customer.html without `tags`."""
    if not current_user.is_authenticated:
        return []
    return tag_service.tags_of_customer(current_user.merchant_id, customer_id)


def _customer_tags_done(customer: Customer, form: CustomerTagForm, message: str,
                        category: str, typed: str = ""):
    next_url = form.next.data if is_safe_next(form.next.data) else None
    if _is_htmx():
        return render_template(
            "merchant/_tags_customer.html", customer=customer,
            tags=tag_service.tags_of_customer(_merchant_id(), customer.id),
            tags_notice=(category, message), tags_typed=typed,
            tags_next=next_url or url_for("merchant.tags"),
        )
    flash(message, category)
    return redirect(next_url or url_for("merchant.tags"), code=303)


@bp.post("/customers/<int:customer_id>/tags")
@manager_required
def customer_tag_add(customer_id: int):
    """Put a manual tag (existing, or new by name) on a customer."""
    customer = get_or_404(Customer, customer_id)
    form = CustomerTagForm()
    form.validate()
    try:
        tag = tag_service.add_manual_tag(_merchant_id(), customer.id, name=form.name.data)
    except SegmentError as exc:
        db.session.rollback()
        return _customer_tags_done(customer, form, exc.message, "error", form.name.data or "")
    db.session.commit()
    return _customer_tags_done(customer, form, _("Tagged “%(name)s”.", name=tag.name),
                               "success")


@bp.post("/customers/<int:customer_id>/tags/<int:tag_id>/remove")
@manager_required
def customer_tag_remove(customer_id: int, tag_id: int):
    customer = get_or_404(Customer, customer_id)
    tag = get_or_404(Tag, tag_id)
    form = CustomerTagForm()
    form.validate()
    tag_service.remove_manual_tag(_merchant_id(), customer.id, tag.id)
    db.session.commit()
    return _customer_tags_done(customer, form, _("Tag “%(name)s” removed.", name=tag.name),
                               "success")
