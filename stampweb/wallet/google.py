"""Google Wallet: a loyalty class per merchant, an object per card, over the REST API.

Google keeps no device registry: we PATCH the object and Google updates the
phones. Notifications go through addMessage (TEXT_AND_NOTIFY), at most three
per pass per 24 hours; the caller counts them (see wallet.updates).

Auth is the service account's own: an RS256 JWT exchanged for an OAuth token
at the account's token_uri (the JWT-bearer grant), so no google-auth needed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import httpx
import jwt

from .credentials import GoogleConfig

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/wallet_object.issuer"
SAVE_URL = "https://pay.google.com/gp/v/save/"
TOKEN_MARGIN = 120  # renew the OAuth token this many seconds before it expires


class GoogleWalletError(RuntimeError):
    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(f"{message} ({status}): {body[:300]}")
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500

    @property
    def quota_exceeded(self) -> bool:
        return self.status == 429 or "QuotaExceeded" in self.body


_tokens: dict[tuple[str, str], tuple[str, float]] = {}
_http: dict[int, httpx.Client] = {}
_lock = threading.Lock()


def _client() -> httpx.Client:
    """One pooled HTTP client per process (a forked worker opens its own)."""
    with _lock:
        client = _http.get(os.getpid())
        if client is None:
            client = httpx.Client(timeout=15.0)
            _http[os.getpid()] = client
        return client


def _sign(config: GoogleConfig, claims: dict) -> str:
    return jwt.encode(claims, config.private_key_pem, algorithm="RS256")


def access_token(config: GoogleConfig, *, force_new: bool = False) -> str:
    """An OAuth access token for the service account, cached until shortly before expiry."""
    key = (config.client_email, config.token_uri)
    now = time.time()
    with _lock:
        cached = _tokens.get(key)
        if cached and not force_new and cached[1] - TOKEN_MARGIN > now:
            return cached[0]
    assertion = _sign(config, {
        "iss": config.client_email, "scope": SCOPE, "aud": config.token_uri,
        "iat": int(now), "exp": int(now) + 3600,
    })
    try:
        response = _client().post(config.token_uri, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": assertion,
        })
    except httpx.TransportError as exc:
        raise GoogleWalletError("token request failed", None, str(exc)) from exc
    if response.status_code != 200:
        raise GoogleWalletError("token request refused", response.status_code, response.text)
    body = response.json()
    token = body["access_token"]
    with _lock:
        _tokens[key] = (token, now + int(body.get("expires_in", 3600)))
    return token


def _request(config: GoogleConfig, method: str, path: str, body: dict | None = None,
             params: dict | None = None) -> httpx.Response:
    url = f"{config.api_url}/{path.lstrip('/')}"
    for attempt in (1, 2):
        headers = {"authorization": f"Bearer {access_token(config, force_new=attempt == 2)}"}
        try:
            response = _client().request(method, url, json=body, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise GoogleWalletError(f"{method} {path} failed", None, str(exc)) from exc
        if response.status_code != 401:
            return response
    return response


def _check(response: httpx.Response, what: str) -> dict:
    if response.status_code >= 400:
        raise GoogleWalletError(what, response.status_code, response.text)
    return response.json() if response.content else {}


# --- ids and bodies --------------------------------------------------------------------


def class_id(config: GoogleConfig, merchant_id: int) -> str:
    return f"{config.issuer_id}.stampweb-merchant-{merchant_id}"


def object_id(config: GoogleConfig, wallet_serial: str) -> str:
    return f"{config.issuer_id}.{wallet_serial}"


def insert_or_update_class(config: GoogleConfig, body: dict) -> dict:
    """Create the merchant's loyalty class, or bring an existing one up to date."""
    response = _request(config, "POST", "loyaltyClass", body)
    if response.status_code == 409:
        response = _request(config, "PATCH", f"loyaltyClass/{body['id']}", body)
    return _check(response, "loyaltyClass")


def insert_or_update_object(config: GoogleConfig, body: dict) -> dict:
    """PATCH the card's loyalty object; insert it when Google doesn't have it yet."""
    response = _request(config, "PATCH", f"loyaltyObject/{body['id']}", body)
    if response.status_code == 404:
        response = _request(config, "POST", "loyaltyObject", body)
    return _check(response, "loyaltyObject")


def patch_object(config: GoogleConfig, body: dict) -> bool:
    """PATCH an object Google already has; False when it doesn't exist there."""
    response = _request(config, "PATCH", f"loyaltyObject/{body['id']}", body)
    if response.status_code == 404:
        return False
    _check(response, "loyaltyObject patch")
    return True


def add_message(config: GoogleConfig, object_id_: str, header: str, text: str,
                notify: bool) -> dict:
    """Put a message on the pass; TEXT_AND_NOTIFY also shows an Android notification."""
    body = {"message": {
        "id": uuid.uuid4().hex,
        "header": header[:100],
        "body": text,
        "messageType": "TEXT_AND_NOTIFY" if notify else "TEXT",
    }}
    response = _request(config, "POST", f"loyaltyObject/{object_id_}/addMessage", body)
    return _check(response, "addMessage")


def save_link(config: GoogleConfig, object_id_: str, origins: list[str],
              now: float | None = None) -> str:
    """The "Save to Google Wallet" URL: a signed skinny JWT naming the inserted object."""
    claims = {
        "iss": config.client_email,
        "aud": "google",
        "typ": "savetowallet",
        "iat": int(now if now is not None else time.time()),
        "origins": origins,
        "payload": {"loyaltyObjects": [{"id": object_id_}]},
    }
    return SAVE_URL + _sign(config, claims)


def close_clients() -> None:
    with _lock:
        client = _http.pop(os.getpid(), None)
        _tokens.clear()
    if client is not None:
        client.close()
