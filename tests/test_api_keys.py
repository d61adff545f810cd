"""API keys: shown once, stored hashed, scoped, rate-limited per key, and never reaching
another merchant's data."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from stampweb.api import auth
from stampweb.extensions import db
from stampweb.models import ApiKey
from stampweb.tenancy import tenant, unscoped

from .api_helpers import Api, is_problem, make_key
from .conftest import unit_config
from .factories import card_of, gen_customer, gen_merchant, login, owner_of


def test_no_key_is_401_problem_with_www_authenticate(client):
    response = client.get("/api/v1/customers")
    is_problem(response, 401, "missing_key")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_and_revoked_keys_are_401(app, client):
    with app.app_context():
        merchant = gen_merchant()
        new = auth.create_key(merchant.id, "till", "write")
        assert Api(client, new.key).get("/customers").status_code == 200
        auth.revoke_key(merchant.id, new.api_key_id)
    is_problem(Api(client, new.key).get("/customers"), 401, "invalid_key")
    forged = new.key[:-1] + ("A" if new.key[-1] != "A" else "B")
    is_problem(Api(client, forged).get("/customers"), 401, "invalid_key")
    is_problem(Api(client, "not-a-key").get("/customers"), 401, "invalid_key")


def test_key_is_stored_as_a_hash_with_a_short_prefix(app):
    with app.app_context():
        merchant = gen_merchant()
        new = auth.create_key(merchant.id, "till", "read")
        assert new.key.startswith("sw_live_") and len(new.key) == 51
        with unscoped():
            row = db.session.scalar(select(ApiKey))
        assert row.key_hash == hashlib.sha256(new.key.encode()).hexdigest()
        assert row.prefix == new.key[:16] and new.key not in (row.prefix, row.key_hash)


def test_read_key_reads_but_may_not_write(app, client):
    with app.app_context():
        merchant = gen_merchant()
        key = make_key(merchant, scope="read")
    api = Api(client, key)
    assert api.get("/tags").status_code == 200
    assert api.post("/segments/count", {"rules": {}}).status_code == 200  # counting only reads
    is_problem(api.post("/tags", {"name": "VIP"}), 403, "insufficient_scope")


def test_cli_creates_a_key_printed_as_the_last_line(app, client):
    with app.app_context():
        gen_merchant(slug="corner")
    result = app.test_cli_runner().invoke(
        args=["api-key", "create", "--merchant", "corner", "--name", "Till 2"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert Api(client, key).get("/customers").status_code == 200
    listed = app.test_cli_runner().invoke(args=["api-key", "list", "--merchant", "corner"])
    assert key[:16] in listed.output and key not in listed.output


def test_rate_limit_is_per_key_and_answers_429_problem(tmp_path):
    from stampweb import create_app

    app = create_app(unit_config(tmp_path, API_RATE_LIMIT="3 per minute"))
    with app.app_context():
        db.create_all()
        merchant = gen_merchant()
        busy, other = make_key(merchant), make_key(merchant, name="Till 2")
    client = app.test_client()
    for _ in range(3):
        assert Api(client, busy).get("/tags").status_code == 200
    response = Api(client, busy).get("/tags")
    is_problem(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    assert Api(client, other).get("/tags").status_code == 200
    with app.app_context():
        db.engine.dispose()


def test_api_needs_no_csrf_token_and_sets_no_cookie(app, client):
    with app.app_context():
        key = make_key(gen_merchant())
    response = Api(client, key).post("/tags", {"name": "Regulars"})
    assert response.status_code == 201
    assert "Set-Cookie" not in response.headers


def test_a_key_never_reaches_another_merchants_data(app, client):
    """Every route with an id answers 404 for the other merchant's ids."""
    with app.app_context():
        mine, theirs = gen_merchant(), gen_merchant()
        key = make_key(mine)
        their_customer = gen_customer(theirs)
        their_code = card_of(their_customer).code
        other_key = make_key(theirs)
        theirs_id, cid = theirs.id, their_customer.id
    other = Api(client, other_key)
    their_tag = other.post("/tags", {"name": "Theirs"}).get_json()["id"]
    other.post("/visits", {"card_code": their_code, "stamps": 1})
    campaign = other.post("/campaigns", {"name": "x", "channels": "wallet", "wallet_text": "Hi",
                                         "audience": {"type": "all"}}).get_json()["id"]
    with app.app_context(), tenant(theirs_id):
        from stampweb.loyalty import vouchers

        voucher_id = vouchers.issue(theirs_id, cid, kind="manual", title="x").id
        db.session.commit()
    api = Api(client, key)
    for response in (
        api.get(f"/customers/{cid}"),
        api.patch(f"/customers/{cid}", {"first_name": "Mallory"}),
        api.post(f"/customers/{cid}/tags", {"name": "mine"}),
        api.delete(f"/customers/{cid}/tags/{their_tag}"),
        api.get(f"/vouchers/{voucher_id}"),
        api.post(f"/vouchers/{voucher_id}/redeem"),
        api.get(f"/campaigns/{campaign}"),
        api.post(f"/campaigns/{campaign}/send"),
        api.post(f"/campaigns/{campaign}/cancel"),
        api.post("/visits", {"customer_id": cid}),
        api.post("/visits", {"card_code": their_code}),
    ):
        is_problem(response, 404)
    assert api.get("/customers").get_json()["data"] == []
    assert api.get("/vouchers").get_json()["data"] == []
    assert api.get("/campaigns").get_json()["data"] == []
    assert api.get(f"/customers?card_code={their_code}").get_json()["data"] == []
    body = api.post("/segments/count", {"rules": {"groups": [{"conditions": [
        {"field": "has_tag", "op": "is", "value": their_tag}]}]}})
    is_problem(body, 422)


def test_openapi_document_is_31_and_lists_every_api_route(app, client):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    documented = {(m.upper(), "/api/v1" + p.replace("{", "<").replace("}", ">"))
                  for p, item in document["paths"].items() for m in item}
    routed = {(m, rule.rule) for rule in app.url_map.iter_rules()
              if rule.endpoint.startswith("api.") and rule.endpoint not in (
                  "api.openapi_json", "api.docs", "api.not_found")
              for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routed == documented
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and "Idempotency-Key" in page.text


def test_unknown_paths_and_methods_are_problems(app, client):
    with app.app_context():
        key = make_key(gen_merchant())
    api = Api(client, key)
    is_problem(api.get("/nothing-here"), 404)
    is_problem(api.get("/customers/abc"), 404)
    is_problem(api.get("/customers/99999999999"), 404)
    response = client.put("/api/v1/customers", headers=api.headers())
    is_problem(response, 405)
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("role, status", [("owner", 200), ("manager", 403), ("staff", 403)])
def test_only_owners_manage_keys_in_settings(app, client, role, status):
    from .factories import gen_user

    with app.app_context():
        merchant = gen_merchant()
        email = owner_of(merchant).email if role == "owner" else gen_user(merchant, role).email
    login(client, email)
    assert client.get("/admin/settings/api").status_code == status
