"""The merchant's customers: list and search, one customer's page, CSV import and export."""

from __future__ import annotations

from pathlib import Path

from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user

from ...campaigns import tags as tag_service
from ...loyalty import csv_io, stamping
from ...loyalty import customers as customer_service
from ...loyalty.stamping import StampRefused
from ...models import CHANNELS, CONSENT_GRANTED, CONSENT_PENDING, Customer
from ...tenancy import get_or_404
from .. import csv_download, manager_required, too_large_page
from . import bp
from .forms import (
    NOT_IN_FILE,
    CustomerForm,
    ImportMappingForm,
    ImportUploadForm,
    ReverseStampForm,
)

VISITED_CHOICES = (7, 30, 90, 365)


def _filters_from_args(args) -> customer_service.CustomerFilters:
    visited = args.get("visited", type=int)
    return customer_service.CustomerFilters(
        q=(args.get("q") or "").strip()[:100],
        email_consent=args.get("email_consent") == "1",
        visited_within_days=visited if visited in VISITED_CHOICES else None,
        active_voucher=args.get("voucher") == "1",
        birthday_this_month=args.get("birthday") == "1",
        tags=tuple(dict.fromkeys(args.getlist("tag", type=int)))[:5],
    )


@bp.get("/customers")
@manager_required
def customers():
    filters = _filters_from_args(request.args)
    after = request.args.get("after", type=int)
    page = customer_service.search_customers(current_user.merchant_id, filters, after=after)
    # The link to the next page keeps the search and filters.
    next_args = {k: v for k, v in request.args.items() if k != "after" and v}
    context = dict(
        page=page, filters=filters, args=request.args, next_args=next_args, after=after,
        visited_choices=VISITED_CHOICES,
        tag_choices=[tag for tag, _count in tag_service.list_tags(current_user.merchant_id)],
    )
    if request.headers.get("HX-Request"):
        return render_template("merchant/_customer_rows.html", **context)
    return render_template("merchant/customers.html", **context)


def _form_for(customer: Customer, formdata=None) -> CustomerForm:
    form = CustomerForm(formdata=formdata, obj=customer)
    if formdata is None:
        for channel in CHANNELS:
            getattr(form, f"{channel}_consent").data = (
                getattr(customer, f"{channel}_consent") in (CONSENT_GRANTED, CONSENT_PENDING)
            )
    return form


def _render_customer(customer: Customer, form: CustomerForm, status: int = 200,
                     reverse_form: ReverseStampForm | None = None):
    merchant_id = current_user.merchant_id
    summary = customer_service.summary(merchant_id, customer.id)
    latest = stamping.latest_stamp(merchant_id, summary.card.id) if summary.card else None
    if reverse_form is None and latest is not None:
        reverse_form = ReverseStampForm(formdata=None, visit_id=latest.id)
    return (
        render_template(
            "merchant/customer.html",
            customer=customer,
            summary=summary,
            timeline=customer_service.timeline(merchant_id, customer.id),
            form=form,
            latest_stamp=latest,
            reverse_form=reverse_form,
        ),
        status,
    )


@bp.get("/customers/<int:customer_id>")
@manager_required
def customer(customer_id: int):
    found = get_or_404(Customer, customer_id)
    return _render_customer(found, _form_for(found))


_FIELD_FOR_ERROR = {"birthday": "birthday_day"}


@bp.post("/customers/<int:customer_id>")
@manager_required
def customer_update(customer_id: int):
    found = get_or_404(Customer, customer_id)
    form = _form_for(found, request.form)
    if form.validate():
        changes = customer_service.CustomerChanges(
            first_name=form.first_name.data or "",
            last_name=form.last_name.data or "",
            email=form.email.data,
            phone=form.phone.data,
            birthday_day=form.birthday_day.data,
            birthday_month=form.birthday_month.data,
            birthday_year=form.birthday_year.data,
            locale=form.locale.data,
            consents={c: bool(getattr(form, f"{c}_consent").data) for c in CHANNELS},
        )
        try:
            result = customer_service.update_customer(
                current_user.merchant_id,
                found.id,
                changes,
                user_id=current_user.id,
                ip=request.remote_addr,
                user_agent=(request.user_agent.string or "")[:300],
            )
        except customer_service.CustomerError as exc:
            for name, message in exc.errors.items():
                field = getattr(form, _FIELD_FOR_ERROR.get(name, name))
                field.errors = [*field.errors, str(message)]
        else:
            flash(_("The customer is saved."), "success")
            if result.consents.get("email") == CONSENT_PENDING:
                flash(_("A confirmation link was emailed: marketing email starts once the "
                        "customer confirms (double opt-in)."), "info")
            return redirect(url_for("merchant.customer", customer_id=found.id))
    found = get_or_404(Customer, customer_id)
    return _render_customer(found, form)


