"""End to end on real servers: PostgreSQL, Redis, a `flask worker` process with its
scheduler, and the HTTP/2 APNs stand-in. Changes coalesce into one delayed job."""

from __future__ import annotations

import time

import pytest

from stampweb import events
from stampweb.extensions import db
from stampweb.models import Card
from stampweb.tenancy import tenant

from .apns_standin import ApnsStandIn
from .conftest import WorkerProcesses, app_env, wait_until
from .factories import card_of, gen_customer, gen_merchant
from .test_wallet_passkit import Device, age_pass
from .wallet_helpers import apple_config, shared_credentials

pytestmark = pytest.mark.integration


@pytest.fixture
def creds(tmp_path_factory):
    return shared_credentials(tmp_path_factory)


def test_stamps_reach_the_phone_through_a_real_worker(pg_app, creds):
    """Three quick stamps → one scheduled job on the real worker → one HTTP/2 push →
    the phone lists the serial and downloads the new pass."""
    with ApnsStandIn(str(creds.tls_cert), str(creds.tls_key)) as apns_server:
        settings = {**apple_config(creds), "APNS_URL": apns_server.url,
                    "BASE_URL": "https://cafe.test", "WALLET_COALESCE_SECONDS": 2}
        pg_app.config.update(settings)
        env = app_env(pg_app, **{k: str(v) for k, v in settings.items()
                                 if v is not None and k.startswith(("APPLE_", "APNS_"))})
        workers = WorkerProcesses(env)
        workers.start(1)
        try:
            client = pg_app.test_client()
            with pg_app.app_context():
                card = card_of(gen_customer(gen_merchant()))
            phone = Device(client, "pg-device", "5e" * 32)
            serial = phone.add_pass(
                client.get(f"/wallet/pass/{card.token}.pkpass").data)["serialNumber"]
            assert phone.register(serial).status_code == 201
            age_pass(pg_app, card)
            assert phone.list_updated().status_code == 200
            assert phone.fetch(serial).status_code == 200
            assert phone.list_updated().status_code == 204

            with pg_app.app_context(), tenant(card.merchant_id):
                for _ in range(3):
                    row = db.session.get(Card, card.id)
                    row.stamps += 1
                    db.session.commit()
                    events.send(events.card_changed, merchant_id=card.merchant_id,
                                card_id=card.id)

            wait_until(lambda: apns_server.pushes(), timeout=45, message="the APNs push")
            time.sleep(3)  # a second push would have arrived by now
            [push] = apns_server.pushes()
            assert push.http_version == "2" and push.body == b"{}"

            assert phone.list_updated().json["serialNumbers"] == [serial]
            assert phone.fetch(serial).status_code == 200
            assert phone.passes[serial]["json"]["storeCard"]["headerFields"][0]["value"] == \
                "3/10"
        finally:
            workers.stop()


def test_the_wallet_worker_keeps_one_apns_connection_across_jobs(pg_app, creds):
    """`run-all`'s wallet worker (`--queues wallet --no-fork`): two update jobs, minutes
    apart in real life, push over the same HTTP/2 connection."""
    with ApnsStandIn(str(creds.tls_cert), str(creds.tls_key)) as apns_server:
        settings = {**apple_config(creds), "APNS_URL": apns_server.url,
                    "BASE_URL": "https://cafe.test", "WALLET_COALESCE_SECONDS": 0}
        pg_app.config.update(settings)
        env = app_env(pg_app, **{k: str(v) for k, v in settings.items()
                                 if v is not None and k.startswith(("APPLE_", "APNS_"))})
        workers = WorkerProcesses(env)
        workers.start(1, False, "--queues", "wallet", "--no-fork")
        try:
            client = pg_app.test_client()
            with pg_app.app_context():
                card = card_of(gen_customer(gen_merchant()))
            phone = Device(client, "no-fork-device", "7a" * 32)
            serial = phone.add_pass(
                client.get(f"/wallet/pass/{card.token}.pkpass").data)["serialNumber"]
            assert phone.register(serial).status_code == 201

            for expected in (1, 2):
                with pg_app.app_context():
                    events.send(events.card_changed, merchant_id=card.merchant_id,
                                card_id=card.id)
                wait_until(lambda n=expected: len(apns_server.pushes()) >= n, timeout=30,
                           message=f"push {expected}")
            first, second = apns_server.pushes()
            assert first.http_version == second.http_version == "2"
            assert first.client == second.client  # one connection, two jobs
        finally:
            workers.stop()
