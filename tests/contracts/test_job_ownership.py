"""Whose jobs a contract answers for, alike on every contract with a job endpoint (the one owner
check of server/contracts/base.py): a key's own jobs only, another key's are not found; and only
jobs submitted through that contract, so a job id from another contract is not found either (each
contract renders its own jobs; before the shared base, imagepipeline's status showed any)."""

from __future__ import annotations

import base64
import itertools

import pytest

from tests.support.server_harness import png_bytes

PICTURE = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
# contract -> (its job endpoint, how its own "not found" body reads)
JOB_ENDPOINTS = {
    "imagepipeline": ("/edit/image/v1/status/{}", lambda body: body["error_code"] == "NOT_FOUND"),
    "fashn": ("/v1/status/{}", lambda body: body["error"] == "NotFound"),
    "depicta": ("/v1/jobs/{}", lambda body: body["error"] == "not_found"),
}
CONTRACTS = [*JOB_ENDPOINTS, "openai"]  # OpenAI's edit is synchronous: it has no job endpoint


@pytest.fixture
def server(served):
    return served


def submit(srv, contract: str, key: str) -> str:
    headers = {"X-API-Key": key}
    if contract == "imagepipeline":
        resp = srv.post("/edit/image/v1", json={"prompt": "x", "input_image": PICTURE}, headers=headers)
        job = resp.json().get("job_id")
    elif contract == "fashn":
        body = {"model_name": "edit", "inputs": {"image": PICTURE, "prompt": "x"}}
        resp = srv.post("/v1/run", json=body, headers=headers)
        job = resp.json().get("id")
    elif contract == "depicta":
        files = {"image": ("a.png", png_bytes(), "image/png")}
        url = srv.post("/v1/upload", files=files, headers=headers).json()["upload_url"]
        resp = srv.post("/v1/edit/image", json={"prompt": "x", "input_image_url": url}, headers=headers)
        job = resp.headers.get("x-depicta-job-id")
    else:
        body = {"prompt": "x", "images": [{"image_url": PICTURE}]}
        resp = srv.post("/v1/images/edits", json=body, headers=headers)
        job = resp.headers.get("x-retouch-job-id")
    assert resp.status_code == 200 and job, (contract, resp.text)
    return job


def assert_not_found(resp, contract: str) -> None:
    assert resp.status_code == 404, (contract, resp.text)
    assert JOB_ENDPOINTS[contract][1](resp.json()), (contract, resp.text)


@pytest.mark.parametrize("contract", list(JOB_ENDPOINTS))
def test_a_job_is_visible_to_its_key_only(server, contract):
    path = JOB_ENDPOINTS[contract][0].format(submit(server, contract, "owner-key"))
    assert server.get(path, headers={"X-API-Key": "owner-key"}).status_code == 200
    assert_not_found(server.get(path, headers={"X-API-Key": "another-key"}), contract)


@pytest.mark.parametrize(
    "submitted_on, asked_on",
    [(s, a) for s, a in itertools.product(CONTRACTS, JOB_ENDPOINTS) if s != a],
)
def test_a_contract_does_not_answer_for_another_contracts_job(server, submitted_on, asked_on):
    job = submit(server, submitted_on, "same-key")
    resp = server.get(JOB_ENDPOINTS[asked_on][0].format(job), headers={"X-API-Key": "same-key"})
    assert_not_found(resp, asked_on)
