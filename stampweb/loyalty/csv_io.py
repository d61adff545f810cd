"""Customer CSV import and export.

Import is planned before it is run: `plan_import()` reads the file and says,
row by row, what would be imported, merged into an existing customer or
rejected and why, without writing anything. `run_import()` plans again inside
one write transaction and applies the plan; anything unexpected rolls the
whole import back, so a bad file never imports half-way.

The functions take plain values (merchant id, bytes or text, a mapping of
target field → column index), so the admin pages, the API and a CLI command
can share them. The admin keeps the uploaded file between its steps on disk
under instance/imports/, named after the merchant, not in the cookie session.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from ..database import begin_write
from ..extensions import db
from ..i18n import LANGUAGES
from ..models import (
    CONSENT_GRANTED,
    CONSENT_NONE,
    Card,
    Customer,
    Merchant,
    Program,
    Visit,
    new_code,
    utcnow,
)
from ..tenancy import tenant
from ..validation import normalize_email_address
from . import audit, membership
from .customers import search_name_for

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_ROWS = 50_000
UPLOAD_TTL_SECONDS = 24 * 3600
CUSTOMERS_IMPORT = "customers.import"
CUSTOMERS_EXPORT = "customers.export"
# Ledger rows written for stamps carried over from an old card; not a visit.
VISIT_KIND_IMPORT = "import"

ACTION_IMPORT = "import"
ACTION_MERGE = "merge"
ACTION_REJECT = "reject"

TARGET_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "birthday",
    "locale",
    "email_consent",
    "stamps",
)
TARGET_LABELS = {
    "first_name": _l("First name"),
    "last_name": _l("Last name"),
    "email": _l("Email"),
    "phone": _l("Phone"),
    "birthday": _l("Birthday (YYYY-MM-DD, DD.MM or DD/MM)"),
    "locale": _l("Language (en, ru, kk, he, fa)"),
    "email_consent": _l("Email consent (yes/no)"),
    "stamps": _l("Stamps on the card"),
}
# Header spellings recognised when guessing the mapping (compared lower-case,
# without spaces, dashes and underscores).
_HEADER_GUESSES = {
    "first_name": {"firstname", "first", "givenname", "name", "vorname", "prenom", "имя"},
    "last_name": {"lastname", "last", "surname", "familyname", "nachname", "nom", "фамилия"},
    "email": {"email", "emailaddress", "mail", "e-mail", "почта"},
    "phone": {"phone", "phonenumber", "mobile", "tel", "telephone", "cell", "телефон"},
    "birthday": {"birthday", "birthdate", "dateofbirth", "dob", "geburtstag", "деньрождения"},
    "locale": {"locale", "language", "lang", "язык"},
    "email_consent": {
        "emailconsent", "consent", "marketingconsent", "optin", "emailoptin", "newsletter",
        "marketing", "acceptsmarketing",
    },
    "stamps": {"stamps", "stampcount", "points"},
}
_YES = {"yes", "y", "true", "1", "granted", "x", "on", "да", "ja", "oui", "si"}
_NO = {"no", "n", "false", "0", "none", "withdrawn", "pending", "off", "нет", "nein", "non", ""}
# Cells a spreadsheet would run as a formula.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


class CsvFileError(ValueError):
    """The file as a whole cannot be used; `message` says why, for the person who sent it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UploadMissing(LookupError):
    """No kept upload with this token for this merchant (expired, finished or never made)."""


# --- reading the file ----------------------------------------------------------


@dataclass
class ParsedCsv:
    headers: list[str]
    # (line number in the file, cells)
    rows: list[tuple[int, list[str]]]
    encoding: str
    delimiter: str


