"""The PassKit web service, driven by a scripted iPhone, with pushes arriving at a local
HTTP/2 APNs stand-in."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta

import jwt
import pytest
from rq import SimpleWorker
from werkzeug.http import http_date

from stampweb import events
from stampweb.extensions import db, redis_client
from stampweb.models import Card, WalletPass, WalletRegistration
from stampweb.tasks.queues import QUEUES, WALLET, get_queue
from stampweb.tenancy import tenant, unscoped
from stampweb.wallet import apns

from .apns_standin import ApnsStandIn
from .factories import card_of, gen_customer, gen_merchant
from .wallet_helpers import APNS_KEY_ID, PASS_TYPE_ID, TEAM_ID, shared_credentials, wallet_app


@pytest.fixture
def creds(tmp_path_factory):
    return shared_credentials(tmp_path_factory)


@pytest.fixture
def apns_server(creds):
    with ApnsStandIn(str(creds.tls_cert), str(creds.tls_key)) as server:
        yield server
        apns.close_clients()  # before the server stops, so it needn't wait for the connection


@pytest.fixture
def app(tmp_path, creds, apns_server):
    application = wallet_app(tmp_path, creds, APNS_URL=apns_server.url)
    yield application
    with application.app_context():
        db.engine.dispose()


class Device:
    """An iPhone as PassKit behaves: it adds a pass, registers, and pulls on a push."""

    def __init__(self, client, library_id: str, push_token: str):
        self.client = client
        self.library_id = library_id
        self.push_token = push_token
        self.passes: dict[str, dict] = {}  # serial -> {"json", "last_modified", "token"}
        self.tag: str | None = None

    def add_pass(self, pkpass: bytes) -> dict:
        data = json.loads(zipfile.ZipFile(io.BytesIO(pkpass)).read("pass.json"))
        self.passes[data["serialNumber"]] = {"json": data, "last_modified": None}
        return data

    def _base(self, data: dict) -> str:
        assert data["webServiceURL"] == "https://cafe.test/wallet/"
        return "/wallet/"

    def _auth(self, data: dict, token: str | None = None) -> dict:
        return {"Authorization": f"ApplePass {token or data['authenticationToken']}"}

    def register(self, serial: str, token: str | None = None):
        data = self.passes[serial]["json"]
        return self.client.post(
            f"{self._base(data)}v1/devices/{self.library_id}/registrations/"
            f"{data['passTypeIdentifier']}/{serial}",
            json={"pushToken": self.push_token}, headers=self._auth(data, token))

    def unregister(self, serial: str):
        data = self.passes[serial]["json"]
        return self.client.delete(
            f"/wallet/v1/devices/{self.library_id}/registrations/"
            f"{data['passTypeIdentifier']}/{serial}", headers=self._auth(data))

    def list_updated(self):
        query = {"passesUpdatedSince": self.tag} if self.tag else {}
        response = self.client.get(
            f"/wallet/v1/devices/{self.library_id}/registrations/{PASS_TYPE_ID}",
            query_string=query)
        if response.status_code == 200:
            self.tag = response.json["lastUpdated"]
        return response

    def fetch(self, serial: str, method: str = "GET"):
        entry = self.passes[serial]
        headers = self._auth(entry["json"])
        if entry["last_modified"]:
            headers["If-Modified-Since"] = entry["last_modified"]
        response = self.client.open(
            f"/wallet/v1/passes/{entry['json']['passTypeIdentifier']}/{serial}",
            method=method, headers=headers)
        if response.status_code == 200 and method == "GET":
            entry["json"] = json.loads(
                zipfile.ZipFile(io.BytesIO(response.data)).read("pass.json"))
            entry["last_modified"] = response.headers["Last-Modified"]
        return response


def run_jobs(app) -> None:
    with app.app_context():
        connection = redis_client()
        queues = [get_queue(name, connection) for name in QUEUES]
        SimpleWorker(queues, connection=connection).work(burst=True)


def stamp(app, card: Card, stamps: int = 1) -> None:
    """What the stamping service does, as far as the wallet can see: commit, then announce."""
    with app.app_context(), tenant(card.merchant_id):
        row = db.session.get(Card, card.id)
        row.stamps += stamps
        db.session.commit()
        events.send(events.card_changed, merchant_id=card.merchant_id, card_id=card.id)


def age_pass(app, card: Card, seconds: int = 60) -> None:
    """Pretend the pass last changed a while ago (the list call's tag trails the clock)."""
    with app.app_context(), unscoped():
        row = db.session.query(WalletPass).filter_by(card_id=card.id).one()
        row.modified_at -= timedelta(seconds=seconds)
        db.session.commit()


def _card(app) -> Card:
    with app.app_context():
        return card_of(gen_customer(gen_merchant()))


def test_scripted_device_register_push_list_fetch(app, apns_server):
    """register → stamp → exactly one empty HTTP/2 push with the pass type id as topic →
    list serials since the tag → fetch the pass with If-Modified-Since → 304 once current."""
    client = app.test_client()
    card = _card(app)
    phone = Device(client, "device-library-1", "a1" * 32)
    serial = phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)["serialNumber"]

    assert phone.register(serial).status_code == 201
    assert phone.register(serial).status_code == 200  # known device: upserted, not duplicated

    age_pass(app, card)
    first = phone.list_updated()
    assert first.status_code == 200
    assert first.json["serialNumbers"] == [serial]
    assert isinstance(first.json["lastUpdated"], str)
    assert phone.fetch(serial).status_code == 200
    assert phone.list_updated().status_code == 204  # nothing changed since the tag
    assert phone.fetch(serial).status_code == 304

    stamp(app, card)
    run_jobs(app)

    [push] = apns_server.pushes()
    assert push.http_version == "2"
    assert push.method == "POST"
    assert push.path == f"/3/device/{phone.push_token}"
    assert push.headers["apns-topic"] == PASS_TYPE_ID
    assert push.body == b"{}"

    changed = phone.list_updated()
    assert changed.status_code == 200 and changed.json["serialNumbers"] == [serial]
    fresh = phone.fetch(serial)
    assert fresh.status_code == 200
    assert fresh.mimetype == "application/vnd.apple.pkpass"
    assert phone.passes[serial]["json"]["storeCard"]["headerFields"][0]["value"] == "1/10"
    assert phone.fetch(serial).status_code == 304
    assert phone.fetch(serial, method="HEAD").status_code == 304


