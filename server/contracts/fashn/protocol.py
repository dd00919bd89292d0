"""Request and response bodies of the FASHN contract (``/v1/run`` model ``edit``), as the official
``fashn`` client (0.9.0) sends and parses them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ...jobs import WebhookState

MODEL_NAMES = ("edit",)

AspectRatio = Literal["21:9", "1:1", "4:3", "3:2", "2:3", "5:4", "4:5", "3:4", "16:9", "9:16"]
PredictionStatus = Literal[
    "starting", "in_queue", "processing", "completed", "failed", "canceled", "time_out"
]
ErrorName = Literal[
    "ImageLoadError",
    "ContentModerationError",
    "InputValidationError",
    "PipelineError",
    "InternalServerError",
]


class EditInputs(BaseModel):
    # Unknown inputs are refused by name rather than ignored: a typo must not silently do nothing.
    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="Source image: http(s) URL or data:image/...;base64, URL")
    prompt: str = Field(min_length=1, description="Edit instructions")
    mask: str | None = Field(
        default=None, description="White = edit, black = keep; same size as image (a strong hint)"
    )
    image_context: str | None = Field(default=None, description="Reference image that guides the edit")
    aspect_ratio: AspectRatio | None = None
    generation_mode: Literal["fast", "balanced", "quality"] = Field(
        default="balanced",
        description="fast = Lightning 4 steps, balanced = Lightning 8, quality = full model",
    )
    resolution: Literal["1k", "2k", "4k"] = "1k"
    num_images: int = Field(default=1, ge=1, le=4)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    output_format: Literal["png", "jpeg"] = "png"
    return_base64: bool = Field(
        default=False, description="Outputs as data URLs; the server keeps no copy once they are delivered"
    )


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Declared first so that, for another FASHN model, this is the error reported (not its inputs).
    model_name: str = Field(description="Only 'edit' is served by Retouch")
    inputs: EditInputs
    webhook_url: str | None = None

    @field_validator("model_name")
    @classmethod
    def _served(cls, value: str) -> str:
        if value not in MODEL_NAMES:
            raise PydanticCustomError(
                "unknown_model",
                "'{name}' is not served by this server; available: {available}",
                {"name": value, "available": ", ".join(MODEL_NAMES)},
            )
        return value


class RunResponse(BaseModel):
    id: str
    error: str | None = None


class PredictionError(BaseModel):
    name: ErrorName
    message: str


class FashnStatusResponse(BaseModel):
    id: str
    status: PredictionStatus
    output: list[str] | None = None
    error: PredictionError | None = None
    # Retouch extension: how the webhook_url delivery went (pending, delivered, failed).
    webhook: WebhookState | None = None


class FashnErrorBody(BaseModel):
    error: str
    message: str