def decode(data: bytes) -> tuple[str, str]:
    """The file's text and the encoding it was read with.

    UTF-8 (with or without the byte-order mark Excel writes), UTF-16 with a
    BOM (Excel's "Unicode text"), then Windows-1252, which old Excel versions
    write; anything else is refused rather than guessed wrong.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        encodings = ("utf-8-sig",)
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings = ("utf-16",)
    else:
        encodings = ("utf-8", "cp1252")
    for encoding in encodings:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise CsvFileError(
        _("The file's text encoding could not be read. Save it as \"CSV UTF-8\" and try again.")
    )


def parse(text: str, max_rows: int = MAX_ROWS) -> ParsedCsv:
    """Split the text into a header row and data rows (blank lines dropped)."""
    if "\x00" in text:
        raise CsvFileError(_("This does not look like a CSV file (it contains binary data)."))
    sample = text[:8192]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    headers: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    last_line = 0
    try:
        for cells in reader:
            # A row reported by the line it starts on: a quoted cell can run on
            # over several lines (and an unclosed quote to the end of the file).
            first_line, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if headers is None:
                headers = [cell.strip() for cell in cells]
                continue
            rows.append((first_line, cells))
            if len(rows) > max_rows:
                raise CsvFileError(
                    _("The file has more than %(n)s rows. Split it into smaller files.",
                      n=f"{max_rows:,}")
                )
    except csv.Error as exc:
        raise CsvFileError(
            _("Line %(line)s could not be read: %(error)s", line=reader.line_num, error=exc)
        ) from exc
    if not headers:
        raise CsvFileError(_("The file is empty."))
    if not rows:
        raise CsvFileError(_("The file has a header row but no customers."))
    return ParsedCsv(headers=headers, rows=rows, encoding="", delimiter=delimiter)


def too_large_message(max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    return _("The file is larger than %(mb)s MB. Split it into smaller files.",
             mb=max_bytes // (1024 * 1024))


def read_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> ParsedCsv:
    """Check an uploaded file's size, encoding and shape; CsvFileError says what is wrong."""
    if len(data) > max_bytes:
        raise CsvFileError(too_large_message(max_bytes))
    if not data.strip():
        raise CsvFileError(_("The file is empty."))
    text, encoding = decode(data)
    parsed = parse(text)
    parsed.encoding = encoding
    return parsed


def _header_key(header: str) -> str:
    return re.sub(r"[\s_\-]", "", header.lower())


def guess_mapping(headers: list[str]) -> dict[str, int | None]:
    """A first guess at which column holds which field, from the header names."""
    keys = [_header_key(h) for h in headers]
    mapping: dict[str, int | None] = {}
    used: set[int] = set()
    for target in TARGET_FIELDS:
        mapping[target] = None
        exact = _header_key(target)
        for index, key in enumerate(keys):
            if index not in used and (key == exact or key in _HEADER_GUESSES[target]):
                mapping[target] = index
                used.add(index)
                break
    return mapping


def check_mapping(headers: list[str], mapping: dict[str, int | None]) -> dict[str, str]:
    """Errors per target field (empty when the mapping can be used)."""
    errors: dict[str, str] = {}
    seen: dict[int, str] = {}
    for target in TARGET_FIELDS:
        index = mapping.get(target)
        if index is None:
            continue
        if not 0 <= index < len(headers):
            errors[target] = _("Choose a column of the file.")
        elif index in seen:
            errors[target] = _("This column is already used for %(other)s.",
                               other=TARGET_LABELS[seen[index]])
        else:
            seen[index] = target
    if mapping.get("email") is None and mapping.get("phone") is None:
        errors["email"] = _("Choose the column with email addresses or phone numbers (or both).")
    return errors


# --- planning ------------------------------------------------------------------


@dataclass
class RowResult:
    line: int
    action: str  # import, merge, reject
    reason: str = ""
    name: str = ""
    email: str | None = None
    phone: str | None = None
    customer_id: int | None = None
    # Parsed values for the writer (not shown).
    values: dict = field(default_factory=dict)


@dataclass
class ImportReport:
    rows: list[RowResult]
    committed: bool = False

    def count(self, action: str) -> int:
        return sum(1 for row in self.rows if row.action == action)

    @property
    def imported(self) -> int:
        return self.count(ACTION_IMPORT)

    @property
    def merged(self) -> int:
        return self.count(ACTION_MERGE)

    @property
    def rejected(self) -> int:
        return self.count(ACTION_REJECT)


