"""The activity log: every stamp, reversal, redemption, import and export, by whom.

Managers read it here and download it whole as CSV (RELIABILITY #23: every
stamp and reversal with its staff member, device and time, reversals with
their reason).
"""

from __future__ import annotations

from flask import render_template, request
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from ...loyalty import audit, csv_io
from ...loyalty.customers import CUSTOMER_UPDATE
from .. import csv_download, manager_required
from . import bp

ACTION_LABELS = {
    audit.STAMP: _l("Stamp"),
    audit.STAMP_UNDO: _l("Stamp undone"),
    audit.STAMP_REVERSE: _l("Stamp reversed by a manager"),
    audit.VOUCHER_REDEEM: _l("Voucher redeemed"),
    audit.BIRTHDAY_GIFT_GIVEN: _l("Birthday gift given"),
    audit.AUDIT_EXPORT: _l("Activity log exported"),
    csv_io.CUSTOMERS_IMPORT: _l("Customers imported"),
    csv_io.CUSTOMERS_EXPORT: _l("Customers exported"),
    CUSTOMER_UPDATE: _l("Customer changed"),
}


@bp.get("/activity")
@manager_required
def activity():
    merchant_id = current_user.merchant_id
    action = request.args.get("action") or None
    before = request.args.get("before", type=int)
    entries = audit.entries(merchant_id, action=action, before_id=before)
    return render_template(
        "merchant/activity.html",
        entries=entries,
        action=action,
        before=before,
        actions=audit.actions(merchant_id),
        labels=ACTION_LABELS,
        older=entries[-1].id if len(entries) == audit.PAGE_SIZE else None,
    )


@bp.get("/activity/export.csv")
@manager_required
def activity_export():
    return csv_download(
        audit.export_csv(current_user.merchant_id, current_user.id), "activity.csv"
    )
