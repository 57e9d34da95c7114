"""The request model is the API contract: wire names, strict types, ranges, enums, the engine dataclass."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from api_fixtures import ALIASES, EXTENSIONS, SEED_BODY, SEED_SETTINGS
from pydantic import ValidationError

from serve.api.knobs import InputFacts
from serve.api.schemas import (
    MAX_PROMPT_CHARS,
    SIZES,
    ErrorBody,
    ResultResponse,
    StatusResponse,
    SubmitRequest,
    SubmitResponse,
    input_json_schema,
    output_json_schema,
)


def _body(**overrides: object) -> dict[str, object]:
    return {**SEED_BODY, **overrides}


def _error_fields(body: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        SubmitRequest.model_validate(body)
    return {".".join(map(str, error["loc"])): error["type"] for error in caught.value.errors()}


def test_seed_page_example_gives_documented_defaults() -> None:
    settings = SubmitRequest.model_validate(SEED_BODY).to_settings()
    assert settings == SEED_SETTINGS
    assert isinstance(settings.shift, float) and isinstance(settings.cfg, float)


def test_job_settings_are_a_plain_frozen_dataclass() -> None:
    settings = SubmitRequest.model_validate(SEED_BODY).to_settings()
    assert dataclasses.is_dataclass(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1  # type: ignore[misc]


def test_body_hash_is_the_validated_request_not_its_spelling() -> None:
    by_wire_name = SubmitRequest.model_validate(_body(**{"128_steps": 7}))
    by_python_name = SubmitRequest.model_validate(
        {
            "prompt": " a woman is talking and waving hands ",
            "image": "Runcomfy_example_1278_1.png",
            "audio": "Runcomfy_example_1278_1.mp3",
            "steps": 7,
        }
    )
    assert by_wire_name.body_hash() == by_python_name.body_hash()
    other_audio = SubmitRequest.model_validate(_body(**{"125_audio": "https://cdn.test/other.mp3"}))
    assert other_audio.body_hash() != by_wire_name.body_hash()
    assert len(by_wire_name.body_hash()) == 64


@pytest.mark.parametrize(
    ("option", "width", "height"),
    [("960x540 (16:9)", 960, 540), ("540x960 (9:16)", 540, 960), ("576x1024 (9:16)", 576, 1024)],
)
def test_size_option_is_width_by_height(option: str, width: int, height: int) -> None:
    settings = SubmitRequest.model_validate(_body(**{"245_valuex246_value": option})).to_settings()
    assert (settings.width, settings.height) == (width, height)


def test_all_ten_sizes_parse_and_match_their_aspect_label() -> None:
    assert len(SIZES) == 10
    for option, (width, height) in SIZES.items():
        assert option.startswith(f"{width}x{height} (")
        ratio_w, ratio_h = (int(n) for n in option.split("(")[1].rstrip(")").split(":"))
        assert width * ratio_h == height * ratio_w


def test_fields_populate_by_python_name_too() -> None:
    request = SubmitRequest.model_validate(
        {"prompt": "hi", "image": "Runcomfy_example_1278_1.png", "audio": "a.mp3", "steps": 20, "frames": 250}
    )
    assert (request.steps, request.frames) == (20, 250)


def test_full_custom_body() -> None:
    settings = SubmitRequest.model_validate(
        _body(
            **{
                "245_valuex246_value": "1280x720 (16:9)",
                "270_value": 250,
                "128_seed": -(2**63),
                "128_steps": 6,
                "128_shift": 1,
                "128_cfg": 0.6,
            }
        )
    ).to_settings()
    assert (settings.width, settings.height, settings.frames, settings.seed) == (1280, 720, 250, -(2**63))
    assert (settings.steps, settings.shift, settings.cfg) == (6, 1.0, 0.6)


def test_prompt_is_trimmed() -> None:
    request = SubmitRequest.model_validate(_body(**{"241_positive_prompt": "  hello there \n"}))
    assert request.prompt == "hello there"


@pytest.mark.parametrize(
    ("overrides", "field", "error_type"),
    [
        ({"241_positive_prompt": "   "}, "241_positive_prompt", "string_empty"),
        ({"241_positive_prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "241_positive_prompt", "string_too_long"),
        ({"241_positive_prompt": 5}, "241_positive_prompt", "string_type"),
        ({"284_image": ""}, "284_image", "string_empty"),
        ({"125_audio": None}, "125_audio", "string_type"),
        ({"245_valuex246_value": "720x720"}, "245_valuex246_value", "literal_error"),
        ({"245_valuex246_value": "721x720 (1:1)"}, "245_valuex246_value", "literal_error"),
        ({"270_value": 126}, "270_value", "literal_error"),
        ({"270_value": "125"}, "270_value", "int_type"),
        ({"270_value": True}, "270_value", "int_type"),
        ({"270_value": 125.0}, "270_value", "int_type"),
        ({"128_seed": 2**64}, "128_seed", "less_than_equal"),
        ({"128_seed": -(2**63) - 1}, "128_seed", "greater_than_equal"),
        ({"128_seed": "1"}, "128_seed", "int_type"),
        ({"128_seed": 1.5}, "128_seed", "int_type"),
        ({"128_steps": 5}, "128_steps", "greater_than_equal"),
        ({"128_steps": 21}, "128_steps", "less_than_equal"),
        ({"128_steps": "7"}, "128_steps", "int_type"),
        ({"128_steps": True}, "128_steps", "int_type"),
        ({"128_steps": 7.0}, "128_steps", "int_type"),
        ({"128_shift": 0.99}, "128_shift", "greater_than_equal"),
        ({"128_shift": 15.01}, "128_shift", "less_than_equal"),
        ({"128_shift": "3"}, "128_shift", "float_type"),
        ({"128_shift": float("nan")}, "128_shift", "finite_number"),
        ({"128_cfg": 0.5}, "128_cfg", "greater_than_equal"),
        ({"128_cfg": 2.5}, "128_cfg", "less_than_equal"),
        ({"128_cfg": False}, "128_cfg", "float_type"),
        ({"128_cfg": float("inf")}, "128_cfg", "finite_number"),
    ],
)
def test_invalid_values_name_the_wire_field(
    overrides: dict[str, object], field: str, error_type: str
) -> None:
    assert _error_fields(_body(**overrides)) == {field: error_type}


def test_unknown_field_is_refused() -> None:
    assert _error_fields(_body(webhook_url="https://x.test", **{"128_stepz": 7})) == {
        "webhook_url": "extra_forbidden",
        "128_stepz": "extra_forbidden",
    }


def test_required_fields() -> None:
    assert _error_fields({}) == {
        "241_positive_prompt": "missing",
        "284_image": "missing",
        "125_audio": "missing",
    }


def test_float_fields_accept_integers() -> None:
    request = SubmitRequest.model_validate(_body(**{"128_shift": 15, "128_cfg": 2}))
    assert (request.shift, request.cfg) == (15, 2)


def test_input_schema_matches_seed_page_shape() -> None:
    schema = input_json_schema()
    assert schema["title"] == "Input" and schema["type"] == "object"
    assert schema["required"] == ["241_positive_prompt", "284_image", "125_audio"]
    props = schema["properties"]
    assert set(props) == {*ALIASES, *EXTENSIONS}
    assert props["audio_cfg"]["description"].startswith("Extension:")
    assert (props["audio_cfg"]["default"], props["match_audio_length"]["default"]) == (1, False)
    assert props["125_audio"]["default"] == "Runcomfy_example_1278_1.mp3"
    assert props["284_image"]["title"] == "Image"
    assert props["245_valuex246_value"]["title"] == "Resolution (W:H)"
    assert props["245_valuex246_value"]["enum"] == list(SIZES)
    assert props["245_valuex246_value"]["default"] == "720x720 (1:1)"
    assert props["270_value"] == {
        "title": "Number of Frames",
        "description": props["270_value"]["description"],
        "type": "integer",
        "enum": [125, 250],
        "default": 125,
    }
    assert props["128_seed"]["default"] == 96860978
    assert (props["128_steps"]["minimum"], props["128_steps"]["maximum"], props["128_steps"]["default"]) == (
        6,
        20,
        7,
    )
    assert props["128_shift"] == {
        "title": "Shift",
        "description": props["128_shift"]["description"],
        "type": "float",
        "default": 11,
        "minimum": 1,
        "maximum": 15,
    }
    assert (props["128_cfg"]["type"], props["128_cfg"]["minimum"], props["128_cfg"]["maximum"]) == (
        "float",
        0.6,
        2,
    )
    assert all(isinstance(p["description"], str) and p["title"] for p in props.values())
    json.dumps(schema)  # plain JSON


def test_output_schema_is_the_seed_pages_and_a_copy() -> None:
    schema = output_json_schema()
    assert schema["output"]["properties"]["video"] == {
        "type": "string",
        "format": "uri",
        "description": "single video URL",
    }
    schema["output"]["properties"].clear()
    assert "video" in output_json_schema()["output"]["properties"]


def test_openapi_schema_uses_wire_names_and_descriptions() -> None:
    schema = SubmitRequest.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["128_steps"]["description"].startswith("Number of denoising iterations")
    assert "steps" not in schema["properties"]


def _record(**overrides: object) -> SimpleNamespace:
    base = {
        "request_id": "req1",
        "status": SimpleNamespace(value="in_queue"),
        "progress": 0.0,
        "eta_seconds": None,
        "created_at": 1_700_000_000.0,
        "started_at": None,
        "finished_at": None,
        "attempt": 0,
        "error": None,
        "output": None,
        "timings": {},
        "reproducibility": {},
        "expires_at": None,
        "cancel_requested": False,
        "webhook": None,
    }
    base.update(overrides)
    return SimpleNamespace(**base)


def test_status_from_record_queue_position_only_while_queued() -> None:
    queued = StatusResponse.from_record(_record(), queue_position=3)
    assert queued.queue_position == 3
    assert queued.created_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    running = StatusResponse.from_record(
        _record(
            status=SimpleNamespace(value="in_progress"), progress=0.5, started_at=1_700_000_010.0, attempt=1
        ),
        queue_position=3,
    )
    assert running.queue_position is None and running.progress == 0.5 and running.attempt == 1
    dumped = running.model_dump(mode="json", exclude_none=True)
    assert dumped["started_at"].startswith("2023-11-14T22:13:30")
    assert "error" not in dumped


def test_failed_status_carries_typed_error() -> None:
    status = StatusResponse.from_record(
        _record(
            status=SimpleNamespace(value="failed"),
            error=SimpleNamespace(code="invalid_audio", message="125_audio: no audio stream"),
        )
    )
    assert status.model_dump()["error"] == {"code": "invalid_audio", "message": "125_audio: no audio stream"}


def test_result_from_record() -> None:
    record = _record(
        status=SimpleNamespace(value="completed"),
        progress=1.0,
        finished_at=1_700_000_100.0,
        timings={"sampling": 12.5, "mux": 0.25, "extra_stage": 1.0},
        reproducibility={"seed": 1, "code_version": "abc"},
        expires_at=1_700_086_400.0,
    )
    result = ResultResponse.from_record(record, video_url="https://cdn.test/v.mp4?sig=x")
    body = result.model_dump(mode="json", exclude_none=True)
    assert body["output"] == {"video": "https://cdn.test/v.mp4?sig=x"}
    assert body["timings"] == {"sampling": 12.5, "mux": 0.25, "extra_stage": 1.0}
    assert body["reproducibility"]["code_version"] == "abc"
    assert body["expires_at"].startswith("2023-11-15")
    assert ResultResponse.from_record(_record()).output is None


def test_status_response_refuses_unknown_status_and_bad_progress() -> None:
    with pytest.raises(ValidationError):
        StatusResponse.from_record(_record(status=SimpleNamespace(value="running")))
    with pytest.raises(ValidationError):
        StatusResponse.from_record(_record(progress=1.5))


def test_submit_response_and_error_body_shapes() -> None:
    response = SubmitResponse(
        request_id="r", status_url="http://h/s", result_url="http://h/r", cancel_url="http://h/c"
    )
    assert set(response.model_dump()) == {"request_id", "status_url", "result_url", "cancel_url"}
    body = ErrorBody.model_validate({"error": {"code": "x", "message": "y"}})
    assert body.model_dump() == {"error": {"code": "x", "message": "y", "details": []}}


def test_cancel_requested_shows_only_while_the_job_still_runs() -> None:
    running = _record(status=SimpleNamespace(value="in_progress"), cancel_requested=True)
    assert StatusResponse.from_record(running).cancel_requested is True
    ended = _record(status=SimpleNamespace(value="cancelled"), cancel_requested=True)
    assert "cancel_requested" not in StatusResponse.from_record(ended).model_dump(exclude_none=True)


def test_audio_guidance_and_speech_length_are_extension_fields() -> None:
    request = SubmitRequest.model_validate(_body(audio_cfg=2.5, match_audio_length=True))
    assert (request.audio_cfg, request.match_audio_length) == (2.5, True)
    settings = request.to_settings(InputFacts(speech_frames=312))
    assert (settings.frames, settings.audio_cfg) == (312, 2.5)
    # Without match_audio_length the seed's frame count stands, whatever the speech's length.
    assert SubmitRequest.model_validate(_body()).to_settings(InputFacts(speech_frames=312)).frames == 125
    with pytest.raises(ValueError, match="needs the speech's frame count"):
        request.to_settings()


@pytest.mark.parametrize(
    "changes",
    [
        {"audio_cfg": "2"},
        {"audio_cfg": 0.49},
        {"audio_cfg": 10.01},
        {"audio_cfg": None},
        {"match_audio_length": 1},
        {"match_audio_length": "true"},
        {"match_audio_length": None},
    ],
)
def test_bad_extension_values_are_refused_by_name(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as refused:
        SubmitRequest.model_validate(_body(**changes))
    assert [error["loc"] for error in refused.value.errors()] == [(next(iter(changes)),)]


def test_a_field_at_its_default_hashes_the_same_sent_or_not() -> None:
    plain = SubmitRequest.model_validate(_body())
    explicit = SubmitRequest.model_validate(_body(audio_cfg=1, match_audio_length=False, **{"128_cfg": 1.0}))
    assert plain.body_hash() == explicit.body_hash()
    assert SubmitRequest.model_validate(_body(audio_cfg=2)).body_hash() != plain.body_hash()