def _parse_birthday(text: str) -> tuple[int | None, int | None, int | None]:
    """(day, month, year) from YYYY-MM-DD, --MM-DD, DD.MM[.YYYY] or DD/MM[/YYYY]."""
    text = text.strip()
    if match := re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text):
        year, month, day = (int(g) for g in match.groups())
        return day, month, year
    if match := re.fullmatch(r"--(\d{1,2})-(\d{1,2})", text):
        month, day = (int(g) for g in match.groups())
        return day, month, None
    if match := re.fullmatch(r"(\d{1,2})([./])(\d{1,2})(?:\2(\d{4}))?\.?", text):
        day, _sep, month, year = match.groups()
        return int(day), int(month), int(year) if year else None
    raise ValueError(text)


def _cell(cells: list[str], mapping: dict[str, int | None], target: str) -> str:
    index = mapping.get(target)
    if index is None or index >= len(cells):
        return ""
    return cells[index].strip()


def _parse_row(
    cells: list[str], mapping, header_count: int, stamps_required: int, consent_is_email_optin
) -> tuple[dict, str | None, list[str]]:
    """Parsed values, the reason to reject the row (or None), and notes."""
    notes: list[str] = []
    if len(cells) > header_count and any(c.strip() for c in cells[header_count:]):
        return {}, _("This row has %(n)s columns but the header has %(m)s; check for a stray "
                     "comma or semicolon.", n=len(cells), m=header_count), notes
    if any("\n" in cell or "\r" in cell for cell in cells):
        # No customer field holds a line break: a quote was opened and never closed.
        return {}, _("A quote (\") in this row is not closed, so the lines after it were read "
                     "as part of this row. Close the quote and upload the file again."), notes
    values: dict = {}
    for name_field in ("first_name", "last_name"):
        text = _cell(cells, mapping, name_field)
        if len(text) > 80:
            return {}, _("%(field)s is longer than 80 characters.",
                         field=TARGET_LABELS[name_field]), notes
        values[name_field] = text
    email_text = _cell(cells, mapping, "email")
    phone_text = _cell(cells, mapping, "phone")
    values["email"] = values["phone"] = None
    if email_text:
        try:
            values["email"] = normalize_email_address(email_text)
        except ValueError:
            return {}, _("“%(value)s” is not a valid email address.", value=email_text), notes
    if phone_text:
        try:
            values["phone"] = membership.normalize_phone(phone_text)
        except membership.MembershipError:
            return {}, _("“%(value)s” is not a phone number.", value=phone_text), notes
    if not values["email"] and not values["phone"]:
        return {}, _("No email address or phone number: a customer needs one of them."), notes
    birthday_text = _cell(cells, mapping, "birthday")
    values["birthday"] = (None, None, None)
    if birthday_text:
        try:
            day, month, year = _parse_birthday(birthday_text)
        except ValueError:
            return {}, _("“%(value)s” is not a birthday (use YYYY-MM-DD, DD.MM or DD/MM).",
                         value=birthday_text), notes
        try:
            membership.check_birthday(day, month, year)
        except membership.MembershipError as exc:
            return {}, _("Birthday “%(value)s”: %(problem)s", value=birthday_text,
                         problem=exc.message), notes
        values["birthday"] = (day, month, year)
    locale_text = _cell(cells, mapping, "locale")
    values["locale"] = None
    if locale_text:
        short = locale_text.replace("-", "_").split("_")[0].lower()
        if short in LANGUAGES:
            values["locale"] = short
        else:
            notes.append(_("Unknown language “%(value)s”; the shop's language is used.",
                           value=locale_text))
    consent_text = _cell(cells, mapping, "email_consent")
    values["email_consent"] = False
    if mapping.get("email_consent") is not None:
        lowered = consent_text.lower()
        if lowered in _YES:
            values["email_consent"] = True
        elif lowered not in _NO:
            return {}, _("Email consent “%(value)s” is not yes or no.", value=consent_text), notes
        if values["email_consent"] and not consent_is_email_optin:
            values["email_consent"] = False
            notes.append(_("Consent column not used: the upload did not say it means email "
                           "opt-in."))
        if values["email_consent"] and not values["email"]:
            values["email_consent"] = False
            notes.append(_("Consent ignored: no email address."))
    stamps_text = _cell(cells, mapping, "stamps")
    values["stamps"] = 0
    if stamps_text:
        if not stamps_text.isdigit():
            return {}, _("Stamps “%(value)s” is not a whole number.", value=stamps_text), notes
        stamps = int(stamps_text)
        if stamps >= stamps_required:
            return {}, _("%(n)s stamps: the card fills at %(m)s; give the reward instead.",
                         n=stamps, m=stamps_required), notes
        values["stamps"] = stamps
    return values, None, notes


