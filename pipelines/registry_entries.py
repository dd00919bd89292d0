"""The entries of weights.yaml (pipelines/registry.py): a model, its LoRAs, speed settings and
licence, presets, limits. Each is strict (unknown keys are errors) and frozen."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["edit", "edit_plus", "inpaint", "refiner"]
PipelineKind = Literal["qwen_image_edit_plus", "qwen_image_21", "z_image_img2img"]
DType = Literal["bfloat16", "float16", "float32"]

# What a diffusers folder must hold, per pipeline kind, for loading to succeed offline.
REQUIRED_SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "qwen_image_edit_plus": ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"),
    "qwen_image_21": ("transformer", "vae", "text_encoder", "processor", "scheduler"),
    "z_image_img2img": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraEntry(Strict):
    path: str
    hub_id: str | None = None
    revision: str | None = None
    # Distilled LoRAs (Lightning) fix the number of steps and want no CFG.
    steps: int | None = Field(default=None, ge=1, le=100)
    guidance: float | None = Field(default=None, ge=0, le=20)
    # name of an entry in the top-level ``schedulers`` table
    scheduler: str | None = None
    weight: float = 1.0
    # the LoRA's rank, for `retouch plan` before the file is downloaded (default: memory_sizes)
    rank: int | None = Field(default=None, ge=1, le=4096)


class Performance(Strict):
    """Speed settings of one model, applied once at load; each is measured on and off in benchmarks/."""

    # a diffusers attention backend ("native", "flash", "_flash_3", "_native_cudnn", "sage", ...);
    # null = diffusers' default (PyTorch SDPA, which picks flash/cuDNN itself on a GPU)
    attention_backend: str | None = None
    # "regional" compiles the repeated transformer block once (fast start, dynamic shapes)
    compile: Literal["off", "regional"] = "off"
    # output sizes (width, height) run once at start, Lightning on and off, so no job pays a compile
    warmup_sizes: list[tuple[int, int]] = Field(default_factory=list)
    # "fp8": torchao float8 linear layers in the transformer (CUDA, compute capability >= 8.9)
    quantize: Literal["none", "fp8"] = "none"
    # the LoRA fused into the bf16 weights before quantising: an FP8 base with an unfused LoRA shows
    # grid artifacts, so the model then serves only jobs that use exactly this LoRA
    fuse_lora: str | None = None
    # text-encoder outputs kept per (prompt, condition pictures): repeated prompts and num_images > 1
    # skip the vision-language model
    prompt_cache_size: int = Field(default=0, ge=0, le=4096)
    # keep the text encoder in CPU memory; it visits the GPU only to encode (prompt-cache misses).
    # Frees ~16.6 GB (Qwen2.5-VL-7B) or ~8 GB (Qwen3-4B, refiner) so both models stay resident.
    offload_text_encoder: bool = False
    # Qwen-Image 2.1: keys and values of the text and condition pictures computed once per job
    # (exact: its causal_condition makes them independent of the step)
    kv_cache: bool = True

    @field_validator("attention_backend")
    @classmethod
    def _offline_backend(cls, v: str | None) -> str | None:
        if v is not None and v.endswith("_hub"):
            raise ValueError(f"attention_backend {v!r} downloads kernels from the hub; Retouch runs offline")
        return v

    @model_validator(mode="after")
    def _fuse_needs_quantize(self) -> Performance:
        if self.fuse_lora is not None and self.quantize == "none":
            raise ValueError("fuse_lora is only for quantize: fp8 (the bf16 path switches adapters per job)")
        return self


# Open licences under which serving a model needs no one's acceptance (SPDX ids).
PERMISSIVE_LICENSES = frozenset({"Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "CC0-1.0"})


class License(Strict):
    """A model's licence: an SPDX id, or a name and the URL of its text (research licences)."""

    id: str | None = None
    name: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _named(self) -> License:
        if not self.id and not (self.name and self.url):
            raise ValueError("give an SPDX id, or a name and the URL of the licence text")
        return self

    @property
    def permissive(self) -> bool:
        return self.id in PERMISSIVE_LICENSES

    def describe(self) -> str:
        return self.id if self.id and not self.name else f"{self.name or self.id} ({self.url or self.id})"


