"""Every browser form and htmx POST, fuzzed with Hypothesis.

For each POST route of the app (the JSON API has its own schemathesis test and
the PassKit web service follows Apple's fixed contract, tested in
test_wallet_passkit.py), the user with the right role posts generated values
for the fields that route's form really has: unicode, control characters,
huge strings, numbers out of range, dates that do not exist, duplicated and
missing fields. The promise checked for every example:

- never a 5xx;
- a refusal (a 4xx, or the form again with a message, or a redirect to a page
  with an error message) says something, and changes no table's row count:
  nothing is half-saved;
- whatever was saved fits its column and has no NUL byte: SQLite would keep
  both, PostgreSQL (production) would fail the request.

The fields of each form are found by crawling the pages as the owner, a staff
member and a customer, so a new form is fuzzed without teaching this test.
"""

from __future__ import annotations

import io
import itertools
import re
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import String, select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from stampweb import create_app
from stampweb.extensions import db
from stampweb.links import confirm_token, prefs_token, unsubscribe_token
from stampweb.models import CONSENT_GRANTED, Card, Customer
from stampweb.tenancy import tenant

from .conftest import unit_config
from .factories import csrf_token_from, gen_customer, gen_merchant, gen_user, login
from .test_tenancy import _ids_of, _seed_everything

MAX_EXAMPLES = 15
NOT_FUZZED_PREFIXES = ("/api/", "/wallet/")
_shops = itertools.count(1)
CSV_TEXT = "Email,First name,Phone\nanna@example.com,Anna,+4915111111\nbad,Bob,\n"


def _config(tmp: Path) -> dict:
    # The login throttle would answer most examples of the login form with 429;
    # it has tests of its own.
    return unit_config(tmp, RATELIMIT_ENABLED=False)


def _post_endpoints() -> list[str]:
    """The POST routes, read from an app built at collection time for that only."""
    with tempfile.TemporaryDirectory(prefix="fuzz-routes-") as tmp:
        application = create_app(_config(Path(tmp)))
        return sorted(
            rule.endpoint for rule in application.url_map.iter_rules()
            if "POST" in rule.methods and not rule.rule.startswith(NOT_FUZZED_PREFIXES)
        )


ENDPOINTS = _post_endpoints()


# --- a shop with one of everything -------------------------------------------------


def _seed(application) -> dict:
    """A new merchant with every kind of row a route can name; return the URL arguments
    and who logs in. One app serves every route; each route gets its own merchant."""
    slug = f"fuzz{next(_shops)}"
    with application.app_context():
        merchant = gen_merchant(slug)
        staff = gen_user(merchant, "staff", f"staff@{slug}.test")
        _seed_everything(merchant)
        gen_customer(merchant, first_name="Second")
        ids = _ids_of(merchant.id)
        with tenant(merchant.id):
            customer = db.session.scalars(select(Customer).order_by(Customer.id)).first()
            # Consent given, so the preferences page offers its unsubscribe form.
            customer.email_consent = CONSENT_GRANTED
            db.session.commit()
            ids["user_id"] = staff.id
            ids["card_code"] = db.session.scalar(
                select(Card.code).filter_by(customer_id=customer.id))
        ids.update(
            slug=slug, owner=f"owner@{slug}.test", staff=f"staff@{slug}.test", kind="birthday",
            prefs=prefs_token(customer.id, merchant.id),
            confirm=confirm_token(customer.id, merchant.id),
            unsubscribe=unsubscribe_token(customer.id, merchant.id),
        )
        return ids


# Which signed token a public route's <token> is.
TOKEN_OF_PREFIX = {"prefs": "prefs", "confirm": "confirm", "u": "unsubscribe"}


def _url(rule, ids: dict) -> str:
    def value(match):
        name = match.group(1)
        if name == "token":
            return ids[TOKEN_OF_PREFIX[rule.rule.split("/")[1]]]
        return str(ids["card_code" if name == "code" else name])

    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", value, rule.rule)


