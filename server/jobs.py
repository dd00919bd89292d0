"""The one internal job type every contract translates into, and the record the store keeps.

``EditJob`` holds the engine parameters plus references to input files already stored in the
data dir (never the bytes), so queue rows stay small. It is validated once, before queueing.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.spec import EditParams, EditSpec, ReferenceImage


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
    """The queued job: its ``EditParams`` (the one parameter type, validated once at the API) and
    references to its pictures, already stored under the data dir."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: EditParams
    images: list[InputRef] = Field(min_length=1)
    references: list[InputRef] = Field(default_factory=list)
    mask: InputRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_rows(cls, data):
        # Rows queued before params had a type of their own held the knobs beside the pictures.
        if isinstance(data, dict) and "params" not in data:
            pictures = {k: data[k] for k in ("images", "references", "mask") if k in data}
            return {**pictures, "params": {k: v for k, v in data.items() if k not in pictures}}
        return data

    def kind(self) -> str:
        """Jobs of one kind take about as long as each other; ETAs are averaged per kind."""
        p = self.params
        speed = f"lightning{p.lightning_steps}" if p.lightning_steps else "full"
        refine = "+refine" if p.refine_strength > 0 or p.resolution in ("2k", "4k") else ""
        return f"edit/{speed}{refine}/x{p.num_images}"

    def prompt_hash(self) -> str:
        return hashlib.sha256(self.params.prompt.encode()).hexdigest()

    def to_spec(self, data_dir: Path, *, preloaded: dict[str, bytes] | None = None) -> EditSpec:
        """The engine's view of the job: the params plus the pictures read from the data dir
        (``preloaded``: relative path -> bytes not written yet)."""

        def read(ref: InputRef) -> bytes:
            if preloaded and ref.path in preloaded:
                return preloaded[ref.path]
            return (data_dir / ref.path).read_bytes()

        return self.params.with_pictures(
            [read(r) for r in self.images],
            [ReferenceImage(read(r), r.description) for r in self.references],
            read(self.mask) if self.mask else None,
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
