"""schemathesis against /api/v1/openapi.json, in process: no 5xx, and every answer
matches the document (status code, media type and body schema).

The pytest plugin's lazy fixture loader does not work with this pytest, so the
test walks the operations itself. Runs on the unit app (SQLite + fakeredis)
with a valid write key, derandomized (a fixed seed) and a bounded number of
examples per operation and mode, so it is quick and repeatable in CI.
"""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stampweb import create_app
from stampweb.extensions import db
from stampweb.models import CONSENT_GRANTED

from .api_helpers import make_key
from .conftest import unit_config
from .factories import gen_customer, gen_merchant

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture
def fuzz_app(tmp_path):
    application = create_app(unit_config(tmp_path, API_RATE_LIMIT="100000 per minute",
                                         API_ADDRESS_RATE_LIMIT="100000 per minute"))
    with application.app_context():
        db.create_all()
        merchant = gen_merchant()
        for _ in range(3):
            gen_customer(merchant, email_consent=CONSENT_GRANTED)
        application.config["TEST_API_KEY"] = make_key(merchant)
    yield application
    with application.app_context():
        db.engine.dispose()


def test_api_conforms_to_its_openapi_document(fuzz_app):
    """Every operation, with generated valid and then invalid input: no 5xx, nothing off-schema."""
    api_schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    headers = {"Authorization": f"Bearer {fuzz_app.config['TEST_API_KEY']}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 17
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