class ModelEntry(Strict):
    roles: list[Role]
    pipeline: PipelineKind
    path: str
    hub_id: str
    revision: str
    dtype: DType = "bfloat16"
    device: str = "cuda"
    default_steps: int = Field(ge=1, le=100)
    default_guidance: float = Field(ge=0, le=20)
    # what a job that sets no cfg_norm_strength gets: 1 = the stock Qwen-Image-Edit rescale,
    # 0 = plain CFG (Qwen-Image 2.1's)
    default_cfg_norm_strength: float = Field(default=1.0, ge=0, le=1)
    # The Plus pipeline resizes condition images to these areas (VAE and vision encoder);
    # Qwen-Image 2.1 reads one area for both, vae_condition_pixels (its native output area).
    vae_condition_pixels: int = Field(default=1024 * 1024, ge=64 * 64)
    vl_condition_pixels: int = Field(default=384 * 384, ge=56 * 56)
    # input pictures a job may give this model (default: limits.max_images_per_job), and the
    # pictures it reads at once, input and reference pictures together; a model that declares
    # max_pictures takes that many references in place of limits.max_references
    max_input_images: int | None = Field(default=None, ge=1, le=64)
    max_pictures: int | None = Field(default=None, ge=1, le=64)
    # the output area the model was trained for (clients see it on /v1/models); default the condition area
    native_pixels: int | None = Field(default=None, ge=64 * 64)
    loras: dict[str, LoraEntry] = Field(default_factory=dict)
    # Larger outputs are decoded (and refined) in VAE tiles.
    vae_tiling_above_pixels: int = Field(default=2048 * 2048, ge=1)
    performance: Performance = Field(default_factory=Performance)
    # None: not stated, which serves as if it were not permissive (accept_license needed)
    license: License | None = None
    # the operator has read a non-permissive licence and accepts its terms for this deployment
    accept_license: bool = False

    @model_validator(mode="after")
    def _knobs_of_its_pipeline(self) -> ModelEntry:
        """A setting the model's pipeline never reads is an error, not silently ignored."""
        if self.pipeline == "qwen_image_21" and "vl_condition_pixels" in self.model_fields_set:
            raise ValueError("vl_condition_pixels: Qwen-Image 2.1 reads one area, vae_condition_pixels")
        if self.pipeline != "qwen_image_21" and "kv_cache" in self.performance.model_fields_set:
            raise ValueError("performance.kv_cache is Qwen-Image 2.1's prefix cache; this pipeline has none")
        return self


class ModePreset(Strict):
    prompt_template: str | None = None  # "{prompt}" is replaced by the user's instruction
    lora: str | None = None
    negative_prompt: str | None = None

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and "{prompt}" not in v:
            raise ValueError(f"prompt_template must contain '{{prompt}}', got {v!r}")
        return v


class QualityPreset(Strict):
    """What one OpenAI/IG1 ``quality`` value runs: a Lightning LoRA, or the full model for ``steps``."""

    lightning_steps: int | None = Field(default=None, ge=1, le=100)
    # full model only; unset = the model's default_steps
    steps: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> QualityPreset:
        if self.lightning_steps is not None and self.steps is not None:
            raise ValueError("set lightning_steps (distilled) or steps (full model), not both")
        return self


class PublicModel(Strict):
    """A name clients send as ``model`` (OpenAI/IG1 contract), served by a declared edit model."""

    model: str
    # rewrite the instruction with the edit model's own vision-language encoder first
    enhance_prompt: bool = False


class Limits(Strict):
    max_input_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_job: int = Field(default=3, ge=1)
    max_references: int = Field(default=5, ge=0)
    max_output_side: int = Field(default=2048, ge=16)
    max_num_images: int = Field(default=4, ge=1)
    max_prompt_chars: int = Field(default=4000, ge=1)
    job_timeout_s: float = Field(default=600, gt=0)


class Resolutions(Strict):
    """Output pixel area per preset. 2k/4k edit at 1k and let the refiner add detail."""

    k1: int = Field(default=1024 * 1024, alias="1k")
    k2: int = Field(default=2048 * 2048, alias="2k")
    k4: int = Field(default=4096 * 4096, alias="4k")
    upscale_refine_strength: float = Field(default=0.3, ge=0, le=1)

    def area(self, preset: str) -> int:
        return {"1k": self.k1, "2k": self.k2, "4k": self.k4}[preset]
