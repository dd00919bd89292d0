"""weights.yaml: which models exist, where their files are, and the limits jobs must respect.

Nothing is ever inferred from a model's name: roles, pipelines, LoRAs and presets are all
declared here. Relative paths resolve against ``root`` (itself relative to the YAML file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RegistryError
from .memory_settings import MemorySettings

Role = Literal["edit", "edit_plus", "inpaint", "refiner"]
PipelineKind = Literal["qwen_image_edit_plus", "z_image_img2img"]
DType = Literal["bfloat16", "float16", "float32"]

# What a diffusers folder must hold, per pipeline kind, for loading to succeed offline.
REQUIRED_SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "qwen_image_edit_plus": ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"),
    "z_image_img2img": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraEntry(_Strict):
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


class Performance(_Strict):
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


class License(_Strict):
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


class ModelEntry(_Strict):
    roles: list[Role]
    pipeline: PipelineKind
    path: str
    hub_id: str
    revision: str
    dtype: DType = "bfloat16"
    device: str = "cuda"
    default_steps: int = Field(ge=1, le=100)
    default_guidance: float = Field(ge=0, le=20)
    # The Plus pipeline resizes condition images to these areas (VAE and vision encoder).
    vae_condition_pixels: int = Field(default=1024 * 1024, ge=64 * 64)
    vl_condition_pixels: int = Field(default=384 * 384, ge=56 * 56)
    loras: dict[str, LoraEntry] = Field(default_factory=dict)
    # Larger outputs are decoded (and refined) in VAE tiles.
    vae_tiling_above_pixels: int = Field(default=2048 * 2048, ge=1)
    performance: Performance = Field(default_factory=Performance)
    # None: not stated, which serves as if it were not permissive (accept_license needed)
    license: License | None = None
    # the operator has read a non-permissive licence and accepts its terms for this deployment
    accept_license: bool = False


class ModePreset(_Strict):
    prompt_template: str | None = None  # "{prompt}" is replaced by the user's instruction
    lora: str | None = None
    negative_prompt: str | None = None

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and "{prompt}" not in v:
            raise ValueError(f"prompt_template must contain '{{prompt}}', got {v!r}")
        return v


class QualityPreset(_Strict):
    """What one OpenAI/IG1 ``quality`` value runs: a Lightning LoRA, or the full model for ``steps``."""

    lightning_steps: int | None = Field(default=None, ge=1, le=100)
    # full model only; unset = the model's default_steps
    steps: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> QualityPreset:
        if self.lightning_steps is not None and self.steps is not None:
            raise ValueError("set lightning_steps (distilled) or steps (full model), not both")
        return self


class PublicModel(_Strict):
    """A name clients send as ``model`` (OpenAI/IG1 contract), served by a declared edit model."""

    model: str
    # rewrite the instruction with the edit model's own vision-language encoder first
    enhance_prompt: bool = False


class Limits(_Strict):
    max_input_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_job: int = Field(default=3, ge=1)
    max_references: int = Field(default=5, ge=0)
    max_output_side: int = Field(default=2048, ge=16)
    max_num_images: int = Field(default=4, ge=1)
    max_prompt_chars: int = Field(default=4000, ge=1)
    job_timeout_s: float = Field(default=600, gt=0)


class Resolutions(_Strict):
    """Output pixel area per preset. 2k/4k edit at 1k and let the refiner add detail."""

    k1: int = Field(default=1024 * 1024, alias="1k")
    k2: int = Field(default=2048 * 2048, alias="2k")
    k4: int = Field(default=4096 * 4096, alias="4k")
    upscale_refine_strength: float = Field(default=0.3, ge=0, le=1)

    def area(self, preset: str) -> int:
        return {"1k": self.k1, "2k": self.k2, "4k": self.k4}[preset]


class Registry(_Strict):
    version: Literal[1] = 1
    root: str = "."
    models: dict[str, ModelEntry]
    schedulers: dict[str, dict] = Field(default_factory=dict)
    modes: dict[str, ModePreset] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    resolutions: Resolutions = Field(default_factory=Resolutions)
    qualities: dict[str, QualityPreset] = Field(default_factory=dict)
    public_models: dict[str, PublicModel] = Field(default_factory=dict)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    # Random-weight demo models (`retouch weights tiny`): pictures are noise. Shown on /readyz,
    # in the log and in the playground so nobody mistakes the demo for the product.
    demo: bool = False
    # where this file was read from; set by load_registry, used to resolve relative paths
    source: str | None = None

    @model_validator(mode="after")
    def _cross_check(self) -> Registry:
        for name, model in self.models.items():
            for lora_name, lora in model.loras.items():
                if lora.scheduler is not None and lora.scheduler not in self.schedulers:
                    raise ValueError(
                        f"models.{name}.loras.{lora_name}.scheduler: {lora.scheduler!r} is not in "
                        f"schedulers (have {sorted(self.schedulers)})"
                    )
        for role in ("edit", "edit_plus", "refiner"):
            holders = [n for n, m in self.models.items() if role in m.roles]
            if len(holders) > 1:
                raise ValueError(f"role {role!r} is declared by several models: {holders}")
        edit_loras = {n for m in self.models.values() if "edit_plus" in m.roles for n in m.loras}
        for model_name, model in self.models.items():
            fused = model.performance.fuse_lora
            if fused is not None and fused not in model.loras:
                raise ValueError(
                    f"models.{model_name}.performance.fuse_lora: {fused!r} is not one of its loras"
                )
        for mode_name, mode in self.modes.items():
            if mode.lora is not None and mode.lora not in edit_loras:
                raise ValueError(f"modes.{mode_name}.lora: {mode.lora!r} is not a LoRA of the edit model")
        for name, quality in self.qualities.items():
            if quality.lightning_steps is not None and self.lightning_lora(quality.lightning_steps) is None:
                raise ValueError(
                    f"qualities.{name}.lightning_steps: no Lightning LoRA of the edit model runs "
                    f"{quality.lightning_steps} steps"
                )
        for key in self.memory.overrides:
            if key.rpartition(".")[0] not in self.models:
                have = sorted(self.models)
                raise ValueError(f"memory.overrides: {key!r} names no declared model (have {have})")
        for name, public in self.public_models.items():
            target = self.models.get(public.model)
            if target is None or not {"edit", "edit_plus"} & set(target.roles):
                raise ValueError(f"public_models.{name}.model: {public.model!r} is not a declared edit model")
        return self

    # -- lookups -------------------------------------------------------------------------
    def model_for(self, role: str) -> tuple[str, ModelEntry] | None:
        for name, model in self.models.items():
            if role in model.roles:
                return name, model
        return None

    def base_dir(self) -> Path:
        here = Path(self.source).parent if self.source else Path.cwd()
        return (here / self.root).resolve()

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir() / p

    def lightning_lora(self, steps: int) -> str | None:
        """The LoRA of the edit model declared for ``steps`` distilled steps."""
        found = self.model_for("edit_plus") or self.model_for("edit")
        if found is None:
            return None
        for lora_name, lora in found[1].loras.items():
            if lora.steps == steps and lora.scheduler is not None:
                return lora_name
        return None

    def unaccepted_licenses(self) -> list[str]:
        """One line per model whose licence is not a permissive open one and was not accepted."""
        refused = []
        for name, model in self.models.items():
            if model.accept_license or (model.license is not None and model.license.permissive):
                continue
            what = model.license.describe() if model.license else "no licence stated"
            refused.append(
                f"models.{name}: {what} is not a permissive open licence; read it and set "
                f"models.{name}.accept_license: true to serve this model"
            )
        return refused

    def missing_files(self) -> list[str]:
        """Human-readable list of declared files/folders that are not on disk."""
        missing: list[str] = []
        for name, model in self.models.items():
            folder = self.resolve(model.path)
            if not folder.is_dir():
                missing.append(f"{name}: folder {folder} does not exist")
            else:
                if not (folder / "model_index.json").is_file():
                    missing.append(f"{name}: {folder / 'model_index.json'} is missing")
                for sub in REQUIRED_SUBFOLDERS[model.pipeline]:
                    if not (folder / sub).is_dir():
                        missing.append(f"{name}: subfolder {folder / sub} is missing")
            for lora_name, lora in model.loras.items():
                file = self.resolve(lora.path)
                if not file.is_file():
                    missing.append(f"{name}.loras.{lora_name}: file {file} is missing")
        return missing


def load_registry(path: str | Path) -> Registry:
    """Read and validate weights.yaml. Errors name the file, the key and the bad value."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise RegistryError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw["source"] = str(path.resolve())
    try:
        return Registry.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            bad = err.get("input")
            shown = repr(bad) if not isinstance(bad, dict) else "{...}"
            problems.append(f"{key}: {err['msg']} (got {shown})")
        raise RegistryError(f"{path}: invalid weights registry:\n  " + "\n  ".join(problems)) from e


def require_files(registry: Registry) -> None:
    missing = registry.missing_files()
    if missing:
        raise RegistryError(
            f"weights declared in {registry.source} are not on disk:\n  "
            + "\n  ".join(missing)
            + "\nFetch them with `retouch weights pull` on a connected machine, or build a CPU demo"
            " set with `retouch weights tiny DIR` and pass --weights DIR/weights.yaml."
        )