def _who(path: str, ids: dict) -> str | None:
    if path.startswith("/staff"):
        return ids["staff"]
    if path.startswith(("/admin", "/team", "/account", "/logout")):
        return ids["owner"]
    return None


def _upload_csv(client) -> str:
    """Start a customer import as the owner; return its token."""
    page = client.get("/admin/customers/import")
    response = client.post("/admin/customers/import", data={
        "csrf_token": csrf_token_from(page.text), "basis": "Paper forms",
        "file": FileStorage(io.BytesIO(CSV_TEXT.encode()), "c.csv", content_type="text/csv"),
    })
    assert response.status_code == 302, response.text
    return re.search(r"token=([0-9a-f]+)", response.headers["Location"]).group(1)


# --- finding each form's fields ----------------------------------------------------


# Inputs whose value comes from the page rather than from typing.
CHOICE_INPUTS = {"hidden", "checkbox", "radio", "submit", "button"}


class _Forms(HTMLParser):
    """Collect every POST target of a page and the fields sent with it."""

    def __init__(self, page_url: str):
        super().__init__()
        self.page_url = page_url
        self.forms: dict[str, dict] = {}  # form id or index -> {"action", "fields"}
        self.targets: list[tuple[str, str | None]] = []  # (url, form key) for hx-post etc.
        self.current: str | None = None
        self.select: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            key = a.get("id") or f"form-{len(self.forms)}"
            self.forms[key] = {"action": a.get("action") or self.page_url,
                               "post": (a.get("method") or "get").lower() == "post",
                               "fields": {}}
            self.current = key
        if a.get("hx-post"):
            include = (a.get("hx-include") or "").lstrip("#") or None
            self.targets.append((a["hx-post"], include or self.current))
        if a.get("formaction") and self.current:
            self.targets.append((a["formaction"], self.current))
        fields = self.forms[self.current]["fields"] if self.current else None
        if fields is None:
            return
        name = a.get("name")
        if tag in ("input", "textarea", "button") and name:
            values = fields.setdefault(name, {"values": [], "file": False, "choice": False})
            if tag == "button" or a.get("type") in CHOICE_INPUTS:
                values["choice"] = True
            if a.get("type") == "file":
                values["file"] = True
            elif a.get("value") is not None:
                values["values"].append(a["value"])
        elif tag == "select" and name:
            fields.setdefault(name, {"values": [], "file": False, "choice": True})
            self.select = name
        elif tag == "option" and self.select and a.get("value") is not None:
            fields[self.select]["values"].append(a["value"])

    def handle_endtag(self, tag):
        if tag == "form":
            self.current = None
        elif tag == "select":
            self.select = None

    def posts(self) -> list[tuple[str, dict]]:
        found = [(f["action"], f["fields"]) for f in self.forms.values() if f["post"]]
        for url, key in self.targets:
            found.append((url, self.forms.get(key, {}).get("fields", {})))
        return found