def test_register_with_a_wrong_token_is_refused_as_json(app):
    """A bad or missing authentication token gets 401 with a JSON body, never HTML."""
    client = app.test_client()
    card = _card(app)
    phone = Device(client, "dev-x", "b2" * 32)
    serial = phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)["serialNumber"]
    response = phone.register(serial, token="not-the-token-at-all")
    assert response.status_code == 401
    assert response.is_json
    missing = client.post(f"/wallet/v1/devices/dev-x/registrations/{PASS_TYPE_ID}/{serial}",
                          json={"pushToken": "x"})
    assert missing.status_code == 401
    unknown = client.post(f"/wallet/v1/devices/dev-x/registrations/{PASS_TYPE_ID}/nope",
                          json={"pushToken": "x"}, headers={"Authorization": "ApplePass x" * 3})
    assert unknown.status_code == 401 and unknown.is_json
    wrong_type = client.get(f"/wallet/v1/passes/pass.other/{serial}",
                            headers={"Authorization": f"ApplePass {card.wallet_auth_token}"})
    assert wrong_type.status_code == 401
    with app.app_context(), unscoped():
        assert db.session.query(WalletRegistration).count() == 0


def test_unregister_and_device_log(app, apns_server):
    """Unregistering stops pushes to that device; /v1/log accepts device logs with 200."""
    client = app.test_client()
    card = _card(app)
    phone = Device(client, "dev-u", "c3" * 32)
    serial = phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)["serialNumber"]
    assert phone.register(serial).status_code == 201
    assert phone.unregister(serial).status_code == 200
    stamp(app, card)
    run_jobs(app)
    assert apns_server.pushes() == []
    assert phone.list_updated().status_code == 204
    log = client.post("/wallet/v1/log", json={"logs": ["[2026-11-23] Bad things happened"]})
    assert log.status_code == 200 and log.data == b""


def test_a_burst_of_changes_gives_one_push_per_device(app, apns_server):
    """Three changes in a row (stamp, stamp, voucher) → one job → one push per device."""
    client = app.test_client()
    card = _card(app)
    phones = [Device(client, f"dev-{n}", f"{n:02d}" * 32) for n in range(2)]
    data = client.get(f"/wallet/pass/{card.token}.pkpass").data
    for phone in phones:
        assert phone.register(phone.add_pass(data)["serialNumber"]).status_code == 201
    for _ in range(3):
        stamp(app, card)
    with app.app_context():
        assert len(get_queue(WALLET, redis_client())) == 1
    run_jobs(app)
    assert sorted(p.path for p in apns_server.pushes()) == sorted(
        f"/3/device/{phone.push_token}" for phone in phones)
    stamp(app, card)  # after the job ran, the next change pushes again
    run_jobs(app)
    assert len(apns_server.pushes()) == 4


def test_gone_device_tokens_are_deleted(app, apns_server):
    """APNs 410 Unregistered, or 400 BadDeviceToken, deletes that registration only."""
    client = app.test_client()
    card = _card(app)
    data = client.get(f"/wallet/pass/{card.token}.pkpass").data
    gone, bad, fine = (Device(client, f"dev-{n}", token) for n, token in
                       enumerate(["dd" * 32, "ee" * 32, "ff" * 32]))
    for phone in (gone, bad, fine):
        phone.register(phone.add_pass(data)["serialNumber"])
    apns_server.answer(gone.push_token, (410, "Unregistered"))
    apns_server.answer(bad.push_token, (400, "BadDeviceToken"))
    stamp(app, card)
    run_jobs(app)
    with app.app_context(), unscoped():
        left = [r.push_token for r in db.session.query(WalletRegistration)]
    assert left == [fine.push_token]


