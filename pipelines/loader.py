"""Loading declared models strictly offline, with their LoRAs kept resident as adapters."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import acceleration, memory_apply
from .errors import RegistryError
from .registry import ModelEntry, Registry

# No hub calls at run time, whatever a library would otherwise try (telemetry, config lookups).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) so a process hashes each file once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in {".safetensors", ".json", ".bin"}
    }


def resolve_device(requested: str) -> torch.device:
    if requested.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(requested)


@dataclass
class LoadedEditModel:
    name: str
    entry: ModelEntry
    pipe: object  # RetouchQwenEditPipeline or RetouchQwenImage21Pipeline (EDIT_PIPELINE_CLASSES)
    schedulers: dict[str, object]  # "default" plus the registry's named schedulers
    adapters: list[str]
    hashes: dict[str, str] = field(default_factory=dict)
    # performance.fuse_lora: the LoRA baked into the (fp8) weights; no adapters remain to switch
    fused: str | None = None
    # where each component lives (pipelines/memory.py); None = everything resident
    memory_plan: object | None = None


@dataclass
class LoadedRefiner:
    name: str
    entry: ModelEntry
    pipe: object  # ZImageImg2ImgPipeline
    hashes: dict[str, str] = field(default_factory=dict)


def edit_pipeline_class(kind: str):
    """Retouch's pipeline for a weights.yaml ``pipeline`` kind of edit model."""
    if kind == "qwen_image_21":
        from .qwen21 import RetouchQwenImage21Pipeline

        return RetouchQwenImage21Pipeline
    from .qwen_edit import RetouchQwenEditPipeline

    return RetouchQwenEditPipeline


def load_edit_model(registry: Registry, device: str | None = None) -> LoadedEditModel:
    from diffusers import FlowMatchEulerDiscreteScheduler

    found = registry.model_for("edit_plus") or registry.model_for("edit")
    if found is None:
        raise RegistryError(f"{registry.source}: no model declares the role 'edit_plus' or 'edit'")
    name, entry = found
    folder = registry.resolve(entry.path)
    target = resolve_device(device or entry.device)
    dtype = DTYPES[entry.dtype]
    pipe = edit_pipeline_class(entry.pipeline).from_pretrained(
        folder, torch_dtype=dtype, local_files_only=True
    )
    if entry.pipeline == "qwen_image_21":
        pipe.use_kv_cache = entry.performance.kv_cache
    plan = memory_apply.plan_for(registry, target)
    placements = memory_apply.placements_of(plan, name)
    memory_apply.move_resident(pipe, placements, target)
    pipe.set_progress_bar_config(disable=True)
    hashes = {f"{name}/{k}": v for k, v in folder_hashes(folder).items()}

    # Every LoRA is loaded once as a named adapter; jobs switch adapters, never reload files.
    adapters = []
    for lora_name, lora in entry.loras.items():
        file = registry.resolve(lora.path)
        pipe.load_lora_weights(str(file), adapter_name=lora_name)
        adapters.append(lora_name)
        hashes[f"{name}.loras.{lora_name}"] = file_sha256(file)
    if adapters:
        pipe.disable_lora()

    perf, where = entry.performance, f"models.{name}"
    acceleration.set_attention_backend(pipe.transformer, perf.attention_backend, where)
    fused = acceleration.fuse_and_quantize(pipe, perf, where)
    if perf.quantize != "none":
        adapters = []
    memory_apply.apply_offloads(pipe, placements, target, f"models.{name}", plan)
    acceleration.compile_regional(pipe.transformer, perf)
    acceleration.offload_text_encoder(pipe, perf)
    pipe.prompt_cache = acceleration.PromptCache(perf.prompt_cache_size) if perf.prompt_cache_size else None

    schedulers = {"default": pipe.scheduler}
    for sched_name, overrides in registry.schedulers.items():
        config = {k: v for k, v in overrides.items() if not k.startswith("_")}
        schedulers[sched_name] = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **config)
    return LoadedEditModel(name, entry, pipe, schedulers, adapters, hashes, fused, plan)


def load_refiner(registry: Registry, device: str | None = None) -> LoadedRefiner | None:
    from diffusers import ZImageImg2ImgPipeline

    found = registry.model_for("refiner")
    if found is None:
        return None
    name, entry = found
    folder = registry.resolve(entry.path)
    pipe = ZImageImg2ImgPipeline.from_pretrained(
        folder, torch_dtype=DTYPES[entry.dtype], local_files_only=True
    )
    target = resolve_device(device or entry.device)
    plan = memory_apply.plan_for(registry, target)
    placements = memory_apply.placements_of(plan, name)
    memory_apply.move_resident(pipe, placements, target)
    pipe.set_progress_bar_config(disable=True)
    perf = entry.performance
    acceleration.set_attention_backend(pipe.transformer, perf.attention_backend, f"models.{name}")
    memory_apply.apply_offloads(pipe, placements, target, f"models.{name}", plan)
    acceleration.compile_regional(pipe.transformer, perf)
    acceleration.offload_text_encoder(pipe, perf)
    return LoadedRefiner(name, entry, pipe, {f"{name}/{k}": v for k, v in folder_hashes(folder).items()})
