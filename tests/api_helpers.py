"""Helpers of the API tests: a key for a merchant, and a client that sends it."""

from __future__ import annotations

from stampweb.api import auth


def make_key(merchant, scope: str = "write", name: str = "Till 1") -> str:
    """A fresh API key for the merchant (call inside an app context)."""
    return auth.create_key(merchant.id, name, scope).key


class Api:
    """The Flask test client with `Authorization: Bearer <key>` on every request."""

    def __init__(self, client, key: str):
        self.client = client
        self.key = key

    def headers(self, idempotency_key: str | None = None, **extra) -> dict:
        headers = {"Authorization": f"Bearer {self.key}", **extra}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def get(self, path, **kwargs):
        return self.client.get("/api/v1" + path, headers=self.headers(), **kwargs)

    def post(self, path, json=None, idempotency_key=None, **kwargs):
        return self.client.post("/api/v1" + path, json=json,
                                headers=self.headers(idempotency_key), **kwargs)

    def patch(self, path, json=None, **kwargs):
        return self.client.patch("/api/v1" + path, json=json, headers=self.headers(), **kwargs)

    def delete(self, path, **kwargs):
        return self.client.delete("/api/v1" + path, headers=self.headers(), **kwargs)


def is_problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.mimetype == "application/problem+json", response.mimetype
    body = response.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body
