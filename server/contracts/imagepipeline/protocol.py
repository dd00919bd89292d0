"""Request and response bodies of the imagepipeline.io contract, as its official client sends/reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...jobs import WebhookState

OutputFormat = Literal["webp", "jpeg", "png"]


class EditRequest(BaseModel):
    # Unknown fields are refused by name rather than ignored: a typo must not silently do nothing.
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    input_image: str | list[str] | None = None
    mode: str | None = None
    width: int | None = Field(default=None, ge=1, le=2048)
    height: int | None = Field(default=None, ge=1, le=2048)
    seed: int = Field(default=-1, ge=-1, le=2**32 - 1)
    output_format: OutputFormat = "webp"
    num_inference_steps: int | None = Field(default=None, ge=1, le=100)
    guidance_scale: float | None = Field(default=None, ge=0, le=20)
    refine_strength: float | None = Field(default=None, ge=0, le=1)
    faster_inference: bool = True
    cfg_norm_strength: float | None = Field(default=None, ge=0, le=1)
    product_saturation: float | None = Field(default=None, ge=0, le=2)
    tone_correction: float | None = Field(default=None, ge=0, le=1)
    has_text: bool | None = None
    has_product: bool | None = None
    palette: list[str] | None = None
    negative_prompt: str | None = None
    mask_segment: str | None = None
    # Retouch extension (the hosted API only has mask_segment): URL of a mask picture the size of
    # the first input, white = edit, black = keep. The web playground sends the mask painted on it.
    mask_image: str | None = None
    mask_feather_px: int | None = Field(default=None, ge=0, le=64)
    profile_id: str | None = None
    callback_url: str | None = None
    server_id: str | None = None
    # Retouch extension: which edit model runs the job (a /v1/models name); unset = the default.
    model: str | None = None


class SubmitResponse(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    estimated_time_seconds: int


class ProgressDetail(BaseModel):
    stage: str
    step: int
    total: int


class StatusResponse(BaseModel):
    job_id: str
    status: Literal["queued", "pending", "processing", "completed", "failed", "cancelled"]
    progress: int
    progress_detail: ProgressDetail | None = None
    result_url: str | None = None
    result_urls: list[str] = Field(default_factory=list)
    result_mime_type: str | None = None
    error: str | None = None
    failure_reason_code: str | None = None
    retryable: bool | None = None
    warnings: list[str] = Field(default_factory=list)
    queue_position: int | None = None
    queue_wait_seconds: float
    inference_time_seconds: float | None = None
    processing_time_seconds: float | None = None
    total_elapsed_seconds: float
    estimated_time_seconds: int | None = None
    prompt_hash: str
    seed: int | None = None
    cost_usd: float | None = None
    balance_remaining_usd: float | None = None
    server_id: str
    # Retouch extension: how the callback_url delivery went (pending, delivered, failed).
    webhook: WebhookState | None = None


class UploadResponse(BaseModel):
    url: str
    filename: str
    content_type: str
    size_bytes: int


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    prompt_template: str | None = Field(default=None, max_length=4000)
    prompt_template_mode: Literal["suffix", "prefix"] = "suffix"
    negative_prompt: str | None = None
    cfg_scale: float | None = Field(default=None, ge=0, le=20)
    steps: int | None = Field(default=None, ge=1, le=100)
    width: int | None = Field(default=None, ge=1, le=2048)
    height: int | None = Field(default=None, ge=1, le=2048)
    output_format: OutputFormat | None = None
    seed_strategy: Literal["random", "fixed", "user"] = "random"
    fixed_seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class ProfileResponse(ProfileRequest):
    model_config = ConfigDict(extra="ignore")

    profile_id: str
    created_at: float


class ProfileList(BaseModel):
    profiles: list[ProfileResponse]
    total: int


class ImagePipelineErrorBody(BaseModel):
    error: str
    error_code: str
    message: str
    field: str | None = None
