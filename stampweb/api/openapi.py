"""Operations: one decorator declares an endpoint, validates its input and documents it.

`@operation("POST", "/visits", body=VisitCreate, response=VisitOut, status=201)`
registers the Flask route, and at request time authenticates the key, checks
its scope, parses path ids, validates the JSON body and query with those
models, applies the Idempotency-Key and renders the view's result through the
response model. `build_document()` walks the same registry and embeds the same
models' JSON Schemas, so the OpenAPI document cannot drift from validation.

Why pydantic and a small generator rather than flask-smorest: pydantic v2
writes JSON Schema 2020-12, the dialect OpenAPI 3.1 uses as is, while
flask-smorest goes through marshmallow and apispec, whose output is OpenAPI
3.0-flavoured and whose validation (marshmallow) is a different engine from
the schema it prints. Here the printed schema is the validating one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import wraps

from flask import Response, g, request
from flask_babel import gettext as _
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from ..extensions import db
from ..models.api import SCOPE_READ, SCOPE_WRITE
from ..tenancy import set_tenant
from . import auth, idempotency
from .errors import PROBLEM_MEDIA_TYPE, ApiProblem, from_pydantic, problem_response
from .schemas import MAX_ID, Problem

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 256 * 1024
_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass
class Operation:
    method: str
    path: str
    endpoint: str
    summary: str
    tag: str
    scope: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    also: tuple[int, ...] = ()  # other success statuses with the same response
    body_required: bool = True
    description: str = ""
    path_params: tuple[str, ...] = field(default_factory=tuple)

    @property
    def statuses(self) -> list[int]:
        codes = {401, 429, *self.errors}
        if self.scope == SCOPE_WRITE:
            codes.add(403)
        if self.body is not None:
            codes.update((400, 413, 415, 422))
        if self.query is not None:
            codes.add(422)
        if self.path_params:
            codes.add(404)
        if self.method == "POST":
            codes.update((400, 409, 422))  # Idempotency-Key: malformed, in progress, reused
        return sorted(codes)


OPERATIONS: list[Operation] = []


def operation(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    scope: str = SCOPE_READ,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    also: tuple[int, ...] = (),
    body_required: bool = True,
):
    from . import bp

    def decorator(view):
        op = Operation(
            method=method, path=path, endpoint=view.__name__, summary=summary, tag=tag,
            scope=scope, body=body, query=query, response=response, status=status,
            errors=errors, also=also, body_required=body_required,
            description=(view.__doc__ or "").strip(),
            path_params=tuple(_PATH_PARAM.findall(path)),
        )
        OPERATIONS.append(op)

        @wraps(view)
        def wrapped(**path_values):
            api_key = _authenticate(scope)
            kwargs = {name: _path_id(value) for name, value in path_values.items()}
            raw = None
            if body is not None:
                raw, kwargs["body"] = _parse_body(body, body_required)
            if query is not None:
                kwargs["query"] = _parse_query(query)

            def handle() -> Response:
                try:
                    return _render(view(**kwargs), response, status)
                except ApiProblem as problem:
                    db.session.rollback()
                    return problem_response(problem)

            key = request.headers.get(idempotency.HEADER) if method == "POST" else None
            if key is None:
                return handle()
            idempotency.check_key(key)
            return idempotency.run(
                api_key.merchant_id, api_key.id, key, method, request.path,
                idempotency.fingerprint(method, request.path, raw), handle,
            )

        rule = _PATH_PARAM.sub(r"<\1>", path)
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=wrapped, methods=[method])
        return wrapped

    return decorator


# --- request handling -------------------------------------------------------------------


def _authenticate(scope: str):
    token = auth.bearer_token()
    if token is None:
        raise ApiProblem(
            401, _("Send your API key as `Authorization: Bearer <key>`."),
            code="missing_key", headers={"WWW-Authenticate": 'Bearer realm="stampweb"'},
        )
    api_key = auth.authenticate(token)
    if api_key is None:
        raise ApiProblem(
            401, _("This API key is not valid, or was revoked."), code="invalid_key",
            headers={"WWW-Authenticate": 'Bearer realm="stampweb", error="invalid_token"'},
        )
    if not api_key.allows(scope):
        raise ApiProblem(403, _("This API key may only read."), code="insufficient_scope")
    set_tenant(api_key.merchant_id)
    g.api_key_id = api_key.id
    g.api_key_name = api_key.name
    g.api_merchant_id = api_key.merchant_id
    auth.touch(api_key)
    return api_key


def _path_id(value: str) -> int:
    # Ids are parsed here rather than by an <int:> converter so that a bad id
    # gets the API's 404 problem, not the HTML site's 404 page.
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_ID:
        raise ApiProblem(404, _("No such resource."))
    return int(value)


def _parse_body(model: type[BaseModel], required: bool = True):
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiProblem(413, _("The body is too large."))
    data = request.get_data(cache=True)
    if len(data) > MAX_BODY_BYTES:
        raise ApiProblem(413, _("The body is too large."))
    if not data.strip() and not required:
        return {}, model()
    if not request.is_json:
        raise ApiProblem(415, _("Send the body as JSON (Content-Type: application/json)."))
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ApiProblem(400, _("The body is not valid JSON."), code="invalid_json") from exc
    if not isinstance(raw, dict):
        raise ApiProblem(400, _("The body must be a JSON object."), code="invalid_json")
    try:
        return raw, model.model_validate_json(data)
    except ValidationError as exc:
        raise from_pydantic(exc, "body") from exc


def _parse_query(model: type[BaseModel]):
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise from_pydantic(exc, "query") from exc


def _render(result, model: type[BaseModel] | None, status: int) -> Response:
    headers = {}
    if isinstance(result, tuple):
        result, status, *rest = result
        headers = rest[0] if rest else {}
    if result is None:
        return Response(status=status, headers=headers)
    if model is not None and not isinstance(result, model):
        result = model.model_validate(result)
    return Response(
        result.model_dump_json(by_alias=True), status=status, headers=headers,
        mimetype="application/json",
    )


# --- the document ------------------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "Malformed request: not JSON, not an object, or a bad Idempotency-Key header.",
    401: "No API key, or a key that is unknown or revoked.",
    403: "The key's scope does not allow this (a read-only key writing).",
    404: "No such resource for this merchant.",
    409: "Conflicts with the current state (cooldown, already redeemed, a campaign "
         "that cannot make that move, a request with this Idempotency-Key in progress).",
    413: "Body larger than 256 KiB.",
    415: "Body not sent as application/json.",
    422: "Fields that fail validation (`errors` names each), or an Idempotency-Key "
         "reused for a different request.",
    429: "Rate limit of this key exceeded; see Retry-After.",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def build_document(server_url: str = API_PREFIX) -> dict:
    """The OpenAPI 3.1 document of every registered operation."""
    pairs = [(Problem, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            pairs.append((op.body, "validation"))
        if op.response is not None:
            pairs.append((op.response, "serialization"))
    key_map, definitions = models_json_schema(
        list(dict.fromkeys(pairs)), ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict] = {}
    for op in OPERATIONS:
        item = paths.setdefault(op.path, {})
        parameters = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
            for name in op.path_params
        ]
        if op.query is not None:
            schema = op.query.model_json_schema(mode="validation")
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
                param = {"name": name, "in": "query", "required": name in required,
                         "schema": prop}
                description = schema["properties"][name].get("description")
                if description:
                    param["description"] = description
                parameters.append(param)
        if op.method == "POST":
            parameters.append({
                "name": idempotency.HEADER, "in": "header", "required": False,
                "description": "Retries with the same key and body get the first answer "
                               "and change nothing.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                           "pattern": "^[\\x21-\\x7e]+$"},
            })
        responses: dict[str, dict] = {}
        success: dict = {"description": "Success."}
        if op.response is not None:
            success["content"] = {
                "application/json": {"schema": key_map[(op.response, "serialization")]}
            }
        for code in (op.status, *op.also):
            responses[str(code)] = success
        for code in op.statuses:
            responses[str(code)] = {
                "description": _ERROR_DESCRIPTIONS.get(code, "Error."),
                "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}},
            }
        entry = {
            "operationId": op.endpoint,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": parameters,
            "responses": responses,
            "x-scope": op.scope,
        }
        if op.description:
            entry["description"] = op.description
        if op.body is not None:
            entry["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": {"schema": key_map[(op.body, "validation")]}},
            }
        item[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "stampweb integration API",
            "version": "1.0.0",
            "description": "For POS systems and scripts: customers, visits, vouchers, "
                           "segments, campaigns and tags of one merchant, chosen by the key.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API key made in Settings → API, or by "
                                              "`flask api-key create`."},
            },
        },
    }