@dataclass
class _Existing:
    by_email: dict[str, int]
    by_phone: dict[str, int]
    email_consent: dict[int, str]


def _existing(merchant_id: int) -> _Existing:
    with tenant(merchant_id):
        rows = db.session.execute(
            select(Customer.id, Customer.email, Customer.phone, Customer.email_consent)
        ).all()
    return _Existing(
        by_email={email: cid for cid, email, _phone, _c in rows if email},
        by_phone={phone: cid for cid, _email, phone, _c in rows if phone},
        email_consent={cid: consent for cid, _email, _phone, consent in rows},
    )


def plan_import(
    merchant_id: int,
    text: str,
    mapping: dict[str, int | None],
    *,
    consent_is_email_optin: bool,
    basis: str,
) -> ImportReport:
    """Say, row by row, what importing `text` with `mapping` would do. Writes nothing."""
    parsed = parse(text)
    errors = check_mapping(parsed.headers, mapping)
    if errors:
        raise CsvFileError(" ".join(errors.values()))
    if consent_is_email_optin and not (basis or "").strip():
        raise CsvFileError(_("Say where the consent in this file comes from."))
    program = _program(merchant_id)
    double_opt_in = db.session.get(Merchant, merchant_id).double_opt_in
    existing = _existing(merchant_id)
    first_line_with: dict[tuple[str, str], int] = {}
    results: list[RowResult] = []
    for line, cells in parsed.rows:
        values, reason, notes = _parse_row(
            cells, mapping, len(parsed.headers), program.stamps_required, consent_is_email_optin
        )
        result = RowResult(line=line, action=ACTION_REJECT, values=values)
        results.append(result)
        if reason:
            result.reason = reason
            # What the row holds, so the merchant can find it in the file.
            result.name = ", ".join(c.strip() for c in cells if c.strip())[:100]
            continue
        result.email, result.phone = values["email"], values["phone"]
        result.name = f"{values['first_name']} {values['last_name']}".strip()
        duplicate = next(
            (
                (kind, first_line_with[(kind, value)])
                for kind, value in (("email", values["email"]), ("phone", values["phone"]))
                if value and (kind, value) in first_line_with
            ),
            None,
        )
        if duplicate:
            kind, other_line = duplicate
            result.reason = (
                _("Same email address as line %(line)s.", line=other_line)
                if kind == "email"
                else _("Same phone number as line %(line)s.", line=other_line)
            )
            continue
        for kind in ("email", "phone"):
            if values[kind]:
                first_line_with[(kind, values[kind])] = line
        email_owner = existing.by_email.get(values["email"]) if values["email"] else None
        phone_owner = existing.by_phone.get(values["phone"]) if values["phone"] else None
        if email_owner and phone_owner and email_owner != phone_owner:
            result.reason = _("The email address belongs to customer #%(a)s and the phone "
                              "number to customer #%(b)s.", a=email_owner, b=phone_owner)
            continue
        owner = email_owner or phone_owner
        if owner:
            result.action = ACTION_MERGE
            result.customer_id = owner
            if email_owner is None and values["email"]:
                values["fill_email"] = True
            if phone_owner is None and values["phone"]:
                values["fill_phone"] = True
            notes.insert(0, _("Matches customer #%(id)s; only empty fields are filled.",
                              id=owner))
        else:
            result.action = ACTION_IMPORT
        if values["email_consent"]:
            current = existing.email_consent.get(owner) if owner else CONSENT_NONE
            if current != CONSENT_NONE:
                values["email_consent"] = False
                notes.append(_("Email consent kept as it was (%(state)s).", state=current))
            elif double_opt_in:
                notes.append(_("Email consent: a confirmation link will be emailed "
                               "(double opt-in is on)."))
            else:
                notes.append(_("Email consent recorded."))
        result.reason = " ".join(notes)
    return ImportReport(rows=results)


