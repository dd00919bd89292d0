"""The official ``openai`` client choosing each model per request from one ``retouch serve`` whose
weights.yaml swaps edit models (``swap: true``): 2511, 2509 and Qwen-Image 2.1 side by side, the
per-model picture limits (six pictures run on 2.1, a clear 400 on the Plus models) and what
/v1/models says of each."""

from __future__ import annotations

import openai
import pytest
import yaml
from openai import OpenAI

from server.store import SQLiteStore
from tests.conftest import serving_tiny
from tests.support.openai_helpers import KEY
from tests.support.server_harness import png_bytes


@pytest.fixture(scope="module")
def swap_serve(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("swap-serve")
    data = yaml.safe_load(tiny_weights.read_text())
    data |= {"root": str(tiny_weights.parent), "swap": True, "memory": {"resident_edit_models": 2}}
    weights = folder / "weights.yaml"
    weights.write_text(yaml.safe_dump(data, sort_keys=False))
    for srv in serving_tiny(weights, tmp_path_factory, "swap-serve-data"):
        srv.store = SQLiteStore(srv.data_dir / "retouch.sqlite3")
        yield srv


@pytest.fixture(scope="module")
def client(swap_serve):
    return OpenAI(api_key=KEY, base_url=swap_serve.base_url + "/v1", max_retries=0, timeout=180)


def pictures(n: int) -> list:
    return [(f"p{i}.png", png_bytes(64, 64, color=(40 * i, 30, 200)), "image/png") for i in range(n)]


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("qwen-image-edit", "qwen-image-edit-tiny"),
        ("qwen-image-edit-2509", "qwen-image-edit-2509-tiny"),
        ("qwen-image-2.1", "qwen-image-2.1-tiny"),
        ("qwen-image-edit-2511", "qwen-image-edit-tiny"),
    ],
)
def test_each_model_by_name_runs_on_that_model(client, swap_serve, name, model):
    raw = client.images.with_raw_response.edit(model=name, image=pictures(1), prompt="make it warmer")
    assert raw.http_response.status_code == 200 and raw.parse().data[0].b64_json
    record = swap_serve.store.get_job(raw.headers["x-retouch-job-id"])
    assert record.meta.model == model and record.job.params.model == model


def test_six_pictures_run_on_21_and_are_a_400_on_the_plus_models(client, swap_serve):
    raw = client.images.with_raw_response.edit(model="qwen-image-2.1", image=pictures(6), prompt="compose")
    assert raw.http_response.status_code == 200
    record = swap_serve.store.get_job(raw.headers["x-retouch-job-id"])
    assert len(record.job.images) == 6
    for name in ("qwen-image-edit-2511", "qwen-image-edit-2509"):
        with pytest.raises(openai.BadRequestError) as info:
            client.images.edit(model=name, image=pictures(6), prompt="compose")
        assert info.value.status_code == 400
        assert "6 input images given, at most 3 are allowed" in info.value.message


def test_models_list_says_what_each_name_is(client):
    cards = {m.id: m.model_extra or {} for m in client.models.list()}
    assert {"qwen-image-2.1", "qwen-image-2.1-pe", "qwen-image-edit-2509"} <= set(cards)
    newest = cards["qwen-image-2.1"]
    assert newest["model"] == "qwen-image-2.1-tiny" and newest["license"].startswith("Qwen Research License")
    assert (newest["max_input_images"], newest["max_pictures"], newest["native_pixels"]) == (
        10,
        10,
        2048 * 2048,
    )
    plus = cards["qwen-image-edit-2511"]
    assert plus["license"] == "Apache-2.0" and plus["max_input_images"] == 3 and plus["max_pictures"] == 8
