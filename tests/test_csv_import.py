"""Customer CSV import: mapping, a row-by-row report, merges, encodings, size limits,
and all-or-nothing."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from stampweb.extensions import db
from stampweb.loyalty import csv_io
from stampweb.models import Card, ConsentEvent, Customer, Merchant, Visit
from stampweb.tenancy import tenant

from .factories import csrf_token_from, gen_customer, gen_merchant, gen_user, login

BASIS = "Paper sign-up forms 2024 with a newsletter tick box"

HAPPY = (
    "First Name,Last Name,Email,Phone,Birthday,Language,Newsletter\n"
    "Anna,Berg,anna@example.com,+49 151 1111111,1990-05-17,de,yes\n"
    "Boris,Ivanov,,+7 701 222 33 44,17.05,ru,no\n"
    "Chen,Li,chen@example.com,,03/11,en,1\n"
)


@pytest.fixture
def shop(app):
    with app.app_context():
        merchant = gen_merchant("cafe", double_opt_in=False)
        gen_user(merchant, "manager", "manager@cafe.test")
        return merchant.id


def _plan(merchant_id, text, mapping=None, consent=True, basis=BASIS):
    parsed = csv_io.parse(text)
    return csv_io.plan_import(
        merchant_id, text, mapping or csv_io.guess_mapping(parsed.headers),
        consent_is_email_optin=consent, basis=basis,
    )


def _run(merchant_id, text, mapping=None, consent=True, basis=BASIS, user_id=None):
    parsed = csv_io.parse(text)
    return csv_io.run_import(
        merchant_id, text, mapping or csv_io.guess_mapping(parsed.headers),
        consent_is_email_optin=consent, basis=basis, user_id=user_id,
    )


def _customers(merchant_id) -> dict[str, Customer]:
    with tenant(merchant_id):
        return {
            (c.email or c.phone): c
            for c in db.session.scalars(select(Customer).order_by(Customer.id))
        }


def _count(model, merchant_id) -> int:
    with tenant(merchant_id):
        return db.session.scalar(select(func.count(model.id)))


# --- the service ---------------------------------------------------------------------


def test_headers_are_matched_to_fields_by_name():
    mapping = csv_io.guess_mapping(
        ["First Name", "Last Name", "E-mail", "Mobile", "DOB", "Language", "Newsletter", "x"]
    )
    assert mapping == {
        "first_name": 0, "last_name": 1, "email": 2, "phone": 3, "birthday": 4,
        "locale": 5, "email_consent": 6, "stamps": None,
    }


def test_dry_run_reports_each_row_and_writes_nothing(app, shop):
    with app.app_context():
        report = _plan(shop, HAPPY)
        assert [(r.line, r.action) for r in report.rows] == [
            (2, "import"), (3, "import"), (4, "import")
        ]
        assert _count(Customer, shop) == 0


def test_happy_path_imports_customers_with_cards_and_consent(app, shop):
    """Every good row becomes a customer with a card; consent is recorded with source
    "import" and the stated basis as its wording."""
    with app.app_context():
        report = _run(shop, HAPPY)
        assert report.committed and (report.imported, report.merged, report.rejected) == (3, 0, 0)
        people = _customers(shop)
        anna = people["anna@example.com"]
        assert (anna.first_name, anna.last_name, anna.phone) == ("Anna", "Berg", "+491511111111")
        assert (anna.birthday_day, anna.birthday_month, anna.birthday_year) == (17, 5, 1990)
        assert anna.email_consent == "granted"
        boris = people["+77012223344"]
        assert (boris.birthday_day, boris.birthday_month, boris.birthday_year) == (17, 5, None)
        assert boris.locale == "ru" and boris.email_consent == "none"
        chen = people["chen@example.com"]
        assert (chen.birthday_day, chen.birthday_month) == (3, 11)
        # "de" is not a shipped language: the shop's language is used, with a note.
        assert anna.locale == "en"
        assert "Unknown language" in report.rows[0].reason
        assert _count(Card, shop) == 3
        with tenant(shop):
            events = db.session.scalars(select(ConsentEvent)).all()
        assert sorted((e.channel, e.state, e.source, e.wording) for e in events) == [
            ("email", "granted", "import", BASIS), ("email", "granted", "import", BASIS)
        ]


def test_consent_column_is_ignored_unless_the_upload_says_it_means_email_opt_in(app, shop):
    with app.app_context():
        report = _run(shop, HAPPY, consent=False)
        assert report.imported == 3
        assert _customers(shop)["anna@example.com"].email_consent == "none"
        assert _count(ConsentEvent, shop) == 0
        assert "Consent column not used" in report.rows[0].reason


def test_imported_consent_waits_for_confirmation_when_double_opt_in_is_on(app, shop):
    with app.app_context():
        db.session.get(Merchant, shop).double_opt_in = True
        db.session.commit()
        report = _run(shop, HAPPY)
        assert "confirmation link" in report.rows[0].reason
        assert _customers(shop)["anna@example.com"].email_consent == "pending"


def test_existing_customer_is_merged_filling_only_empty_fields(app, shop):
    """Same email (or phone) as a customer on file: nothing they have is overwritten."""
    with app.app_context():
        merchant = db.session.get(Merchant, shop)
        existing = gen_customer(merchant, first_name="Annie", last_name="",
                                email="anna@example.com", phone=None)
        by_phone = gen_customer(merchant, first_name="", last_name="", email=None,
                                phone="+77012223344", email_consent="withdrawn")
        report = _run(shop, HAPPY.replace("Boris,Ivanov,,", "Boris,Ivanov,boris@example.com,")
                      .replace("17.05,ru,no", "17.05,ru,yes"))
        assert [r.action for r in report.rows] == ["merge", "merge", "import"]
        assert report.rows[0].customer_id == existing.id
        assert f"#{existing.id}" in report.rows[0].reason
        people = _customers(shop)
        anna = people["anna@example.com"]
        assert anna.id == existing.id
        assert anna.first_name == "Annie"          # kept
        assert anna.last_name == "Berg"            # was empty: filled
        assert anna.phone == "+491511111111"       # was empty: filled
        assert anna.birthday_month == 5
        boris = people["boris@example.com"]
        assert boris.id == by_phone.id and boris.first_name == "Boris"
        # A withdrawal is never overridden by an import.
        assert boris.email_consent == "withdrawn"
        assert "kept as it was" in report.rows[1].reason
        assert _count(Customer, shop) == 3


def test_importing_the_same_file_twice_changes_nothing_the_second_time(app, shop):
    with app.app_context():
        _run(shop, HAPPY)
        again = _run(shop, HAPPY)
        assert (again.imported, again.merged) == (0, 3)
        assert _count(Customer, shop) == 3
        assert _count(ConsentEvent, shop) == 2


BROKEN = (
    "first_name;last_name;email;phone;birthday;email_consent;stamps\n"
    "Ok;Row;ok@example.com;;;yes;3\n"
    "Bad;Email;not-an-email;;;;\n"
    "No;Contact;;;;;\n"
    "Bad;Phone;;call me;;;\n"
    "Bad;Birthday;bday@example.com;;31.02;;\n"
    "Worse;Birthday;worse@example.com;;someday;;\n"
    "Bad;Consent;consent@example.com;;;maybe;\n"
    "Dup;Row;OK@example.com;;;;\n"
    "Too;Many;many@example.com;;;;12\n"
    "Extra;Cols;extra@example.com;;;;;surprise\n"
    "Conflict;Row;taken@example.com;+4915199999999;;;\n"
)


def test_rejected_rows_say_why(app, shop):
    with app.app_context():
        merchant = db.session.get(Merchant, shop)
        gen_customer(merchant, email="taken@example.com", phone=None)
        gen_customer(merchant, email="someone@example.com", phone="+4915199999999")
        report = _run(shop, BROKEN)
    reasons = {r.line: (r.action, r.reason) for r in report.rows}
    assert reasons[2][0] == "import"
    expected = {
        3: "not a valid email address",
        4: "No email address or phone number",
        5: "not a phone number",
        6: "Birthday “31.02”",
        7: "not a birthday",
        8: "not yes or no",
        9: "Same email address as line 2",
        10: "the card fills at 10",
        11: "columns but the header has",
        12: "belongs to customer",
    }
    for line, text in expected.items():
        action, reason = reasons[line]
        assert action == "reject", (line, reason)
        assert text in reason, (line, reason)
    assert (report.imported, report.rejected) == (1, 10)


def test_imported_stamps_are_a_ledger_row_not_a_visit(app, shop):
    with app.app_context():
        _run(shop, BROKEN.splitlines()[0] + "\n" + BROKEN.splitlines()[1] + "\n")
        customer = _customers(shop)["ok@example.com"]
        with tenant(shop):
            card = db.session.scalars(select(Card).filter_by(customer_id=customer.id)).one()
            visits = db.session.scalars(select(Visit).filter_by(card_id=card.id)).all()
        assert card.stamps == 3
        assert [(v.kind, v.stamps, v.source) for v in visits] == [("import", 3, "import")]
        assert customer.visit_count == 0


def test_utf8_file_with_byte_order_mark(app, shop):
    """Excel's "CSV UTF-8" starts with a BOM; the first header is still recognised."""
    data = ("\ufeff" + "Email,First name\nzoë@example.com,Zoë\n").encode("utf-8")
    parsed = csv_io.read_upload(data)
    assert parsed.headers == ["Email", "First name"]
    assert parsed.encoding == "utf-8-sig"
    assert csv_io.guess_mapping(parsed.headers)["email"] == 0


