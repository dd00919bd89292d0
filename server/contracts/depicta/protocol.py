"""Request and response bodies of the Depicta contract, as the official ``depicta`` CLI (1.3.0)
sends and reads them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Format = Literal["png", "jpeg", "webp"]


class ReferenceImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="URL of the reference image (e.g. from POST /v1/upload)")
    description: str | None = Field(default=None, max_length=1000, description="What this image shows")


class EditRequest(BaseModel):
    # Unknown fields are refused by name rather than ignored: a typo must not silently do nothing.
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="The edit to make")
    input_image_url: str = Field(min_length=1, description="The image to edit (e.g. from POST /v1/upload)")
    model: str | None = Field(default=None, description="Model name; omit for the server's default")
    aspect_ratio: str | None = Field(default=None, description="e.g. 16:9")
    image_size: Literal["1K", "2K", "4K"] | None = None
    strictness: Literal["normal", "liberal"] | None = Field(
        default=None, description="Recorded with the job; no moderation model is configured"
    )
    reference_images: list[ReferenceImage] = Field(default_factory=list, max_length=5)

    @field_validator("image_size", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value


class FormatVariant(BaseModel):
    url: str = Field(description="Signed URL; expires in 1 hour")
    format: Format
    size_bytes: int
    hash: str = Field(description="SHA-256 of the file at url")
    expires_at: str = Field(description="ISO 8601")


class GenerationResponse(BaseModel):
    id: str
    ai_generated: Literal[True] = True
    formats: dict[Format, FormatVariant]
    image_url: str = Field(description="Signed URL of the PNG; expires in 1 hour")
    image_hash: str = Field(description="SHA-256 of the PNG")
    expires_at: str
    model: str
    cost_eur: str
    # Omitted for keys without a budget: the CLI reads a present balance as a number.
    balance_eur: str | None = None
    warnings: list[str] = Field(default_factory=list)


class DepictaUploadResponse(BaseModel):
    upload_url: str
    filename: str
    content_type: str
    size_bytes: int
    expires_at: str


class DepictaErrorBody(BaseModel):
    error: str
    message: str
    details: dict[str, str] | None = None


class JobSummary(BaseModel):
    job_id: str
    status: Literal["queued", "processing", "completed", "failed", "cancelled"]
    operation: Literal["edit_image"] = "edit_image"
    model: str | None = None
    strictness: str | None = None
    created_at: str
    completed_at: str | None = None
    image_url: str | None = None
    error: DepictaErrorBody | None = None


class JobList(BaseModel):
    generations: list[JobSummary]


class JobDetail(JobSummary):
    """A job; once completed it also carries the generation body, at the top level (where the
    CLI's lost-response recovery reads ``formats``/``image_url``) and as ``result``."""

    formats: dict[Format, FormatVariant] | None = None
    image_hash: str | None = None
    cost_eur: str | None = None
    balance_eur: str | None = None
    ai_generated: bool | None = None
    result: GenerationResponse | None = None
