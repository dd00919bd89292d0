"""What the engine is asked to do (``EditSpec``) and what it gives back (``EditResult``).

Both are plain dataclasses, independent of any HTTP contract: every contract translates its
request into ``EditParams``, and the worker adds the pictures to make the ``EditSpec``. Input
pictures travel as encoded bytes so that the engine, not the caller, decodes them safely (pixel
cap, EXIF orientation, mode conversion).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

OutputFormat = Literal["webp", "jpeg", "png"]
Resolution = Literal["1k", "2k", "4k"]

# on_progress(stage, step, total); stages: "encode", "denoise", "refine", "decode", "postprocess".
# A callback may raise (e.g. JobCancelledError) to stop the job between steps.
ProgressCallback = Callable[[str, int, int], None]
# on_preview(image_index, partial_index, preview): a cheap picture of the denoised estimate part-way
# through the denoise loop, asked for with EditSpec.partial_images; called in the engine's thread.
PreviewCallback = Callable[[int, int, "OutputImage"], None]


@dataclass
class ReferenceImage:
    image: bytes
    description: str | None = None


@dataclass(frozen=True, kw_only=True)
class EditParams:
    """Every knob of one edit, and nothing else: what a contract builds from its request, what the
    queue stores with the job (server/jobs.py) and, with the pictures, what the engine runs
    (``EditSpec``). One type, so a misspelt knob fails where it is written, not at run time.
    Bounds are checked by ``pipelines.validation.check_params`` (they depend on weights.yaml)."""

    prompt: str
    # the registry's edit model to run (weights.yaml models.<name>); None = its default_model
    model: str | None = None
    negative_prompt: str | None = None
    mask_feather_px: int = 8
    # None = full model; 4 or 8 = the Lightning LoRA with that many steps (a model without any
    # Lightning LoRA runs its full model instead, and the job's warnings say so)
    lightning_steps: int | None = 8
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    # 0 = plain CFG, 1 = the norm rescaling of the stock Qwen-Image-Edit pipelines, in between a
    # blend; None = the model's own (weights.yaml default_cfg_norm_strength)
    cfg_norm_strength: float | None = None
    refine_strength: float = 0.0
    resolution: Resolution | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None  # "16:9"
    num_images: int = 1
    seed: int = -1  # -1 = random; the seed used is reported
    output_format: OutputFormat = "webp"
    output_quality: int = 90
    product_saturation: float | None = None  # applied to images[1]
    tone_correction: float = 0.0
    palette: list[str] = field(default_factory=list)
    has_text: bool = False
    has_product: bool = False
    mode: str | None = None
    # rewrite the prompt with the edit model's vision-language encoder first (EditResult.revised_prompt)
    enhance_prompt: bool = False
    # previews per output picture at evenly spaced denoise steps, sent to run()'s on_preview
    partial_images: int = 0

    def with_pictures(
        self, images: list[bytes], references: list[ReferenceImage] = (), mask: bytes | None = None
    ) -> EditSpec:
        return EditSpec(
            **{f.name: getattr(self, f.name) for f in fields(EditParams)},
            images=list(images),
            references=list(references),
            mask=mask,
        )


@dataclass(frozen=True, kw_only=True)
class EditSpec(EditParams):
    """The params plus the pictures as encoded bytes."""

    images: list[bytes]
    references: list[ReferenceImage] = field(default_factory=list)
    # white = edit, black = keep; same size as images[0]
    mask: bytes | None = None

    @property
    def params(self) -> EditParams:
        return EditParams(**{f.name: getattr(self, f.name) for f in fields(EditParams)})


@dataclass
class OutputImage:
    data: bytes
    mime_type: str
    format: OutputFormat
    width: int
    height: int
    sha256: str
    seed: int


@dataclass
class EditResult:
    images: list[OutputImage]
    seed: int
    # seconds per stage: encode, denoise, refine, decode, postprocess, total
    timings: dict[str, float]
    # model/LoRA file hashes, scheduler settings, seed, library versions, effective parameters
    record: dict
    warnings: list[str] = field(default_factory=list)
    # the user instruction the edit ran with when EditSpec.enhance_prompt rewrote it
    revised_prompt: str | None = None
