"""Schemathesis against the running app's own OpenAPI document: no server error, no schema violation.

The document (``/openapi.json``) has no OpenAPI links, so they are added here before loading it
(schemathesis 4 reads links from the document; its 3.x ``add_link`` is gone): submit → status, result and
cancel with ``$response.body#/request_id``, and status → result and cancel. Every operation is fuzzed
(positive and negative data, at most 25 examples each, a per-example deadline), then a stateful run
follows the links.

Bounded: a schema-valid submit body is turned into the cheapest job (480x480, 125 frames, 6 steps, the
values stay valid) and every job it creates is cancelled at once (one the sampler picked up already ends
cancelled at its next step), and the module's teardown follows all of them until they are terminal.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from loadtest.client import EXAMPLE_AUDIO, EXAMPLE_IMAGE, MODEL_PATH, SMALLEST_SIZE, ApiClient
from loadtest.stack import TOKEN
from serve.api.schemas import SIZES
from serve.client import Conflict

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 25
DEADLINE = timedelta(seconds=20)
STATUS_PATH = "/v1/requests/{request_id}/status"
RESULT_PATH = "/v1/requests/{request_id}/result"
CANCEL_PATH = "/v1/requests/{request_id}/cancel"
SIZE_FIELD, FRAMES_FIELD, STEPS_FIELD = "245_valuex246_value", "270_value", "128_steps"
IMAGE_FIELD, AUDIO_FIELD = "284_image", "125_audio"
DRAIN_TIMEOUT_S = 240.0
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection", "expect"})


def with_links(document: dict[str, Any]) -> dict[str, Any]:
    """The document with OpenAPI links between the job operations (by operationId)."""
    linked = copy.deepcopy(document)
    paths = linked["paths"]
    operation_ids = {
        "status": paths[STATUS_PATH]["get"]["operationId"],
        "result": paths[RESULT_PATH]["get"]["operationId"],
        "cancel": paths[CANCEL_PATH]["post"]["operationId"],
    }

    def links(*names: str) -> dict[str, Any]:
        return {
            f"Job{name.title()}": {
                "operationId": operation_ids[name],
                "parameters": {"request_id": "$response.body#/request_id"},
            }
            for name in names
        }

    paths[MODEL_PATH]["post"]["responses"]["202"]["links"] = links("status", "result", "cancel")
    paths[STATUS_PATH]["get"]["responses"]["200"]["links"] = links("result", "cancel")
    return linked


def cheapest(body: Any) -> Any:
    """A submit body made as cheap as it can be while keeping every field as valid as it was."""
    if not isinstance(body, dict):
        return body
    cheap = dict(body)
    if cheap.get(SIZE_FIELD, SMALLEST_SIZE) in SIZES:
        cheap[SIZE_FIELD] = SMALLEST_SIZE
    if cheap.get(FRAMES_FIELD) == 250:
        cheap[FRAMES_FIELD] = 125
    steps = cheap.get(STEPS_FIELD)
    if type(steps) is int and 6 <= steps <= 20:
        cheap[STEPS_FIELD] = 6
    return cheap


class Jobs:
    """Every job the fuzzing created: cancelled at once, followed to the end in the teardown."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.ids: list[str] = []

    def record(self, method: str, path: str, response: Any) -> None:
        if method.upper() == "POST" and path == MODEL_PATH and response.status_code == 202:
            request_id = response.json()["request_id"]
            self.ids.append(request_id)
            with contextlib.suppress(Conflict):  # it ended already
                self.client.cancel(request_id)


@pytest.fixture(scope="module")
def jobs(stack) -> Iterator[Jobs]:
    with ApiClient(stack.base_url, TOKEN) as client:
        ledger = Jobs(client)
        yield ledger
        report = client.drain(ledger.ids, timeout=DRAIN_TIMEOUT_S, cancel_queued=True)
        assert not report.lost, f"jobs created by schemathesis never finished: {report.lost}"


@pytest.fixture(scope="module")
def api_schema(stack, jobs: Jobs) -> Any:
    document = httpx.get(f"{stack.base_url}/openapi.json", timeout=30.0).json()
    config = schemathesis.Config.from_dict(
        {
            "base-url": stack.base_url,
            # Through the document's security scheme, so the ignored_auth check can send it without.
            "auth": {"openapi": {"BearerToken": {"bearer": TOKEN}}},
            "request-timeout": 30,
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
            "checks": {
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "response_headers_conformance": {"enabled": True},
                "negative_data_rejection": {"enabled": True},
                # A schema-valid reference ("284_image": "abc") is still refused: the document cannot say
                # which strings name an input, so rejecting valid-looking data is expected here.
                "positive_data_acceptance": {"enabled": False},
            },
        }
    )
    return schemathesis.openapi.from_dict(with_links(document), config=config)


def test_every_operation_conforms(api_schema: Any, jobs: Jobs, subtests: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", MODEL_PATH), ("GET", STATUS_PATH)}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with subtests.test(operation=operation.label, mode=mode.value):
                _fuzz(operation, mode, jobs)


def _fuzz(operation: Any, mode: GenerationMode, jobs: Jobs) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=DEADLINE,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        _make_cheap(case)
        _drop_framing_headers(case)
        response = case.call()
        jobs.record(case.method, case.path, response)
        case.validate_response(response)

    try:
        check()
    except Unsatisfiable:
        # Nothing about this operation can be made invalid (a free-form string path parameter, no
        # parameters at all): there is no negative case to send.
        if mode is not GenerationMode.NEGATIVE:
            raise


def _drop_framing_headers(case: Any) -> None:
    """Negative generation may forge headers that frame the HTTP message itself (``Content-Length: 4c|d``).
    The server's HTTP parser answers those with its own plain-text 400 before any route runs, so they test
    uvicorn, not this API; the hostile battery covers lying and oversized bodies."""
    if case.headers:
        case.headers = {
            name: value for name, value in case.headers.items() if name.lower() not in FRAMING_HEADERS
        }


def _make_cheap(case: Any, *, with_examples: bool = False) -> None:
    """Cheapest job settings; ``with_examples`` also points string input references at the example assets
    (random strings name no input, so without it no submit would ever be accepted)."""
    if case.method.upper() != "POST" or case.path != MODEL_PATH:
        return
    case.body = cheapest(case.body)
    if with_examples and isinstance(case.body, dict):
        for field, example in ((IMAGE_FIELD, EXAMPLE_IMAGE), (AUDIO_FIELD, EXAMPLE_AUDIO)):
            if isinstance(case.body.get(field), str):
                case.body[field] = example


def test_stateful_links(api_schema: Any, jobs: Jobs) -> None:
    base = api_schema.as_state_machine()
    answered: list[tuple[str, str, int]] = []

    class JobWorkflow(base):  # type: ignore[misc, valid-type]
        def before_call(self, case: Any) -> None:
            super().before_call(case)
            _make_cheap(case, with_examples=True)
            _drop_framing_headers(case)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            answered.append((case.method.upper(), case.path, response.status_code))
            if case.method.upper() == "POST" and case.path == MODEL_PATH and response.status_code == 202:
                jobs.ids.append(response.json()["request_id"])

    JobWorkflow.run(
        settings=settings(
            max_examples=10,
            stateful_step_count=5,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # A random id answers 404; a 200 from status or result means a link carried a real request id.
    followed = {(method, path) for method, path, status in answered if status == 200}
    assert followed & {("GET", STATUS_PATH), ("GET", RESULT_PATH)}, answered
