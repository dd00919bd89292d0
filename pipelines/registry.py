"""weights.yaml: which models exist, where their files are, and the limits jobs must respect.

Nothing is ever inferred from a model's name: roles, pipelines, LoRAs and presets are all
declared here. Relative paths resolve against ``root`` (itself relative to the YAML file).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from .errors import RegistryError
from .memory_settings import MemorySettings
from .registry_entries import (  # noqa: F401 (re-exported: weights.yaml's types live here)
    PERMISSIVE_LICENSES,
    REQUIRED_SUBFOLDERS,
    DType,
    License,
    Limits,
    LoraEntry,
    ModelEntry,
    ModePreset,
    Performance,
    PipelineKind,
    PublicModel,
    QualityPreset,
    Resolutions,
    Role,
    Strict,
)

# The pipelines each role can run on: an edit model is a Qwen-Image-Edit Plus or a Qwen-Image 2.1
# pipeline, a refiner Z-Image.
EDIT_PIPELINES = frozenset({"qwen_image_edit_plus", "qwen_image_21"})
ROLE_PIPELINES = {
    "edit": EDIT_PIPELINES,
    "edit_plus": EDIT_PIPELINES,
    "inpaint": EDIT_PIPELINES,
    "refiner": frozenset({"z_image_img2img"}),
}


class Registry(Strict):
    version: Literal[1] = 1
    root: str = "."
    models: dict[str, ModelEntry]
    schedulers: dict[str, dict] = Field(default_factory=dict)
    modes: dict[str, ModePreset] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    resolutions: Resolutions = Field(default_factory=Resolutions)
    qualities: dict[str, QualityPreset] = Field(default_factory=dict)
    public_models: dict[str, PublicModel] = Field(default_factory=dict)
    # the edit model a job runs on when it names none, and the one a pod loads unless told another
    default_model: str | None = None
    memory: MemorySettings = Field(default_factory=MemorySettings)
    # a worker loads the edit model a job asks for when it has not (least recently used out;
    # memory.resident_edit_models at once); false: one edit model per pod, jobs route to its pod
    swap: bool = False
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
        for name, model in self.models.items():
            for role in model.roles:
                if model.pipeline not in ROLE_PIPELINES[role]:
                    need = " or ".join(repr(k) for k in sorted(ROLE_PIPELINES[role]))
                    raise ValueError(f"models.{name}: role {role!r} needs the pipeline {need}")
        refiners = [n for n, m in self.models.items() if "refiner" in m.roles]
        if len(refiners) > 1:
            raise ValueError(f"role 'refiner' is declared by several models: {refiners}")
        edits = [name for name, _ in self.edit_models()]
        if self.default_model is not None and self.default_model not in edits:
            raise ValueError(f"default_model: {self.default_model!r} is not an edit model (have {edits})")
        if len(edits) > 1 and self.default_model is None:
            raise ValueError(f"several edit models are declared ({edits}): name one as default_model")
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
        """The model declared for ``role``; for the edit roles, the default edit model first."""
        preferred = self.models.get(self.default_model) if self.default_model else None
        if preferred is not None and role in preferred.roles:
            return self.default_model, preferred
        for name, model in self.models.items():
            if role in model.roles:
                return name, model
        return None

    def edit_models(self) -> list[tuple[str, ModelEntry]]:
        return [(n, m) for n, m in self.models.items() if {"edit", "edit_plus"} & set(m.roles)]

    def edit_model(self, name: str | None) -> tuple[str, ModelEntry]:
        """The named edit model, or the default one; RegistryError naming the choices."""
        if name is None:
            found = self.model_for("edit_plus") or self.model_for("edit")
            if found is None:
                raise RegistryError(f"{self.source}: no model declares the role 'edit_plus' or 'edit'")
            return found
        for edit_name, entry in self.edit_models():
            if edit_name == name:
                return edit_name, entry
        have = ", ".join(n for n, _ in self.edit_models())
        raise RegistryError(f"{name!r} is not an edit model of this registry (have: {have})")

    def holding(self, name: str | None) -> Registry:
        """This registry as a pod that loads the edit model ``name`` sees it: that model is its default."""
        if name is None:
            return self
        self.edit_model(name)
        return self.model_copy(update={"default_model": name})

    def max_input_images(self, name: str | None) -> int:
        """Input pictures a job may give the edit model ``name`` (or the default one)."""
        return self.edit_model(name)[1].max_input_images or self.limits.max_images_per_job

    def max_pictures(self, name: str | None) -> int:
        """Pictures the edit model reads at once: input and reference pictures together."""
        entry = self.edit_model(name)[1]
        return entry.max_pictures or self.max_input_images(name) + self.limits.max_references

    def base_dir(self) -> Path:
        here = Path(self.source).parent if self.source else Path.cwd()
        return (here / self.root).resolve()

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir() / p

    def lightning_lora(self, steps: int, model: str | None = None) -> str | None:
        """The LoRA of the edit model (``model``, else the default) declared for ``steps`` steps."""
        try:
            found = self.edit_model(model)
        except RegistryError:
            return None
        for lora_name, lora in found[1].loras.items():
            if lora.steps == steps and lora.scheduler is not None:
                return lora_name
        return None

    def pod_models(self) -> list[str]:
        """The models a pod serving this registry loads: the default edit model (``holding`` makes
        another the default) and the refiner; with ``swap``, every edit model whose licence is
        accepted. Only their files must be on disk and only their licences accepted: the other
        declared models are other pods' to serve."""
        names = [self.edit_model(None)[0]] if self.edit_models() else []
        if self.swap:
            names += [n for n, _ in self.edit_models() if n not in names and not self.license_refusal(n)]
        refiner = self.model_for("refiner")
        return names + ([refiner[0]] if refiner else [])

    def license_refusal(self, name: str) -> str | None:
        """Why the model ``name`` may not be served (its licence not accepted), or None."""
        model = self.models[name]
        if model.accept_license or (model.license is not None and model.license.permissive):
            return None
        what = model.license.describe() if model.license else "no licence stated"
        return (
            f"models.{name}: {what} is not a permissive open licence; read it and set "
            f"models.{name}.accept_license: true to serve this model"
        )

    def unaccepted_licenses(self, names: Collection[str] | None = None) -> list[str]:
        """One line per model (of ``names``, default all) whose licence is not a permissive open
        one and was not accepted."""
        return [r for n in (self.models if names is None else names) if (r := self.license_refusal(n))]

    def missing_files(self, names: Collection[str] | None = None) -> list[str]:
        """Human-readable list of the declared files/folders (of ``names``, default every model)
        that are not on disk."""
        missing: list[str] = []
        for name, model in self.models.items():
            if names is not None and name not in names:
                continue
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
    """Every file this registry's pod loads (``Registry.pod_models``) is on disk."""
    missing = registry.missing_files(registry.pod_models())
    if missing:
        raise RegistryError(
            f"weights declared in {registry.source} are not on disk:\n  "
            + "\n  ".join(missing)
            + "\nFetch them with `retouch weights pull` on a connected machine, or build a CPU demo"
            " set with `retouch weights tiny DIR` and pass --weights DIR/weights.yaml."
        )