def test_windows_1252_file_is_read(app, shop):
    data = "Email;First name;Last name\nmueller@example.com;Jürgen;Müller\n".encode("cp1252")
    parsed = csv_io.read_upload(data)
    assert parsed.encoding == "cp1252"
    assert parsed.rows[0][1][2] == "Müller"
    with app.app_context():
        text, _encoding = csv_io.decode(data)
        _run(shop, text)
        assert _customers(shop)["mueller@example.com"].last_name == "Müller"


def test_undecodable_file_is_refused_with_a_clear_message():
    with pytest.raises(csv_io.CsvFileError) as caught:
        csv_io.read_upload(b"email\n\x81\x8d\x8f\x90@example.com\n")
    assert "encoding" in caught.value.message


def test_oversize_file_is_refused():
    with pytest.raises(csv_io.CsvFileError) as caught:
        csv_io.read_upload(b"email\n" + b"a@example.com\n" * 10, max_bytes=50)
    assert "larger than" in caught.value.message


def test_too_many_rows_is_refused():
    with pytest.raises(csv_io.CsvFileError) as caught:
        csv_io.parse("email\n" + "a@example.com\n" * 4, max_rows=3)
    assert "more than 3 rows" in caught.value.message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file_with_byte_order_mark_is_read(app, shop, encoding):
    """Excel's "Unicode text" is UTF-16 with a BOM (tab-separated)."""
    text = "Email\tFirst name\nzoë@example.com\tZoë\nüli@example.com\tÜli\n"
    data = text.encode(encoding)
    if encoding != "utf-16":
        data = ("\ufeff" + text).encode(encoding)
    parsed = csv_io.read_upload(data)
    assert parsed.encoding == "utf-16"
    assert parsed.headers == ["Email", "First name"]
    assert [cells[1] for _line, cells in parsed.rows] == ["Zoë", "Üli"]


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4,  # an .xlsx sent as .csv
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64,
        "email\nzoë@example.com\n".encode("utf-16-le"),  # UTF-16 without its BOM
    ],
    ids=["zip", "png", "utf16-no-bom"],
)
def test_binary_junk_is_refused_with_a_clear_message(data):
    with pytest.raises(csv_io.CsvFileError) as caught:
        csv_io.read_upload(data)
    assert "binary data" in caught.value.message or "encoding" in caught.value.message


