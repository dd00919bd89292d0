"""Bodies of the OpenAI-compatible / IG1 contract, as the ``openai`` client and IG1's docs send/read.

JSON requests name pictures by URL (``images: [{image_url}]``, data: or http(s)); the ``openai``
client's ``images.edit`` sends the same fields as multipart form fields with ``image``/``image[]``
and ``mask`` files, which the router turns into data URLs before validating with these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OutputFormat = Literal["png", "jpeg", "webp"]


class ImageRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(default=None, description="data: URL (base64) or http(s) URL of a picture")
    file_id: str | None = Field(default=None, description="not supported: this server has no Files API")


class EditRequest(BaseModel):
    # Unknown fields are refused by name, as OpenAI does: a misspelt option must not silently do nothing.
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str = "qwen-image-edit"
    images: list[ImageRef] = Field(default_factory=list)
    mask: ImageRef | str | None = Field(
        default=None, description="PNG with alpha, same size as the first image: transparent = edit"
    )
    quality: str | None = Field(default=None, description="low, medium, standard, high, hd or auto")
    size: str | None = Field(default=None, description="WIDTHxHEIGHT or auto (the first image's size)")
    n: int = Field(default=1, ge=1, le=4)
    response_format: Literal["b64_json", "url"] | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    stream: bool = False
    partial_images: int | None = Field(default=None, ge=0, le=3)
    background: Literal["transparent", "opaque", "auto"] | None = None
    # Accepted for compatibility; they change nothing here.
    input_fidelity: Literal["high", "low"] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # Retouch extension: a fixed seed makes an edit repeatable (n > 1 uses seed, seed+1, ...).
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class InputTokensDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class Usage(BaseModel):
    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_tokens_details: InputTokensDetails


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    usage: Usage
    output_format: OutputFormat
    quality: str
    size: str
    background: Literal["opaque"] = "opaque"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "retouch"
    # Retouch extensions: what serves the name, under which licence, how many pictures it takes
    model: str | None = None
    license: str | None = None
    max_input_images: int | None = None
    # input and reference pictures together
    max_pictures: int | None = None
    native_pixels: int | None = None
    prompt_enhancing: bool | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: ErrorDetail
