"""The integration API under /api/v1 for POS systems and scripts (JSON, API keys).

No cookies and no CSRF: every request carries `Authorization: Bearer <key>`,
the key chooses the merchant (tenant), and each key is rate-limited on its
own. Errors are RFC 9457 problem documents. The OpenAPI 3.1 document at
/api/v1/openapi.json is generated from the models that validate requests.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ..extensions import csrf, limiter
from .auth import rate_limit_key
from .errors import ApiProblem, from_http_exception, problem_response

DEFAULT_RATE_LIMIT = "120 per minute"
# Per client address, whatever key it sends: bounds guessing and floods of bad keys.
DEFAULT_ADDRESS_RATE_LIMIT = "600 per minute"

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


def _key_limit() -> str:
    return current_app.config.get("API_RATE_LIMIT", DEFAULT_RATE_LIMIT)


def _address_limit() -> str:
    return current_app.config.get("API_ADDRESS_RATE_LIMIT", DEFAULT_ADDRESS_RATE_LIMIT)


def _address_key() -> str:
    return "api-addr:" + (request.remote_addr or "unknown")


limiter.limit(_key_limit, key_func=rate_limit_key)(bp)
limiter.limit(_address_limit, key_func=_address_key)(bp)


@bp.errorhandler(ApiProblem)
def _problem(problem: ApiProblem):
    return problem_response(problem)


def _http_error(error: HTTPException):
    return problem_response(from_http_exception(error))


# By status code as well as by class: Flask prefers the app's handler for a code
# (the HTML site's 404/429 pages) over a blueprint's handler for a class.
bp.register_error_handler(HTTPException, _http_error)
for _code in (400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500):
    bp.register_error_handler(_code, _http_error)


@bp.record_once
def _wire(state) -> None:
    from ..webhooks import init_webhooks

    init_webhooks(state.app)


@bp.get("/openapi.json")
@limiter.exempt
def openapi_json():
    from .openapi import build_document

    response = jsonify(build_document())
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/docs")
@limiter.exempt
def docs():
    from .openapi import build_document

    return render_template("api/docs.html", document=build_document())


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@bp.route("/<path:rest>", methods=_METHODS)
def not_found(rest: str):
    """Unknown paths (and known paths with another method) answer with a problem too."""
    adapter = current_app.url_map.bind("localhost")
    allowed = []
    for method in _METHODS:
        try:
            endpoint, _args = adapter.match(request.path, method=method)
        except (NotFound, MethodNotAllowed):
            continue
        if endpoint != "api.not_found":
            allowed.append(method)
    if allowed:
        raise ApiProblem(405, headers={"Allow": ", ".join(allowed)})
    raise ApiProblem(404)


from . import routes  # noqa: E402,F401  (registers the operations on bp)
