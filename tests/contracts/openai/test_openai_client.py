"""OpenAI-compatible / IG1 contract end to end: the official ``openai`` client and IG1's JSON example
against a real ``retouch serve`` on tiny weights."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.conftest import encode, make_photo
from tests.support.openai_helpers import (
    KEY,
    decode_b64,
    rgba_mask,
)
from tests.support.server_harness import png_bytes


# --------------------------------------------------------------------------------------------
# A real `retouch serve` on tiny weights, driven by the official openai client and by httpx
# --------------------------------------------------------------------------------------------
# The server is the shared `tiny_serve` (tests/conftest.py): the demo set as `retouch weights tiny`
# writes it, whose production limits IG1's 1280x720 fits.
@pytest.fixture(scope="module")
def client(tiny_serve):
    return OpenAI(api_key=KEY, base_url=tiny_serve.base_url + "/v1", max_retries=0, timeout=180)


def _file(name: str, data: bytes):
    return (name, data, "image/png")


def test_openai_client_edit_one_image(client, tiny_serve):
    raw = client.images.with_raw_response.edit(
        model="qwen-image-edit",
        image=_file("photo.png", png_bytes(96, 64)),
        prompt="make the red square blue",
        quality="low",
        size="64x48",
        output_format="png",
    )
    resp = raw.parse()
    assert resp.size == "64x48" and resp.quality == "low" and resp.output_format == "png"
    assert resp.usage.output_tokens == 4 * 3 and resp.usage.total_tokens == 12
    assert len(resp.data) == 1 and resp.data[0].url is None and resp.data[0].revised_prompt is None
    picture = decode_b64(resp.data[0].b64_json)
    assert picture.format == "PNG" and picture.size == (64, 48)
    # Pictures sent inline are not kept on the server.
    job_id = raw.headers["x-retouch-job-id"]
    assert not (tiny_serve.data_dir / "results" / job_id).exists()


def test_openai_client_edit_several_images_as_urls(client, tiny_serve):
    resp = client.images.edit(
        image=[
            _file("person.png", png_bytes(96, 64)),
            _file("product.png", png_bytes(48, 48, (20, 200, 20))),
        ],
        prompt="dress the person in the product from image 2",
        response_format="url",
        output_format="webp",
    )
    url = resp.data[0].url
    assert url.startswith(tiny_serve.base_url + "/files/results/") and resp.data[0].b64_json is None
    got = httpx.get(url, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(got.content)).size == (96, 64)  # size auto = the first image's


def test_openai_client_edit_with_a_mask_keeps_the_opaque_area(client):
    photo = make_photo(96, 64)
    resp = client.images.edit(
        image=_file("photo.png", encode(photo)),
        mask=_file("mask.png", rgba_mask(96, 64, (0, 0, 40, 64))),  # edit the left part
        prompt="replace the left part with a wall",
        quality="low",
    )
    edited = np.asarray(decode_b64(resp.data[0].b64_json).convert("RGB"), dtype=np.int16)
    original = np.asarray(photo, dtype=np.int16)
    # Beyond the mask and its feathered edge the picture is the input, pixel for pixel (PNG).
    assert np.array_equal(edited[:, 56:], original[:, 56:])
    assert np.abs(edited[:, :32] - original[:, :32]).mean() > 5


def test_openai_client_n2_and_prompt_enhancement(client):
    resp = client.images.edit(
        model="qwen-image-edit-pe",
        image=_file("photo.png", png_bytes(64, 48)),
        prompt="make it brighter",
        n=2,
        quality="low",
    )
    assert len(resp.data) == 2
    first, second = (decode_b64(d.b64_json) for d in resp.data)
    assert first.size == second.size == (64, 48) and first.tobytes() != second.tobytes()
    revised = {d.revised_prompt for d in resp.data}
    assert len(revised) == 1 and None not in revised  # one rewrite for the request
    assert resp.usage.output_tokens == 2 * 4 * 3


def test_openai_client_streams_partial_images(client, tiny_serve):
    stream = client.images.edit(
        image=_file("photo.png", png_bytes(96, 64)),
        prompt="make the red square blue",
        quality="low",  # Lightning 4: previews after steps 1 and 3
        stream=True,
        partial_images=2,
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    partials, done = events[:2], events[2]
    assert [e.partial_image_index for e in partials] == [0, 1]
    for e in partials:
        assert e.size == "48x32" and decode_b64(e.b64_json).size == (48, 32)
    assert done.size == "96x64" and decode_b64(done.b64_json).size == (96, 64)
    assert done.output_format == "png" and done.usage.output_tokens == 6 * 4
    assert not any((tiny_serve.data_dir / "previews").glob("*"))  # preview files go once streamed


def test_openai_client_errors_raise_the_clients_exceptions(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.images.edit(model="dall-e-2", image=_file("p.png", png_bytes()), prompt="x")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=_file("p.png", png_bytes()), prompt="x", size="4000x4000")
    assert info.value.param == "size" and "2048" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(image=_file("p.png", b"not a picture"), prompt="x")
    assert info.value.code == "invalid_image"
    models = [m.id for m in client.models.list()]
    assert models == [
        "qwen-image-edit",
        "qwen-image-edit-pe",
        "qwen-image-edit-2511",
        "qwen-image-edit-2511-pe",
        "qwen-image-edit-2509",
        "qwen-image-edit-2509-pe",
        "qwen-image-2.1",
        "qwen-image-2.1-pe",
    ]


def test_openai_client_chooses_the_model_per_request(client, tiny_serve):
    """Each model by name: the one this pod loads runs (the record names it); one no live pod
    loads is a clear 400 naming what is loaded, and /v1/models says what each name is."""
    card = client.models.retrieve("qwen-image-edit-2509")
    extra = card.model_extra or {}
    assert extra["model"] == "qwen-image-edit-2509-tiny" and extra["license"] == "Apache-2.0"
    assert extra["max_input_images"] == 3
    raw = client.images.with_raw_response.edit(
        model="qwen-image-edit-2511", image=_file("p.png", png_bytes(96, 64)), prompt="x", quality="low"
    )
    job_id = raw.headers["x-retouch-job-id"]
    from server.store import SQLiteStore

    record = SQLiteStore(tiny_serve.data_dir / "retouch.sqlite3").get_job(job_id)
    assert record.job.params.model == "qwen-image-edit-tiny" and record.meta.model == "qwen-image-edit-tiny"
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="qwen-image-edit-2509", image=_file("p.png", png_bytes()), prompt="x")
    assert info.value.param == "model" and "qwen-image-edit-2509-tiny" in info.value.message
    assert "loaded: qwen-image-edit-tiny" in info.value.message


def test_ig1_json_example_from_the_seed(tiny_serve):
    """IG1's documented request, byte for byte except the picture and the key."""
    iguana = encode(make_photo(256, 144), "PNG")
    body = (
        '{"model": "qwen-image-edit", "images": [{"image_url": "data:image/png;base64,'
        + base64.b64encode(iguana).decode()
        + '"}], "prompt": "Replace the iguana with a snake, keep the same neon theme and background.",'
        ' "quality": "low", "size": "1280x720", "output_format": "png"}'
    )
    r = httpx.post(
        tiny_serve.base_url + "/v1/images/edits",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        content=body,
        timeout=180,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) >= {"created", "data", "usage", "output_format", "quality", "size"}
    assert out["output_format"] == "png" and out["quality"] == "low" and out["size"] == "1280x720"
    assert set(out["usage"]) == {"total_tokens", "input_tokens", "output_tokens", "input_tokens_details"}
    assert set(out["usage"]["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    assert out["usage"]["output_tokens"] == 80 * 45
    assert list(out["data"][0]) == ["b64_json"]
    assert decode_b64(out["data"][0]["b64_json"]).size == (1280, 720)
    assert abs(out["created"] - time.time()) < 300


# --------------------------------------------------------------------------------------------
# The weights.yaml tables this contract reads
# --------------------------------------------------------------------------------------------