RAGGED = (
    "Email,First name,Phone,Birthday\n"
    "ok@example.com,Ok,,\n"
    "short@example.com\n"
    "extra@example.com,Ex,,,,,surplus\n"
    "not-an-email,Bad,,\n"
    "q@example.com,\"unclosed,,\n"
    "swallowed@example.com,Swallowed,,\n"
)


def test_broken_rows_are_reported_line_by_line_and_only_good_ones_imported(app, shop):
    """Short rows are padded, long ones and bad values refused with the line they start
    on; an unclosed quote is named instead of silently eating the lines after it."""
    with app.app_context():
        report = _run(shop, RAGGED)
        reasons = {r.line: (r.action, r.reason) for r in report.rows}
        assert reasons[2] == ("import", "")
        assert reasons[3] == ("import", "")
        assert "7 columns but the header has 4" in reasons[4][1]
        assert "not a valid email address" in reasons[5][1]
        assert reasons[6][0] == "reject" and "quote" in reasons[6][1]
        assert (report.imported, report.rejected) == (2, 3)
        assert sorted(_customers(shop)) == ["ok@example.com", "short@example.com"]


def test_a_large_file_is_planned_row_by_row(app, shop):
    """Ten thousand rows, every hundredth one broken: each broken one is named."""
    lines = ["Email,First name"]
    for n in range(10_000):
        lines.append(f"bad-{n}" if n % 100 == 0 else f"c{n}@example.com,Name {n}")
    with app.app_context():
        report = _plan(shop, "\n".join(lines) + "\n")
    assert (report.imported, report.rejected) == (9_900, 100)
    rejected = [r.line for r in report.rows if r.action == "reject"]
    assert rejected == [n + 2 for n in range(0, 10_000, 100)]
    with app.app_context():
        assert _count(Customer, shop) == 0