def _program(merchant_id: int) -> Program:
    with tenant(merchant_id):
        return db.session.scalars(select(Program).order_by(Program.id)).first()


# --- running -------------------------------------------------------------------

_BATCH = 500


def run_import(
    merchant_id: int,
    text: str,
    mapping: dict[str, int | None],
    *,
    consent_is_email_optin: bool,
    basis: str,
    user_id: int | None = None,
    now: datetime | None = None,
) -> ImportReport:
    """Import for real, in one transaction: every good row is saved, or none is.

    The plan is made again inside the write transaction, so a customer who
    joined since the preview is merged rather than duplicated. Consent from
    the file is recorded per customer with source "import" and the stated
    basis as its wording.
    """
    now = now or utcnow()
    after: list = []
    begin_write()
    try:
        report = plan_import(
            merchant_id, text, mapping,
            consent_is_email_optin=consent_is_email_optin, basis=basis,
        )
        with tenant(merchant_id):
            _apply(merchant_id, report, basis=basis, user_id=user_id, now=now, after=after)
            audit.record(
                merchant_id, user_id, CUSTOMERS_IMPORT, None, None,
                detail={"imported": report.imported, "merged": report.merged,
                        "rejected": report.rejected, "basis": basis},
                now=now,
            )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    report.committed = True
    # Confirmation emails (double opt-in) go out only for what was committed.
    membership._run_after_commit(after)
    return report


def _apply(merchant_id: int, report: ImportReport, *, basis: str, user_id, now, after) -> None:
    merchant = db.session.get(Merchant, merchant_id)
    program = _program(merchant_id)
    used_codes = set(db.session.scalars(select(Card.code)))
    new_rows = [r for r in report.rows if r.action == ACTION_IMPORT]
    merge_rows = [r for r in report.rows if r.action == ACTION_MERGE]
    for start in range(0, len(new_rows), _BATCH):
        _insert_batch(
            merchant_id, merchant, program, new_rows[start : start + _BATCH], used_codes,
            basis=basis, user_id=user_id, now=now, after=after,
        )
    for start in range(0, len(merge_rows), _BATCH):
        _merge_batch(
            merchant_id, merchant, program, merge_rows[start : start + _BATCH],
            basis=basis, user_id=user_id, now=now, after=after,
        )
    db.session.flush()


def _unused_code(used: set[str]) -> str:
    while True:
        code = new_code()
        if code not in used:
            used.add(code)
            return code


def _insert_batch(
    merchant_id, merchant, program, rows, used_codes, *, basis, user_id, now, after
):
    customers = []
    for row in rows:
        values = row.values
        day, month, year = values["birthday"]
        customer = Customer(
            merchant_id=merchant_id,
            first_name=values["first_name"],
            last_name=values["last_name"],
            search_name=search_name_for(values["first_name"], values["last_name"]),
            email=values["email"],
            phone=values["phone"],
            birthday_day=day,
            birthday_month=month,
            birthday_year=year,
            locale=values["locale"] or merchant.locale,
            email_consent=CONSENT_NONE,
            joined_at=now,
        )
        customers.append(customer)
    db.session.add_all(customers)
    db.session.flush()
    for row, customer in zip(rows, customers, strict=True):
        row.customer_id = customer.id
        card = Card(
            merchant_id=merchant_id, customer_id=customer.id, program_id=program.id,
            code=_unused_code(used_codes), stamps=0, created_at=now,
        )
        db.session.add(card)
        _import_extras(
            merchant_id, merchant, row, customer, card,
            basis=basis, user_id=user_id, now=now, after=after,
        )
    db.session.flush()


