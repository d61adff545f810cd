"""APNs pushes for pass updates: empty body, topic = pass type id, HTTP/2.

A pass push carries no text: it only tells the device to ask our web service
what changed (the lock-screen text comes from the pass's changeMessage).

Auth is a token (ES256 JWT from a .p8 key, reused for about 40 minutes, as
Apple asks for no more than one new token per 20 minutes) when a key is
configured, else the pass certificate as a TLS client certificate.

One HTTP/2 connection per process and credentials is kept open and reused:
all pushes of a job (and of later jobs in the same process) share it.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field

import certifi
import httpx
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from flask import current_app

from .credentials import AppleConfig, pem_of_certificate, pem_of_key

log = logging.getLogger(__name__)

JWT_MAX_AGE = 40 * 60
# Device tokens APNs will never accept again: the registration must go.
GONE_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass
class PushOutcome:
    token: str
    status: int | None
    reason: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status == 200

    @property
    def gone(self) -> bool:
        return self.status == 410 or (self.status == 400 and self.reason in GONE_REASONS)

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRY_STATUSES


@dataclass
class PushReport:
    delivered: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    # Still failing after the retries: the caller may try again later.
    retry_later: list[str] = field(default_factory=list)
    # Refused for a reason retrying won't fix (bad credentials, bad topic).
    failed: list[PushOutcome] = field(default_factory=list)


_jwt_cache: dict[tuple[str, str], tuple[str, float]] = {}
_jwt_lock = threading.Lock()


def provider_token(team_id: str, key_id: str, key, *, now: float | None = None,
                   force_new: bool = False) -> str:
    """The ES256 provider token, reused until it is JWT_MAX_AGE old."""
    now = time.time() if now is None else now
    cache_key = (team_id, key_id)
    with _jwt_lock:
        cached = _jwt_cache.get(cache_key)
        if cached and not force_new and now - cached[1] < JWT_MAX_AGE:
            return cached[0]
        token = jwt.encode({"iss": team_id, "iat": int(now)}, key, algorithm="ES256",
                           headers={"kid": key_id})
        _jwt_cache[cache_key] = (token, now)
        return token


def _ssl_context(config: AppleConfig | None, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file or certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config is not None:
        # load_cert_chain() reads files only: write the PEMs to a private
        # temporary directory for the moment it takes, then remove them.
        with tempfile.TemporaryDirectory(prefix="stampweb-apns-") as folder:
            cert_path = os.path.join(folder, "cert.pem")
            key_path = os.path.join(folder, "key.pem")
            with open(os.open(cert_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                handle.write(pem_of_certificate(config.cert))
            with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                handle.write(pem_of_key(config.key))
            context.load_cert_chain(cert_path, key_path)
    return context


class ApnsClient:
    """Pushes to APNs over one long-lived HTTP/2 connection."""

    def __init__(self, base_url: str, config: AppleConfig, *, ca_file: str | None = None,
                 timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.config = config
        client_cert = config if config.apns_auth == "certificate" else None
        self.http = httpx.Client(
            http1=False,
            http2=True,
            verify=_ssl_context(client_cert, ca_file),
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def _headers(self, force_new_token: bool = False) -> dict[str, str]:
        headers = {
            "apns-topic": self.config.pass_type_id,
            "apns-priority": "10",
            "content-type": "application/json",
        }
        if self.config.apns_auth == "token":
            token = provider_token(self.config.team_id, self.config.apns_key_id,
                                   self.config.apns_key, force_new=force_new_token)
            headers["authorization"] = f"bearer {token}"
        return headers

    def push_once(self, push_token: str, *, force_new_token: bool = False) -> PushOutcome:
        """One attempt: POST /3/device/<token> with the empty dictionary as body."""
        try:
            response = self.http.post(
                f"{self.base_url}/3/device/{push_token}",
                content=b"{}",
                headers=self._headers(force_new_token),
            )
        except httpx.TransportError as exc:
            log.warning("APNs connection problem: %s", exc)
            return PushOutcome(push_token, None, type(exc).__name__)
        reason = None
        if response.status_code != 200:
            try:
                reason = response.json().get("reason")
            except ValueError:
                reason = response.text[:100] or None
        return PushOutcome(push_token, response.status_code, reason)

    def push(self, push_token: str, *, attempts: int = 4, backoff: float = 0.5,
             sleep=time.sleep) -> PushOutcome:
        """Push with retries: 429 and 5xx back off and retry; an expired JWT is renewed."""
        renewed = False
        outcome = self.push_once(push_token)
        for attempt in range(1, attempts):
            if outcome.status == 403 and outcome.reason == "ExpiredProviderToken" and not renewed:
                renewed = True
                outcome = self.push_once(push_token, force_new_token=True)
                continue
            if not outcome.retryable:
                break
            sleep(backoff * (2 ** (attempt - 1)))
            outcome = self.push_once(push_token)
        return outcome

    def push_many(self, push_tokens: list[str], **retry) -> PushReport:
        report = PushReport()
        for push_token in push_tokens:
            if report.retry_later:
                # APNs is struggling: one attempt each, not a full back-off per device.
                retry = {**retry, "attempts": 1}
            outcome = self.push(push_token, **retry)
            if outcome.delivered:
                report.delivered.append(push_token)
            elif outcome.gone:
                report.gone.append(push_token)
            elif outcome.retryable:
                report.retry_later.append(push_token)
            else:
                log.error("APNs refused a push (%s %s) for topic %s", outcome.status,
                          outcome.reason, self.config.pass_type_id)
                report.failed.append(outcome)
        return report


_clients: dict[tuple, ApnsClient] = {}
_clients_lock = threading.Lock()


def _identity(config: AppleConfig) -> tuple:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if config.apns_auth == "token":
        return ("token", config.team_id, config.apns_key_id,
                config.apns_key.public_key().public_bytes(enc, fmt), config.pass_type_id)
    return ("certificate", config.cert.fingerprint(hashes.SHA256()), config.pass_type_id)


def client_for(config: AppleConfig) -> ApnsClient:
    """This process's client for these credentials, opened on first use.

    Keyed by process id too: a forked RQ work-horse must not write into the
    parent's TLS connection.
    """
    base_url = current_app.config["APNS_URL"]
    ca_file = current_app.config.get("APNS_CA_FILE")
    key = (os.getpid(), base_url, ca_file, _identity(config))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = ApnsClient(base_url, config, ca_file=ca_file)
            _clients[key] = client
        return client


def close_clients() -> None:
    with _clients_lock:
        for (pid, *_rest), client in list(_clients.items()):
            if pid == os.getpid():
                client.close()
        _clients.clear()
