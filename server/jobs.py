"""The one internal job type every contract translates into, and the record the store keeps.

``EditJob`` holds the engine parameters plus references to input files already stored in the
data dir (never the bytes), so queue rows stay small. It is validated once, before queueing.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.spec import EditSpec, ReferenceImage


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class InputRef(BaseModel):
    """A picture stored under the data dir; ``path`` is relative to it."""

    path: str
    description: str | None = None


class EditJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    images: list[InputRef] = Field(min_length=1)
    references: list[InputRef] = Field(default_factory=list)
    mask: InputRef | None = None
    negative_prompt: str | None = None
    mask_feather_px: int = 8
    lightning_steps: int | None = 8
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    cfg_norm_strength: float = 1.0
    refine_strength: float = 0.0
    resolution: Literal["1k", "2k", "4k"] | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    num_images: int = 1
    seed: int = -1
    output_format: Literal["webp", "jpeg", "png"] = "webp"
    output_quality: int = 90
    product_saturation: float | None = None
    tone_correction: float = 0.0
    palette: list[str] = Field(default_factory=list)
    has_text: bool = False
    has_product: bool = False
    mode: str | None = None
    enhance_prompt: bool = False
    # previews per picture the worker writes under previews/{job_id}/ (streamed by the OpenAI contract)
    partial_images: int = Field(default=0, ge=0, le=3)

    def kind(self) -> str:
        """Jobs of one kind take about as long as each other; ETAs are averaged per kind."""
        speed = f"lightning{self.lightning_steps}" if self.lightning_steps else "full"
        refine = "+refine" if self.refine_strength > 0 or self.resolution in ("2k", "4k") else ""
        return f"edit/{speed}{refine}/x{self.num_images}"

    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()

    def to_spec(
        self,
        data_dir: Path,
        *,
        image_bytes: list[bytes] | None = None,
        preloaded: dict[str, bytes] | None = None,
    ) -> EditSpec:
        """The engine's view of the job; reads the input files unless their bytes are given
        (``preloaded``: relative path -> bytes, for references and masks not yet written)."""

        def read(ref: InputRef) -> bytes:
            if preloaded and ref.path in preloaded:
                return preloaded[ref.path]
            return (data_dir / ref.path).read_bytes()

        fields = self.model_dump(exclude={"images", "references", "mask"})
        return EditSpec(
            images=image_bytes if image_bytes is not None else [read(r) for r in self.images],
            references=[ReferenceImage(read(r), r.description) for r in self.references],
            mask=read(self.mask) if self.mask else None,
            **fields,
        )


class JobMeta(BaseModel):
    """Who sent the job and what to do when it ends; not part of the engine's work."""

    contract: str
    owner: str  # hash of the API key, never the key itself
    callback_url: str | None = None
    profile_id: str | None = None
    warnings: list[str] = Field(default_factory=list)
    # Routing (scale-out): the pod this job is pinned to, and the registry model that runs it.
    server_id: str | None = None
    model: str | None = None
    # Results are handed out inline once (FASHN return_base64) and then deleted from disk.
    inline_results: bool = False
    # Request options a contract keeps with the job to show back (e.g. Depicta strictness, model).
    options: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    # Units of work (pipelines/cost_model.py), set at admission: what ETAs and the reserved cost
    # are estimated from, and, once the job completes, a calibration sample (server/eta.py).
    work: dict[str, float] = Field(default_factory=dict)


class ResultFile(BaseModel):
    path: str  # relative to the data dir
    mime_type: str
    format: str
    width: int
    height: int
    sha256: str
    seed: int
    # the rewritten instruction the picture was made with (EditJob.enhance_prompt)
    revised_prompt: str | None = None


# Share of the whole job each stage covers, so one progress number rises monotonically.
_STAGE_SPANS = {
    "encode": (0, 5),
    "denoise": (5, 85),
    "refine": (85, 95),
    "decode": (85, 95),
    "postprocess": (95, 100),
}


class Progress(BaseModel):
    stage: str
    step: int
    total: int

    def percent(self) -> int:
        lo, hi = _STAGE_SPANS.get(self.stage, (0, 100))
        frac = self.step / self.total if self.total else 0.0
        return int(lo + (hi - lo) * min(max(frac, 0.0), 1.0))


class JobRecord(BaseModel):
    """A job as the store keeps it; contracts render this into their own status bodies."""

    id: str
    kind: str
    status: JobStatus
    job: EditJob
    meta: JobMeta
    created_at: float
    started_at: float | None = None  # first claim by a worker
    finished_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    progress: Progress | None = None
    results: list[ResultFile] = Field(default_factory=list)
    seed: int | None = None
    inference_seconds: float | None = None
    # what the job was charged, at the price in force when it ended (None: nothing was charged)
    cost_usd: float | None = None
    warnings: list[str] = Field(default_factory=list)
    failure_reason_code: str | None = None
    error: str | None = None
    retryable: bool | None = None
    queue_position: int | None = None  # filled in on read for queued jobs
    estimated_seconds: float | None = None  # filled in on read for unfinished jobs
    ran_on: str | None = None  # server_id of the pod whose worker took the job last (Redis store)

    @property
    def prompt_hash(self) -> str:
        return self.job.prompt_hash()

    def queue_wait_seconds(self, now: float) -> float:
        return (self.started_at or (self.finished_at or now)) - self.created_at

    def total_seconds(self, now: float) -> float:
        return (self.finished_at or now) - self.created_at


class WebhookState(BaseModel):
    """Where the webhook of a job stands: a Retouch extension field of the status bodies."""

    state: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_error: str | None = None