def _merge_batch(merchant_id, merchant, program, rows, *, basis, user_id, now, after):
    ids = [row.customer_id for row in rows]
    customers = {
        c.id: c
        for c in db.session.scalars(
            select(Customer).where(Customer.id.in_(ids)).with_for_update()
        )
    }
    cards = {
        c.customer_id: c
        for c in db.session.scalars(
            select(Card).where(Card.customer_id.in_(ids), Card.program_id == program.id)
        )
    }
    for row in rows:
        customer = customers[row.customer_id]
        values = row.values
        filled = []
        for name_field in ("first_name", "last_name"):
            if values[name_field] and not getattr(customer, name_field):
                setattr(customer, name_field, values[name_field])
                filled.append(name_field)
        if filled:
            customer.search_name = search_name_for(customer.first_name, customer.last_name)
        if values.get("fill_email") and not customer.email:
            customer.email = values["email"]
            filled.append("email")
        if values.get("fill_phone") and not customer.phone:
            customer.phone = values["phone"]
            filled.append("phone")
        day, month, year = values["birthday"]
        if month and customer.birthday_month is None:
            customer.birthday_day, customer.birthday_month = day, month
            customer.birthday_year = year
            filled.append("birthday")
        card = cards.get(customer.id)
        if card is None:
            card = Card(
                merchant_id=merchant_id, customer_id=customer.id, program_id=program.id,
                code=_unused_code(set(db.session.scalars(select(Card.code)))), stamps=0,
                created_at=now,
            )
            db.session.add(card)
            db.session.flush()
        granted, stamped = _import_extras(
            merchant_id, merchant, row, customer, card,
            basis=basis, user_id=user_id, now=now, after=after,
        )
        if granted:
            filled.append("email_consent")
        if stamped:
            filled.append("stamps")
        row.reason += " " + (
            _("Filled: %(fields)s.", fields=", ".join(filled)) if filled
            else _("Nothing new to add.")
        )
        row.reason = row.reason.strip()


def _import_extras(
    merchant_id, merchant, row, customer, card, *, basis, user_id, now, after
) -> tuple[bool, bool]:
    """Consent and carried-over stamps for one row; says whether each was applied.

    Consent is asked for only where the customer has none on record (an
    import never overrides a withdrawal, nor a consent already given or
    pending), through the membership rules: with double opt-in on it becomes
    pending and the confirmation link is sent after the commit.
    """
    values = row.values
    granted = stamped = False
    if values["email_consent"] and customer.email_consent == CONSENT_NONE:
        after.extend(
            membership._change_consent(
                customer, merchant, "email", CONSENT_GRANTED,
                source="import", wording=basis, user_id=user_id,
            )
        )
        granted = True
    if values["stamps"] and card.stamps == 0:
        db.session.flush()
        db.session.add(
            Visit(
                merchant_id=merchant_id, customer_id=customer.id, card_id=card.id,
                staff_user_id=user_id, kind=VISIT_KIND_IMPORT, stamps=values["stamps"],
                source="import", reason="CSV import", created_at=now,
            )
        )
        card.stamps = values["stamps"]
        stamped = True
    return granted, stamped


# --- keeping the upload between the admin's steps --------------------------------

_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")


def _paths(directory: Path, merchant_id: int, token: str) -> tuple[Path, Path]:
    if not _TOKEN_RE.match(token or ""):
        raise UploadMissing(token)
    stem = f"{int(merchant_id)}-{token}"
    return directory / f"{stem}.csv", directory / f"{stem}.json"