def _crawl(application, client, start: list[str], limit: int = 150) -> dict[str, dict]:
    """Follow same-site links from `start`; return endpoint -> fields of its forms."""
    adapter = application.url_map.bind("localhost")
    seen, queue, found = set(), list(start), {}
    while queue and len(seen) < limit:
        url = queue.pop(0)
        path = urlsplit(url).path
        if url in seen or path.startswith(("/static", "/api", "/wallet", "/logout")):
            continue
        seen.add(url)
        response = client.get(url)
        if response.status_code != 200 or response.mimetype != "text/html":
            continue
        parser = _Forms(url)
        parser.feed(response.text)
        for action, fields in parser.posts():
            try:
                endpoint, _args = adapter.match(urlsplit(action).path, method="POST")
            except Exception:  # noqa: BLE001 - a link to another site or a GET-only route
                continue
            merged = found.setdefault(endpoint, {})
            for name, spec in fields.items():
                into = merged.setdefault(name, {"values": [], "file": False, "choice": False})
                into["values"] = sorted(set(into["values"]) | set(spec["values"]))
                into["file"] = into["file"] or spec["file"]
                into["choice"] = into["choice"] or spec["choice"]
        for href in re.findall(r'href="(/[^"#]*)"', response.text):
            href = href.replace("&amp;", "&")
            if not re.search(r"\.(csv|pkpass|png|svg|json)(\?|$)|/export|/logout", href):
                queue.append(href)
    return found


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    application = create_app(_config(tmp_path_factory.mktemp("fuzz")))
    with application.app_context():
        db.create_all()
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def form_fields(fuzz_app):
    """endpoint -> {field name: {"values": [...seen on the page], "file": bool}}."""
    application = fuzz_app
    ids = _seed(application)
    found: dict[str, dict] = {}
    owner = application.test_client()
    login(owner, ids["owner"])
    token = _upload_csv(owner)
    staff = application.test_client()
    login(staff, ids["staff"])
    pages = sorted(
        rule.rule for rule in application.url_map.iter_rules()
        if "GET" in rule.methods and not rule.arguments and rule.rule.startswith("/admin")
    )
    for client, start in (
        (owner, [*pages, f"/admin/customers/import/map?token={token}",
                 f"/admin/customers/import/review?token={token}", "/team", "/account/password",
                 f"/admin/customers/{ids['customer_id']}"]),
        (staff, [f"/staff/card/{ids['card_code']}", "/staff"]),
        (application.test_client(), ["/login", f"/join/{ids['slug']}", f"/prefs/{ids['prefs']}",
                                     f"/confirm/{ids['confirm']}", f"/u/{ids['unsubscribe']}"]),
    ):
        for endpoint, fields in _crawl(application, client, start).items():
            found.setdefault(endpoint, {}).update(fields)
    return found


# Routes whose POST carries no fields of its own beyond the CSRF token (a button).
BUTTON_ONLY = {
    "auth.logout", "auth.toggle_active", "merchant.campaign_cancel", "merchant.campaign_pause",
    "merchant.campaign_resume", "merchant.campaign_send", "merchant.location_active",
    "merchant.segment_delete", "merchant.tag_delete", "merchant.tags_recompute",
    "merchant.api_key_revoke", "merchant.api_webhook_delete", "merchant.api_delivery_retry",
    "merchant.clear_wallet", "merchant.customer_tag_remove", "customer.prefs_delete",
    "customer.prefs_export", "customer.prefs_renew", "customer.unsubscribe",
    "staff.birthday_gift", "staff.redeem", "staff.undo", "merchant.customers_import_cancel",
    "merchant.customers_import_confirm", "merchant.automation_switch",
    "merchant.campaign_test", "merchant.campaign_schedule", "customer.confirm",
}
# The seeded tag is a manual one, whose page has no rule form: a rule tag's
# editor is the same form as a new rule tag's.
SAME_FIELDS_AS = {"merchant.tag_edit": "merchant.tag_new_rule"}


def test_every_form_route_has_its_fields_found(form_fields):
    """The crawl reaches every form; a new form route must show up on some page."""
    missing = set(ENDPOINTS) - set(form_fields) - BUTTON_ONLY - set(SAME_FIELDS_AS)
    assert not missing, f"no page posts to {sorted(missing)}: link it or list it"


# --- the values ---------------------------------------------------------------------

NASTY = [
    "", " ", "0", "-1", "1", "2147483648", "-9223372036854775809", "1e309", "NaN", "inf",
    "-0.0", "3,50", "0x1f", "\x00", "a\x00b", "\r\n", "\t", "\u202e\u200b", "😀" * 60,
    "<script>x</script>", "' OR '1'='1", "../../etc/passwd", "{{7*7}}", "%00", "null",
    "2026-02-30", "0000-00-00", "9999-12-31T23:59", "31.02", "Europe/Nowhere",
    "owner@fuzz.test", "a@b", "@", "+", "x" * 2000, "y" * 70_000,
]
_text = st.text(max_size=200)
_numbers = st.one_of(st.integers(min_value=-(10**20), max_value=10**20).map(str),
                     st.floats().map(str))