def test_busy_apns_is_retried_with_back_off(app, apns_server):
    """429 and 5xx are retried (with back-off) until APNs accepts the push."""
    client = app.test_client()
    card = _card(app)
    phone = Device(client, "dev-r", "ab" * 32)
    phone.register(phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)
                   ["serialNumber"])
    apns_server.answer(phone.push_token, (429, "TooManyRequests"), (503, "ServiceUnavailable"))
    stamp(app, card)
    run_jobs(app)
    assert len(apns_server.pushes(phone.push_token)) == 3
    with app.app_context(), unscoped():
        assert db.session.query(WalletRegistration).count() == 1


def test_apns_still_failing_is_rescheduled_not_dropped(app, apns_server):
    """When APNs keeps answering 503, a later retry job is scheduled for that device."""
    from rq.registry import ScheduledJobRegistry

    client = app.test_client()
    card = _card(app)
    phone = Device(client, "dev-s", "cd" * 32)
    phone.register(phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)
                   ["serialNumber"])
    apns_server.answer(phone.push_token, *[(503, "ServiceUnavailable")] * 4)
    stamp(app, card)
    run_jobs(app)
    with app.app_context():
        registry = ScheduledJobRegistry(queue=get_queue(WALLET, redis_client()))
        [job_id] = registry.get_job_ids()
        job = get_queue(WALLET, redis_client()).fetch_job(job_id)
    assert job.func_name.endswith("retry_apns_push")
    assert job.args[2] == [phone.push_token]


def test_token_auth_sends_an_es256_jwt_from_the_p8_key(tmp_path, creds, apns_server):
    """With APNS_KEY_ID and APNS_KEY, pushes carry `bearer <ES256 JWT>` (kid, iss = team),
    and the same token is reused rather than signed per push."""
    application = wallet_app(tmp_path, creds, APNS_URL=apns_server.url,
                             APNS_KEY_ID=APNS_KEY_ID, APNS_KEY=str(creds.apns_p8))
    client = application.test_client()
    with application.app_context():
        card = card_of(gen_customer(gen_merchant()))
    phone = Device(client, "dev-t", "ef" * 32)
    phone.register(phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)
                   ["serialNumber"])
    stamp(application, card)
    run_jobs(application)
    stamp(application, card)
    run_jobs(application)
    first, second = apns_server.pushes()
    scheme, token = first.headers["authorization"].split(" ", 1)
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": APNS_KEY_ID,
                                                "typ": "JWT"}
    claims = jwt.decode(token, creds.apns_key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == TEAM_ID
    assert second.headers["authorization"] == first.headers["authorization"]
    with application.app_context():
        db.engine.dispose()


def test_provider_token_is_renewed_after_forty_minutes(creds):
    """The JWT is cached about 40 minutes, then signed anew."""
    first = apns.provider_token(TEAM_ID, "RENEW12345", creds.apns_key, now=1_000_000)
    assert apns.provider_token(TEAM_ID, "RENEW12345", creds.apns_key,
                               now=1_000_000 + 39 * 60) == first
    assert apns.provider_token(TEAM_ID, "RENEW12345", creds.apns_key,
                               now=1_000_000 + 41 * 60) != first


def test_device_routes_are_rate_limited_with_json(tmp_path, creds, apns_server):
    """Past the configured rate a device gets 429 as JSON."""
    application = wallet_app(tmp_path, creds, APNS_URL=apns_server.url,
                             WALLET_DEVICE_RATE_LIMIT="2 per minute")
    client = application.test_client()
    url = f"/wallet/v1/devices/dev-l/registrations/{PASS_TYPE_ID}"
    codes = [client.get(url).status_code for _ in range(3)]
    assert codes == [204, 204, 429]
    assert client.get(url).is_json
    with application.app_context():
        db.engine.dispose()


def test_last_modified_moves_even_for_changes_within_one_second(app):
    """Two updates in the same second still give two different Last-Modified values."""
    from stampweb.wallet.passkit import mark_modified

    row = WalletPass(modified_at=None)
    from stampweb.models import utcnow

    now = utcnow()
    first = mark_modified(row, now)
    second = mark_modified(row, now)
    assert second > first and http_date(second) != http_date(first)


def test_campaign_message_changes_the_back_field_and_pushes(app, apns_server):
    """send_wallet_message puts the text on the pass's back (changeMessage %@) and pushes
    each device once; the result counts the devices."""
    from stampweb.wallet.updates import send_wallet_message

    client = app.test_client()
    card = _card(app)
    phone = Device(client, "dev-m", "9a" * 32)
    serial = phone.add_pass(client.get(f"/wallet/pass/{card.token}.pkpass").data)["serialNumber"]
    phone.register(serial)
    phone.fetch(serial)
    with app.app_context():
        result = send_wallet_message(card.merchant_id, card.id, "Free cookie with any latte")
    assert result.status == "sent" and result.apple == "pushed" and result.devices == 1
    assert result.google == "not_configured"
    assert len(apns_server.pushes(phone.push_token)) == 1
    assert phone.fetch(serial).status_code == 200
    back = {f["key"]: f for f in phone.passes[serial]["json"]["storeCard"]["backFields"]}
    assert back["message"]["value"] == "Free cookie with any latte"
    assert back["message"]["changeMessage"] == "%@"
