"""The emulator speaks the API as the official `mindee` SDK 5.x expects it.

Nothing of ocrwatchd is used here: the SDK is the independent witness that the emulator
(and so every test built on it) matches the real service.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mindee import (
    LocalResponse,
    OCRParameters,
    OCRResponse,
    PathInput,
    PollingOptions,
    URLInputSource,
)
from mindee.error import MindeeError
from mindee.v2 import Client
from mindee.v2.error import MindeeHTTPErrorV2

from tests.mindee_emulator import DATA_DIR, MindeeEmulator

SAMPLE = DATA_DIR / "default_sample.jpg"
MODEL_ID = "6c3f2a1e-8d4b-4f6a-9c2e-1b7d5e9a0f3c"
WEBHOOK_IDS = ["0b9e6f1c-2d3a-4e5f-8a7b-9c0d1e2f3a4b", "1c0f7a2d-3e4b-4f6a-9b8c-0d1e2f3a4b5c"]
# The SDK refuses polling delays under one second.
FAST_POLLING = PollingOptions(initial_delay_sec=1, delay_sec=1, max_retries=3)


@pytest.fixture
def sdk(emulator: MindeeEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """An SDK client pointed at the emulator through its own environment variables."""
    monkeypatch.setenv("MINDEE_V2_BASE_URL", emulator.url)
    monkeypatch.setenv("MINDEE_V2_API_KEY", emulator.api_key)
    with Client() as client:
        yield client


@pytest.fixture
def sample() -> Iterator[PathInput]:
    source = PathInput(SAMPLE)
    yield source
    source.close()


def fixture_pages(name: str) -> list[dict]:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))["inference"]["result"]["pages"]


def test_enqueue_poll_and_fetch_step_by_step(
    emulator: MindeeEmulator, sdk: Client, sample: PathInput
) -> None:
    params = OCRParameters(model_id=MODEL_ID, alias="inbox/scan 1.jpg", webhook_ids=WEBHOOK_IDS)

    enqueued = sdk.enqueue(sample, params).job
    assert enqueued.status == "Processing"
    assert (enqueued.model_id, enqueued.alias, enqueued.filename) == (
        MODEL_ID,
        "inbox/scan 1.jpg",
        "default_sample.jpg",
    )
    assert enqueued.polling_url == f"{emulator.url}/v2/jobs/{enqueued.id}"
    assert [w.id for w in enqueued.webhooks] == WEBHOOK_IDS

    assert sdk.get_job(enqueued.id).job.status == "Processing"
    processed = sdk.get_job(enqueued.id).job
    assert processed.status == "Processed"
    assert processed.completed_at is not None
    assert processed.result_url == f"{emulator.url}/v2/products/ocr/results/{enqueued.id}"

    response = sdk.get_result_from_url(OCRResponse, processed.result_url)
    inference = response.inference
    assert inference.id == inference.job.id == enqueued.id
    assert inference.model.id == MODEL_ID
    assert inference.file.name == "default_sample.jpg"
    assert inference.file.alias == "inbox/scan 1.jpg"
    assert (inference.file.page_count, inference.file.mime_type) == (1, "image/jpeg")
    [page] = inference.result.pages
    assert len(page.words) == 305
    assert page.words[0].content == "Shipper:"
    assert len(page.words[0].polygon) == 4
    assert page.content == fixture_pages("ocr_single.json")[0]["content"]

    # What the SDK sent, as the emulator recorded it.
    upload = emulator.requests[0]
    assert upload.headers["authorization"] == emulator.api_key
    assert upload.headers["user-agent"].startswith("mindee-api-python@v5.")
    assert upload.form["webhook_ids"] == WEBHOOK_IDS
    assert upload.file_sha256 == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert [r.status for r in emulator.requests] == [202, 200, 302, 200]

    # "Delete extracted data when fetched": a second fetch finds nothing.
    with pytest.raises(MindeeHTTPErrorV2) as gone:
        sdk.get_result_from_url(OCRResponse, processed.result_url)
    assert gone.value.status == 404


def test_enqueue_and_get_result_polls_until_processed(
    emulator: MindeeEmulator, sdk: Client, sample: PathInput
) -> None:
    emulator.processing_polls = 0
    params = OCRParameters(model_id=MODEL_ID, polling_options=FAST_POLLING)

    response = sdk.enqueue_and_get_result(OCRResponse, sample, params)

    assert response.inference.file.alias is None
    assert len(response.inference.result.pages) == 1
    assert emulator.count("job") == 1


def test_pdf_upload_gets_the_multi_page_result(emulator: MindeeEmulator, sdk: Client) -> None:
    emulator.processing_polls = 0
    with PathInput(DATA_DIR / "file_types" / "multipage.pdf") as pdf:
        job = sdk.enqueue(pdf, OCRParameters(model_id=MODEL_ID)).job
    result_url = sdk.get_job(job.id).job.result_url
    assert result_url is not None

    inference = sdk.get_result_from_url(OCRResponse, result_url).inference

    assert inference.file.mime_type == "application/pdf"
    assert inference.file.page_count == 3
    pages = fixture_pages("ocr_multiple.json")
    assert [p.content for p in inference.result.pages] == [p["content"] for p in pages]


def test_url_source_and_a_scripted_result(emulator: MindeeEmulator, sdk: Client) -> None:
    emulator.processing_polls = 0
    corners = [[0.1, 0.1], [0.3, 0.1], [0.3, 0.2], [0.1, 0.2]]
    emulator.script_result(
        [{"words": [{"content": "Hello", "polygon": corners}], "content": "Hello"}]
    )

    job = sdk.enqueue(
        URLInputSource("https://example.com/scans/scan.pdf"), OCRParameters(model_id=MODEL_ID)
    ).job
    # The SDK builds /v2/products/ocr/results/{id} itself: the inference id is the job id.
    inference = sdk.get_result(OCRResponse, job.id).inference

    assert emulator.requests[0].form["url"] == ["https://example.com/scans/scan.pdf"]
    assert (job.filename, inference.file.name) == ("scan.pdf", "scan.pdf")
    assert [w.content for w in inference.result.pages[0].words] == ["Hello"]


def test_wrong_key_is_the_sdks_401(
    emulator: MindeeEmulator, monkeypatch: pytest.MonkeyPatch, sample: PathInput
) -> None:
    monkeypatch.setenv("MINDEE_V2_BASE_URL", emulator.url)
    with (
        Client(api_key="md_not_the_right_key") as client,
        pytest.raises(MindeeHTTPErrorV2) as caught,
    ):
        client.enqueue(sample, OCRParameters(model_id=MODEL_ID))

    assert (caught.value.status, caught.value.code) == (401, "401-001")
    assert caught.value.detail == "The provided API key is invalid."
    assert emulator.enqueued == []


def test_invalid_model_id_is_a_422_with_a_pointer(sdk: Client, sample: PathInput) -> None:
    with pytest.raises(MindeeHTTPErrorV2) as caught:
        sdk.enqueue(sample, OCRParameters(model_id="not-a-uuid"))

    assert (caught.value.status, caught.value.code) == (422, "422-001")
    assert [(e.pointer, e.detail) for e in caught.value.errors] == [
        ("#/model_id", "model_id must be a valid UUID format")
    ]


def test_failed_job_is_the_sdks_failure(
    emulator: MindeeEmulator, sdk: Client, sample: PathInput
) -> None:
    emulator.processing_polls = 0
    emulator.fail_next_job(
        status=422,
        detail="One or more fields failed validation.",
        errors=[{"pointer": "#/model_id", "detail": "model_id must be a valid UUID format"}],
    )
    params = OCRParameters(model_id=MODEL_ID, polling_options=FAST_POLLING)

    with pytest.raises(MindeeError, match="One or more fields failed validation"):
        sdk.enqueue_and_get_result(OCRResponse, sample, params)

    [job] = emulator.enqueued
    failed = sdk.get_job(job.id).job
    assert failed.status == "Failed"
    assert failed.result_url is None
    assert failed.error is not None
    assert (failed.error.status, failed.error.code) == (422, "422-001")
    assert failed.error.title == "Invalid fields in form"
    assert failed.error.errors[0].pointer == "#/model_id"


def test_faults_look_like_real_trouble_to_the_sdk(
    emulator: MindeeEmulator, sdk: Client, sample: PathInput
) -> None:
    job = sdk.enqueue(sample, OCRParameters(model_id=MODEL_ID)).job
    emulator.fault("job", status=502, body="<html>502 Bad Gateway</html>", content_type="text/html")
    emulator.fault("job", status=200, body='{"job": {"id": ')
    emulator.fault("job", status=429, retry_after=2)

    with pytest.raises(MindeeHTTPErrorV2, match="not valid JSON"):
        sdk.get_job(job.id)
    with pytest.raises(MindeeHTTPErrorV2, match="not valid JSON"):
        sdk.get_job(job.id)
    with pytest.raises(MindeeHTTPErrorV2) as limited:
        sdk.get_job(job.id)
    assert limited.value.status == 429
    # The faults replaced the answers: the job was not polled.
    assert sdk.get_job(job.id).job.status == "Processing"


def test_missing_key_and_redirect_false_over_plain_http(emulator: MindeeEmulator) -> None:
    """What the SDK cannot show: no Authorization header at all, and `redirect=false`."""
    emulator.processing_polls = 0
    with SAMPLE.open("rb") as file:
        answer = requests.post(
            f"{emulator.url}/v2/products/ocr/enqueue",
            data={"model_id": MODEL_ID},
            files={"file": file},
            timeout=10,
        )
    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == json.loads(
        (DATA_DIR / "error_401_missing_credentials.json").read_text(encoding="utf-8")
    )

    auth = {"Authorization": emulator.api_key}
    with SAMPLE.open("rb") as file:
        answer = requests.post(
            f"{emulator.url}/v2/products/ocr/enqueue",
            data={"model_id": MODEL_ID, "webhook_ids": ",".join(WEBHOOK_IDS)},
            files={"file": file},
            headers=auth,
            timeout=10,
        )
    assert answer.status_code == 202
    job = answer.json()["job"]
    assert sorted(job) == sorted(
        json.loads((DATA_DIR / "ok_processing.json").read_text(encoding="utf-8"))["job"]
    )
    assert [w["id"] for w in job["webhooks"]] == WEBHOOK_IDS

    polled = requests.get(job["polling_url"], headers=auth, allow_redirects=False, timeout=10)
    assert polled.status_code == 302
    assert polled.headers["Location"] == polled.json()["job"]["result_url"]
    polled = requests.get(
        job["polling_url"], params={"redirect": "false"}, headers=auth, timeout=10
    )
    assert polled.status_code == 200
    assert polled.json()["job"]["status"] == "Processed"

    unknown = requests.get(f"{emulator.url}/v2/jobs/{MODEL_ID}", headers=auth, timeout=10)
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"status", "title", "detail", "code", "errors"}


def test_local_response_parses_a_result_and_checks_its_signature(
    emulator: MindeeEmulator, sdk: Client, sample: PathInput, tmp_path: Path
) -> None:
    """A stored result (our outbox files, a webhook body) is readable by the SDK."""
    emulator.processing_polls = 0
    job = sdk.enqueue(sample, OCRParameters(model_id=MODEL_ID, alias="a")).job
    body = requests.get(
        f"{emulator.url}/v2/products/ocr/results/{job.id}",
        headers={"Authorization": emulator.api_key},
        timeout=10,
    ).content
    stored = tmp_path / "result.json"
    stored.write_bytes(body)

    local = LocalResponse(stored)
    parsed = local.deserialize_response(OCRResponse)
    assert parsed.inference.file.alias == "a"
    assert len(parsed.inference.result.pages[0].words) == 305

    # The SDK signs the body with every CR and LF removed (API.md, webhooks).
    secret = "webhook-signing-secret"
    expected = hmac.new(
        secret.encode(), body.replace(b"\r", b"").replace(b"\n", b""), hashlib.sha256
    ).hexdigest()
    assert local.is_valid_hmac_signature(secret, expected)
    assert not local.is_valid_hmac_signature("another-secret", expected)
