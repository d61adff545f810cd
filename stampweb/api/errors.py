"""RFC 9457 problem details: every error the API gives is `application/problem+json`.

A problem has the RFC's members (type, title, status, detail, instance) and
two of ours: `code`, a stable machine-readable reason, and `errors`, the
field-level messages of a 422 (`field` in dotted form, `pointer` as a JSON
Pointer into the request body or query).
"""

from __future__ import annotations

from flask import Response, json, request
from flask_babel import gettext as _
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Titles by status: short, the same for every occurrence of the problem type.
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
}
_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "server_error",
}


class ApiProblem(Exception):
    """Raise from a view to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        code: str | None = None,
        errors: list[dict] | None = None,
        headers: dict | None = None,
        **extra,
    ):
        super().__init__(detail or _TITLES.get(status, str(status)))
        self.status = status
        self.detail = detail
        self.code = code or _DEFAULT_CODES.get(status, "error")
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra


def field_error(field: str, message) -> dict:
    parts = [p for p in field.split(".") if p]
    return {"field": field, "pointer": "/" + "/".join(parts), "message": str(message)}


def validation_problem(errors: list[dict], detail: str | None = None) -> ApiProblem:
    return ApiProblem(
        422, detail or _("The request has invalid fields; see errors."), errors=errors
    )


def from_pydantic(exc: ValidationError, location: str) -> ApiProblem:
    """One field error per pydantic error; `location` is "body" or "query"."""
    errors = []
    seen = set()
    for error in exc.errors(include_url=False, include_input=False):
        if error["type"] == "none_required":
            continue  # the "or leave it out" branch of an optional field
        path = ".".join(str(part) for part in error["loc"] if not _is_union_tag(part))
        if path in seen:
            continue
        seen.add(path)
        message = error["msg"]
        if error["type"] == "missing":
            message = _("This field is required.")
        elif error["type"] == "extra_forbidden":
            message = _("Unknown field.")
        errors.append({**field_error(path or location, message), "in": location})
    return validation_problem(errors)


_TYPE_TAGS = {"none", "int", "str", "bool", "float", "dict", "list", "model"}


def _is_union_tag(part) -> bool:
    """pydantic names the branch of a union in `loc` ("constrained-str"); fields never
    contain '-' or '['."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "-" in part or "[" in part)


def problem_response(problem: ApiProblem) -> Response:
    body = {
        "type": f"/api/v1/docs#problem-{problem.code}",
        "title": _TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": str(problem.detail or _TITLES.get(problem.status, "Error")),
        "instance": request.path,
        "code": problem.code,
    }
    if problem.errors:
        body["errors"] = problem.errors
    body.update(problem.extra)
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def from_http_exception(error: HTTPException) -> ApiProblem:
    status = error.code or 500
    headers = {}
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    if status == 429:
        # Flask-Limiter adds Retry-After and the X-RateLimit-* headers itself.
        return ApiProblem(429, _("Too many requests with this API key; slow down."))
    detail = error.description if status != 500 else None
    return ApiProblem(status, detail, headers=headers)