@bp.post("/customers/<int:customer_id>/reverse-stamp")
@manager_required
def customer_reverse_stamp(customer_id: int):
    """A manager reverses the card's latest stamp, with a reason (any age)."""
    found = get_or_404(Customer, customer_id)
    form = ReverseStampForm()
    if not form.validate() or not (form.visit_id.data or "").isdigit():
        return _render_customer(found, _form_for(found), 422, reverse_form=form)
    card = customer_service.summary(current_user.merchant_id, found.id).card
    if card is None:
        abort(404)
    try:
        stamping.reverse_latest_stamp(
            current_user.merchant_id,
            int(form.visit_id.data),
            manager_user_id=current_user.id,
            reason=form.reason.data,
            card_id=card.id,  # a stamp on this customer's card, nobody else's
            device=request.user_agent.string[:300] or None,
            ip=request.remote_addr,
        )
    except StampRefused as exc:
        form.reason.errors = [exc.message]
        return _render_customer(found, _form_for(found), 422, reverse_form=form)
    flash(_("The stamp was reversed."), "success")
    return redirect(url_for("merchant.customer", customer_id=found.id), code=303)


# --- export ----------------------------------------------------------------------


@bp.get("/customers/export.csv")
@manager_required
def customers_export():
    return csv_download(
        csv_io.export_csv(current_user.merchant_id, current_user.id), "customers.csv"
    )


# --- import: upload → map columns → review → confirm ---------------------------------


def _imports_dir() -> Path:
    return Path(current_app.instance_path) / "imports"


def _load(token: str | None) -> tuple[str, dict]:
    try:
        return csv_io.load_upload(_imports_dir(), current_user.merchant_id, token or "")
    except csv_io.UploadMissing:
        abort(404)