def save_upload(directory: Path, merchant_id: int, text: str, meta: dict) -> str:
    """Keep the decoded text and its settings; return the token that finds them again."""
    directory.mkdir(parents=True, exist_ok=True)
    _purge_old(directory)
    token = secrets.token_hex(16)
    text_path, meta_path = _paths(directory, merchant_id, token)
    text_path.write_text(text, encoding="utf-8")
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return token


def load_upload(directory: Path, merchant_id: int, token: str) -> tuple[str, dict]:
    text_path, meta_path = _paths(directory, merchant_id, token)
    try:
        return text_path.read_text(encoding="utf-8"), json.loads(meta_path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise UploadMissing(token) from exc


def update_upload_meta(directory: Path, merchant_id: int, token: str, meta: dict) -> None:
    _text_path, meta_path = _paths(directory, merchant_id, token)
    if not meta_path.exists():
        raise UploadMissing(token)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


def delete_upload(directory: Path, merchant_id: int, token: str) -> None:
    for path in _paths(directory, merchant_id, token):
        path.unlink(missing_ok=True)


def _purge_old(directory: Path) -> None:
    cutoff = time.time() - UPLOAD_TTL_SECONDS
    for path in directory.glob("*-*.*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


# --- export --------------------------------------------------------------------

EXPORT_COLUMNS = (
    "id", "first_name", "last_name", "email", "phone", "birthday", "locale",
    "email_consent", "wallet_consent", "reminders_consent", "email_suppressed",
    "joined_at", "visit_count", "last_visit_at", "total_spent", "stamps", "card_code",
)


def csv_safe(value) -> str:
    """A cell value a spreadsheet will show as text, never run as a formula.

    Cells starting with = + - @ (or a tab or carriage return) get a leading
    apostrophe (OWASP's advice). Plain numbers such as "+77010000001" or
    "-3" cannot carry a formula and are left as they are.
    """
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_PREFIXES) and not _PLAIN_NUMBER.match(text):
        return "'" + text
    return text


def _birthday_text(customer: Customer) -> str:
    if customer.birthday_month is None or customer.birthday_day is None:
        return ""
    if customer.birthday_year:
        return f"{customer.birthday_year:04d}-{customer.birthday_month:02d}-" \
               f"{customer.birthday_day:02d}"
    return f"{customer.birthday_day:02d}.{customer.birthday_month:02d}"


def _iso(value: datetime | None) -> str:
    return value.replace(microsecond=0).isoformat() + "Z" if value else ""


def export_rows(merchant_id: int, batch_size: int = 1000) -> Iterator[list[str]]:
    """The header, then one row per customer, read by key in batches (flat memory)."""
    yield list(EXPORT_COLUMNS)
    last_id = 0
    while True:
        with tenant(merchant_id):
            batch = db.session.execute(
                select(Customer, Card.stamps, Card.code)
                .outerjoin(Card, Card.customer_id == Customer.id)
                .where(Customer.id > last_id)
                .order_by(Customer.id)
                .limit(batch_size)
            ).all()
            if not batch:
                return
            for customer, stamps, code in batch:
                last_id = customer.id
                yield [
                    csv_safe(v)
                    for v in (
                        customer.id, customer.first_name, customer.last_name, customer.email,
                        customer.phone, _birthday_text(customer), customer.locale,
                        customer.email_consent, customer.wallet_consent,
                        customer.reminders_consent,
                        "yes" if customer.email_suppressed_at else "no",
                        _iso(customer.joined_at), customer.visit_count,
                        _iso(customer.last_visit_at), customer.total_spent,
                        stamps if stamps is not None else "", code,
                    )
                ]
                # Keep the session small however many customers there are.
                db.session.expunge(customer)


def export_csv(merchant_id: int, user_id: int | None = None) -> Iterator[str]:
    """The export as CSV text chunks (UTF-8 BOM first, so Excel reads the accents)."""
    with tenant(merchant_id):
        audit.record(merchant_id, user_id, CUSTOMERS_EXPORT, None, None)
        db.session.commit()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    yield "\ufeff"
    for count, row in enumerate(export_rows(merchant_id), start=1):
        writer.writerow(row)
        if count % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()