def test_a_failure_in_the_middle_imports_nothing(app, shop, monkeypatch):
    """Something unexpected on the third row: the whole import is rolled back."""
    real = csv_io._import_extras
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(csv_io, "_import_extras", flaky)
    with app.app_context():
        with pytest.raises(RuntimeError):
            _run(shop, HAPPY)
        assert _count(Customer, shop) == 0
        assert _count(Card, shop) == 0
        assert _count(ConsentEvent, shop) == 0


# --- the admin pages -------------------------------------------------------------------


def _upload(client, data: bytes, filename="customers.csv", consent=True, basis=BASIS):
    page = client.get("/admin/customers/import")
    form = {"csrf_token": csrf_token_from(page.text), "basis": basis,
            "file": FileStorage(io.BytesIO(data), filename, content_type="text/csv")}
    if consent:
        form["consent_is_email_optin"] = "y"
    # Encoded here, in memory: the test client spools big bodies to a temporary
    # file that it never closes.
    boundary, body = encode_multipart(form)
    return client.post("/admin/customers/import", data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def test_import_pages_upload_map_review_and_confirm(app, client, shop):
    login(client, "manager@cafe.test")
    response = _upload(client, HAPPY.encode())
    assert response.status_code == 302
    map_url = response.headers["Location"]
    token = re.search(r"token=([0-9a-f]{32})", map_url).group(1)
    kept = list((Path(app.instance_path) / "imports").glob(f"*{token}*"))
    assert len(kept) == 2  # the text and its settings, on disk, not in the cookie

    page = client.get(map_url)
    assert page.status_code == 200
    assert "anna@example.com" in page.text  # the preview of the first rows
    assert re.search(r'<select[^>]*id="email".*?<option selected value="2">', page.text,
                     re.DOTALL)  # Email guessed from the header

    response = client.post(
        "/admin/customers/import/map",
        data={"csrf_token": csrf_token_from(page.text), "token": token,
              "first_name": "0", "last_name": "1", "email": "2", "phone": "3",
              "birthday": "4", "locale": "", "email_consent": "6", "stamps": ""},
    )
    assert response.status_code == 302
    review = client.get(response.headers["Location"])
    assert review.status_code == 200
    assert "Confirm the import" in review.text
    with app.app_context():
        assert _count(Customer, shop) == 0

    done = client.post("/admin/customers/import/confirm",
                       data={"csrf_token": csrf_token_from(review.text), "token": token})
    assert done.status_code == 200
    assert "Import report" in done.text and "3 imported" in done.text
    with app.app_context():
        assert _count(Customer, shop) == 3
    assert not list((Path(app.instance_path) / "imports").glob(f"*{token}*"))


def test_mapping_needs_email_or_phone_and_one_column_per_field(app, client, shop):
    login(client, "manager@cafe.test")
    token = re.search(r"token=([0-9a-f]{32})",
                      _upload(client, HAPPY.encode()).headers["Location"]).group(1)
    page = client.get(f"/admin/customers/import/map?token={token}")
    response = client.post(
        "/admin/customers/import/map",
        data={"csrf_token": csrf_token_from(page.text), "token": token,
              "first_name": "0", "last_name": "0", "email": "", "phone": "",
              "birthday": "", "locale": "", "email_consent": "", "stamps": ""},
    )
    assert response.status_code == 200
    assert re.search(r'<p class="error" id="email-error">', response.text)
    assert re.search(r'<p class="error" id="last_name-error">', response.text)


def test_oversize_upload_shows_message_next_to_the_file_field(app, client, shop):
    login(client, "manager@cafe.test")
    big = b"email\n" + b"x" * (csv_io.MAX_UPLOAD_BYTES + 10)
    response = _upload(client, big, basis="Typed basis")
    assert response.status_code == 200
    assert re.search(r'<p class="error" id="file-error">[^<]*larger than 5 MB', response.text)
    assert "Typed basis" in response.text


def test_upload_over_the_request_limit_shows_the_import_page_with_a_message(app, client, shop):
    """Past MAX_CONTENT_LENGTH the body is not even read: 413, the import form again
    with the reason beside the file field, nothing kept."""
    login(client, "manager@cafe.test")
    big = b"email\n" + b"x" * app.config["MAX_CONTENT_LENGTH"]
    response = _upload(client, big)
    assert response.status_code == 413
    assert re.search(r'<p class="error" id="file-error">[^<]*larger than 5 MB', response.text)
    assert '<form method="post" enctype="multipart/form-data"' in response.text
    assert not (Path(app.instance_path) / "imports").exists() or not list(
        (Path(app.instance_path) / "imports").iterdir())


def test_broken_rows_uploaded_through_the_page_are_listed_in_the_review(app, client, shop):
    """The same broken rows through the pages: the review lists each with its reason."""
    login(client, "manager@cafe.test")
    response = _upload(client, RAGGED.encode("utf-16"))
    review = client.get(response.headers["Location"].replace("/map", "/review"))
    assert review.status_code == 200
    assert "7 columns but the header has 4" in review.text
    assert "is not closed" in review.text


def test_upload_needs_a_consent_basis(app, client, shop):
    login(client, "manager@cafe.test")
    response = _upload(client, HAPPY.encode(), basis="")
    assert response.status_code == 200
    assert re.search(r'<p class="error" id="basis-error">', response.text)


def test_confirm_failure_imports_nothing_and_says_so(app, client, shop, monkeypatch):
    login(client, "manager@cafe.test")
    token = re.search(r"token=([0-9a-f]{32})",
                      _upload(client, HAPPY.encode()).headers["Location"]).group(1)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(csv_io, "_merge_batch", broken)
    monkeypatch.setattr(csv_io, "_insert_batch", broken)
    review = client.get(f"/admin/customers/import/review?token={token}")
    response = client.post("/admin/customers/import/confirm",
                           data={"csrf_token": csrf_token_from(review.text), "token": token},
                           follow_redirects=True)
    assert "nothing was imported" in response.text
    with app.app_context():
        assert _count(Customer, shop) == 0


def test_another_merchant_cannot_use_an_upload(app, client, shop):
    login(client, "manager@cafe.test")
    token = re.search(r"token=([0-9a-f]{32})",
                      _upload(client, HAPPY.encode()).headers["Location"]).group(1)
    client.post("/logout", data={"csrf_token": csrf_token_from(client.get("/admin/").text)})
    with app.app_context():
        gen_merchant("other")
    login(client, "owner@other.test")
    assert client.get(f"/admin/customers/import/map?token={token}").status_code == 404
    assert client.get(f"/admin/customers/import/review?token={token}").status_code == 404
    page = client.get("/admin/customers/import")
    response = client.post("/admin/customers/import/confirm",
                           data={"csrf_token": csrf_token_from(page.text), "token": token})
    assert response.status_code == 404
    with app.app_context():
        assert _count(Customer, shop) == 0


@pytest.mark.integration
def test_import_is_all_or_nothing_on_postgresql(pg_app, monkeypatch):
    """On PostgreSQL too: a good file imports in one transaction, a failing one leaves nothing."""
    with pg_app.app_context():
        merchant_id = gen_merchant("pgcafe", double_opt_in=False).id
        report = _run(merchant_id, HAPPY)
        assert report.imported == 3 and _count(Customer, merchant_id) == 3

        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(csv_io, "_merge_batch", broken)
        more = HAPPY + "Dora,Explorer,dora@example.com,,,,\n"
        with pytest.raises(RuntimeError):
            _run(merchant_id, more)
        assert _count(Customer, merchant_id) == 3