def _import_page(form: ImportUploadForm, status: int = 200):
    return render_template("merchant/import.html", form=form, max_rows=csv_io.MAX_ROWS,
                           max_mb=csv_io.MAX_UPLOAD_BYTES // (1024 * 1024)), status


@bp.errorhandler(413)
def _request_too_large(_error):
    """An upload over MAX_CONTENT_LENGTH: the import page again with the reason beside
    the file field (the body was not read, so nothing typed can be kept)."""
    if request.endpoint != "merchant.customers_import" or not (
        current_user.is_authenticated and current_user.has_role("manager")
    ):
        return too_large_page()
    form = ImportUploadForm(formdata=None)
    form.file.errors = [csv_io.too_large_message()]
    return _import_page(form, 413)


@bp.route("/customers/import", methods=["GET", "POST"])
@manager_required
def customers_import():
    form = ImportUploadForm()
    if form.validate_on_submit():
        # Read one byte past the limit: enough to know the file is too big.
        data = form.file.data.stream.read(csv_io.MAX_UPLOAD_BYTES + 1)
        try:
            parsed = csv_io.read_upload(data)
        except csv_io.CsvFileError as exc:
            form.file.errors = [*form.file.errors, exc.message]
        else:
            text, _encoding = csv_io.decode(data)
            token = csv_io.save_upload(
                _imports_dir(),
                current_user.merchant_id,
                text,
                {
                    "filename": (form.file.data.filename or "")[:200],
                    "encoding": parsed.encoding,
                    "rows": len(parsed.rows),
                    "basis": form.basis.data.strip(),
                    "consent_is_email_optin": bool(form.consent_is_email_optin.data),
                    "mapping": csv_io.guess_mapping(parsed.headers),
                    "user_id": current_user.id,
                },
            )
            return redirect(url_for("merchant.customers_import_map", token=token))
    return _import_page(form)


def _mapping_from_form(form: ImportMappingForm) -> dict[str, int | None]:
    return {
        target: (None if getattr(form, target).data == NOT_IN_FILE
                 else int(getattr(form, target).data))
        for target in csv_io.TARGET_FIELDS
    }


@bp.route("/customers/import/map", methods=["GET", "POST"])
@manager_required
def customers_import_map():
    token = request.values.get("token")
    text, meta = _load(token)
    parsed = csv_io.parse(text)
    form = ImportMappingForm(parsed.headers)
    if request.method == "GET":
        for target, index in meta["mapping"].items():
            getattr(form, target).data = NOT_IN_FILE if index is None else str(index)
    elif form.validate_on_submit():
        mapping = _mapping_from_form(form)
        errors = csv_io.check_mapping(parsed.headers, mapping)
        for target, message in errors.items():
            getattr(form, target).errors = [*getattr(form, target).errors, message]
        if not errors:
            meta["mapping"] = mapping
            csv_io.update_upload_meta(_imports_dir(), current_user.merchant_id, token, meta)
            return redirect(url_for("merchant.customers_import_review", token=token))
    return render_template(
        "merchant/import_map.html",
        form=form,
        token=token,
        meta=meta,
        headers=parsed.headers,
        preview=[cells for _line, cells in parsed.rows[:5]],
    )


def _report_page(report: csv_io.ImportReport, meta: dict, token: str | None, done: bool):
    return render_template(
        "merchant/import_report.html",
        report=report,
        meta=meta,
        token=token,
        done=done,
        shown=_rows_to_show(report),
    )


REPORT_ROWS_SHOWN = 1000


def _rows_to_show(report: csv_io.ImportReport) -> list[csv_io.RowResult]:
    """Every rejected row, then the others in file order, up to a page that stays usable."""
    rejected = [r for r in report.rows if r.action == csv_io.ACTION_REJECT]
    others = [r for r in report.rows if r.action != csv_io.ACTION_REJECT]
    room = max(REPORT_ROWS_SHOWN - len(rejected), 0)
    return sorted(rejected + others[:room], key=lambda r: r.line)


@bp.get("/customers/import/review")
@manager_required
def customers_import_review():
    token = request.args.get("token")
    text, meta = _load(token)
    try:
        report = csv_io.plan_import(
            current_user.merchant_id, text, meta["mapping"],
            consent_is_email_optin=meta["consent_is_email_optin"], basis=meta["basis"],
        )
    except csv_io.CsvFileError as exc:
        flash(exc.message, "error")
        return redirect(url_for("merchant.customers_import_map", token=token))
    return _report_page(report, meta, token, done=False)


@bp.post("/customers/import/confirm")
@manager_required
def customers_import_confirm():
    token = request.form.get("token")
    text, meta = _load(token)
    try:
        report = csv_io.run_import(
            current_user.merchant_id, text, meta["mapping"],
            consent_is_email_optin=meta["consent_is_email_optin"], basis=meta["basis"],
            user_id=current_user.id,
        )
    except csv_io.CsvFileError as exc:
        flash(exc.message, "error")
        return redirect(url_for("merchant.customers_import_map", token=token))
    except Exception:
        current_app.logger.exception("customer import failed; nothing was imported")
        flash(_("The import failed and nothing was imported. Please try again; if it fails "
                "again, the file is kept for a day."), "error")
        return redirect(url_for("merchant.customers_import_review", token=token))
    csv_io.delete_upload(_imports_dir(), current_user.merchant_id, token)
    flash(
        _("Import finished: %(imported)s imported, %(merged)s merged, %(rejected)s rejected.",
          imported=report.imported, merged=report.merged, rejected=report.rejected),
        "success",
    )
    return _report_page(report, meta, None, done=True)


@bp.post("/customers/import/cancel")
@manager_required
def customers_import_cancel():
    token = request.form.get("token") or ""
    try:
        csv_io.delete_upload(_imports_dir(), current_user.merchant_id, token)
    except csv_io.UploadMissing:
        pass
    flash(_("The import is cancelled; the file is deleted."), "info")
    return redirect(url_for("merchant.customers"))