def _value(known: list[str]):
    plain = st.one_of(st.sampled_from(NASTY), _text, _numbers)
    if known:
        plain = st.one_of(st.sampled_from(known), st.sampled_from(known), plain)
    return st.one_of(plain, st.lists(plain, min_size=2, max_size=3))


_file = st.one_of(
    st.binary(max_size=3000),
    st.sampled_from([
        CSV_TEXT.encode("utf-16"), CSV_TEXT.encode("latin-1") + b"\xe9\xff\xfe",
        b"\x00\x01\x02PK\x03\x04" * 200, b"email\n" + b'"unclosed,quote\n' * 50, b"",
        ("Email,Name\n" + "a@example.com,\u00e9\n" * 3).encode("cp1252", "replace"),
    ]),
).map(lambda data: FileStorage(io.BytesIO(data), "upload.csv", content_type="text/csv"))


def _form_data(fields: dict, fresh: dict):
    optional = {}
    for name, spec in fields.items():
        if name == "csrf_token":
            continue
        if spec["file"]:
            optional[name] = _file
        else:
            known = [fresh[name]] if name in fresh else spec["values"]
            optional[name] = _value(known)
    optional["unexpected_field"] = _value([])
    return st.fixed_dictionaries({}, optional=optional)


def _every_text_field(fields: dict, fresh: dict, text: str) -> dict:
    data = {}
    for name, spec in fields.items():
        if name == "csrf_token" or spec["file"]:
            continue
        known = [fresh[name]] if name in fresh else spec["values"]
        # Select boxes, check boxes and hidden inputs keep a value the page offered.
        data[name] = known[0] if known and spec["choice"] else text
    return data


# --- what must hold -----------------------------------------------------------------


def _row_counts_sql() -> str:
    # One statement for all tables: this runs twice per example.
    counts = ", ".join(
        f'(SELECT count(*) FROM "{table.name}") AS "{table.name}"'
        for table in db.metadata.sorted_tables
    )
    return f"SELECT {counts}"


def _bad_strings_sql() -> str:
    """Rows holding strings PostgreSQL would refuse: longer than the column, or with NUL
    (SQLite stores both without a word)."""
    parts = []
    for table in db.metadata.sorted_tables:
        checks = []
        for column in table.columns:
            if isinstance(column.type, String):
                name = f'"{column.name}"'
                if column.type.length:
                    checks.append(f"length({name}) > {column.type.length}")
                checks.append(f"instr(CAST({name} AS BLOB), X'00') > 0")
        if checks:
            parts.append(
                f"SELECT '{table.name}' AS t FROM (SELECT 1 FROM \"{table.name}\" "
                f"WHERE {' OR '.join(checks)} LIMIT 1)"
            )
    return " UNION ALL ".join(parts)


ERROR_MARKERS = ('aria-invalid="true"', 'class="error"', "flash-error", 'class="errors"')


def _refused(client, response) -> tuple[bool, str]:
    """Was the post refused, and what page did the person see?"""
    if response.status_code >= 400:
        return True, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    if response.status_code in (301, 302, 303):
        location = response.headers["Location"]
        if urlsplit(location).netloc not in ("", "localhost"):
            return False, ""
        followed = client.get(location)
        assert followed.status_code < 500, f"{location} -> {followed.status_code}"
        page = followed.get_data(as_text=True)
    return any(m in page for m in ERROR_MARKERS) and "flash-success" not in page, page


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_form_survives_generated_input(endpoint, fuzz_app, form_fields):
    """Never a 5xx; a refusal says why and changes no row count; nothing unstorable is kept."""
    application = fuzz_app
    ids = _seed(application)
    rule = next(r for r in application.url_map.iter_rules() if r.endpoint == endpoint)
    url = _url(rule, ids)
    client = application.test_client()
    who = _who(url, ids)
    fresh = {}
    if who:
        login(client, who)
    if endpoint.startswith("merchant.customers_import"):
        fresh["token"] = _upload_csv(client)
    if "GET" in rule.methods:
        # The person sees the form first (which may create rows, e.g. an automation's
        # default settings), then sends it.
        assert client.get(url).status_code < 500
    token = csrf_token_from(client.get("/login" if not who else "/account/password").text)
    fields = form_fields.get(SAME_FIELDS_AS.get(endpoint, endpoint), {})
    with application.app_context():
        count_rows, bad_strings = db.text(_row_counts_sql()), db.text(_bad_strings_sql())

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=_form_data(fields, fresh), htmx=st.booleans())
    # Always tried: every text field with a NUL byte, and every one far too long,
    # the rest as the page had them, so the form is otherwise acceptable.
    @example(data=_every_text_field(fields, fresh, "a\x00b"), htmx=False)
    @example(data=_every_text_field(fields, fresh, "x" * 5000), htmx=True)
    def post(data, htmx):
        form = MultiDict()
        for name, value in data.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, FileStorage):
                    item.stream.seek(0)
                form.add(name, item)
        form.add("csrf_token", token)
        headers = {"HX-Request": "true", "X-CSRFToken": token} if htmx else {}
        with application.app_context():
            before = db.session.execute(count_rows).one()
            unstorable_before = set(db.session.execute(bad_strings).scalars())
        sent = {k: [repr(v)[:120] for v in vs] for k, vs in form.lists() if k != "csrf_token"}
        response = client.post(url, data=form, headers=headers)
        assert response.status_code < 500, f"{endpoint}: {response.status_code} for {sent}"
        refused, page = _refused(client, response)
        with application.app_context():
            if refused:
                assert page.strip(), f"{endpoint}: a refusal with an empty page for {sent}"
                after = db.session.execute(count_rows).one()
                changed = {k: (before._mapping[k], v) for k, v in after._mapping.items()
                           if before._mapping[k] != v}
                assert not changed, f"{endpoint}: refused but saved rows {changed} for {sent}"
            unstorable = set(db.session.execute(bad_strings).scalars()) - unstorable_before
            assert not unstorable, f"{endpoint}: unstorable strings in {unstorable} for {sent}"
        if who and client.get("/account/password").status_code != 200:
            login(client, who)  # the post logged us out (logout, password change)

    post()


@pytest.mark.parametrize("size", ["body", "field"])
def test_a_post_too_large_gets_a_clear_413_page(app, client, size):
    """Over MAX_CONTENT_LENGTH (a file) or Werkzeug's form memory limit (one huge
    text field in a multipart form): a 413 page that says so, and nothing saved."""
    with app.app_context():
        ids = _seed(app)
        before = db.session.execute(db.text(_row_counts_sql())).one()
    login(client, ids["owner"])
    form = {"csrf_token": csrf_token_from(client.get("/admin/program").text), "reward_text": "x"}
    if size == "body":
        form["logo"] = FileStorage(io.BytesIO(b"x" * app.config["MAX_CONTENT_LENGTH"]), "a.png")
    else:
        form["reward_text"] = "x" * ((app.config.get("MAX_FORM_MEMORY_SIZE") or 500_000) + 1)
        form["attachment"] = FileStorage(io.BytesIO(b"small"), "small.txt")
    # Encoded here, in memory: the test client spools big bodies to a temporary
    # file that it never closes.
    boundary, body = encode_multipart(form)
    response = client.post("/admin/program", data=body,
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 413
    assert "too large" in response.text and "10 MB" in response.text
    with app.app_context():
        assert db.session.execute(db.text(_row_counts_sql())).one() == before
