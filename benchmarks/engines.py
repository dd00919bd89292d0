"""The engines the benchmarks time, and the stock diffusers pipeline put behind the same engine.

- ``tiny_engine``: the tiny random-weight set through ``EditEngine``, the production code path;
- ``full_engine``: the full-size architectures from ``configs/`` with random bf16 weights built on
  the device (``full_models.py``), assembled into an ``EditEngine`` without weight files;
- ``full_qwen21_engine``: the same for Qwen-Image 2.1 (its configs: class defaults, Qwen3-VL-8B);
- ``with_stock``: the same engine with the stock pipeline's ``__call__`` as its edit pipe
  (``QwenImageEditPlusPipeline``, or ``QwenImage21Pipeline`` for a 2.1 engine).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml

from benchmarks import report
from benchmarks.instrument import Probe, StockEditPipe, StockQwen21Pipe

DEFAULT_LORA_RANK = 32  # the published Lightning LoRAs' rank is not stated here; 32 is assumed
RANDOM_NOTE = "random weights: timings reflect the architectures' compute, not image quality"


def pin_tiny_sizes(weights_yaml: Path, side: int) -> None:
    """Write the edit and condition sizes into a tiny set's weights.yaml, so that a benchmark on the
    tiny set runs at sizes it chose, whatever limits the tiny builder declares."""
    data = yaml.safe_load(weights_yaml.read_text())
    for model in data["models"].values():
        if model.get("pipeline") == "qwen_image_edit_plus":
            model["vae_condition_pixels"] = side * side
            model["vl_condition_pixels"] = min(model.get("vl_condition_pixels", side * side), side * side)
    data.setdefault("resolutions", {})["1k"] = side * side
    limits = data.setdefault("limits", {})
    limits["max_output_side"] = max(limits.get("max_output_side", side), side)
    weights_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


def tiny_engine(device: torch.device, workdir: str, side: int | None = None):
    from pipelines import EditEngine, build_tiny_weights, load_registry

    weights = Path(build_tiny_weights(workdir))
    notes = ["tiny random-weight models on the real code path (EditEngine)"]
    if side:
        pin_tiny_sizes(weights, side)
        notes.append(f"tiny set pinned to {side}x{side} edits and condition pictures")
    return EditEngine(load_registry(weights), str(device)), notes


def full_engine(device: torch.device, lightning_steps: Iterable[int], refiner: bool, *,
                lora_rank: int = DEFAULT_LORA_RANK, layers: int | None = None, side: int | None = None,
                record: dict | None = None):  # fmt: skip
    """Full-size engine (random bf16 weights) with the Lightning LoRAs of ``lightning_steps``.

    Returns (engine, notes, stock pipeline sharing its components). ``record``, a dict, receives
    each component's build seconds and weight GiB (and the LoRAs' and tokenizer's seconds).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from benchmarks import full_models as fm
    from pipelines import load_registry
    from pipelines.loader import LoadedEditModel, LoadedRefiner

    record = {} if record is None else record
    # Seeded: a rebuild (the memory-plan cases) gets the same random weights, so pictures compare.
    torch.manual_seed(0)
    registry = load_registry(report.ROOT / "weights.yaml")
    edit_name, entry = registry.edit_model(None)
    notes_model = f"edit model {edit_name} (the default), config {fm.TRANSFORMER_CONFIGS[edit_name]}"
    notes = [
        RANDOM_NOTE,
        notes_model,
        "tokenizer/processor: the tiny builder's (the real Qwen tokenizer is not available)",
    ]
    if side:
        entry = entry.model_copy(update={"vae_condition_pixels": side**2})
        resolutions = registry.resolutions.model_copy(update={"k1": side**2})
        registry = registry.model_copy(update={"models": {**registry.models, edit_name: entry},
                                               "resolutions": resolutions})  # fmt: skip
        if side != 1024:
            notes.append(f"side {side}: edit and condition size changed, NOT the issue's 1024x1024 cases")
    if layers:
        notes.append(f"--layers {layers}: models truncated, NOT a benchmark (smoke test only)")
    t0 = time.perf_counter()
    tokenizer, processor = fm.build_tokenizer_and_processor()
    record["tokenizer_and_processor"] = {"seconds": time.perf_counter() - t0, "gib": 0.0}
    retouch, stock = fm.build_qwen_edit(device, tokenizer, processor, layers, record=record, model=edit_name)
    wanted = {f"lightning-{steps}" for steps in lightning_steps}
    adapters = []
    t1 = time.perf_counter()
    names = sorted(wanted & set(entry.loras))
    # every state dict before any is loaded: once peft wraps the linears, their names change
    states = [fm.random_lora_state_dict(retouch.transformer, lora_rank, seed=i) for i in range(len(names))]
    for lora_name, state in zip(names, states, strict=True):
        retouch.load_lora_weights(state, adapter_name=lora_name)
        adapters.append(lora_name)
    if adapters:
        retouch.disable_lora()
        record["lightning_loras"] = {"seconds": time.perf_counter() - t1, "gib": None, "names": adapters}
    notes.append(
        f"Lightning LoRAs: random, rank {lora_rank}, kohya format, every linear of transformer_blocks"
    )
    schedulers = {"default": retouch.scheduler} | {
        n: FlowMatchEulerDiscreteScheduler.from_config(retouch.scheduler.config, **{k: v for k, v in c.items()
                                                                                   if not k.startswith("_")})
        for n, c in registry.schedulers.items()
    }  # fmt: skip
    loaded_refiner = None
    if refiner:
        ref_name, ref_entry = registry.model_for("refiner")
        try:
            pipe = fm.build_z_image(device, tokenizer, layers, record=record)
            loaded_refiner = LoadedRefiner(ref_name, ref_entry, pipe)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            notes.append("refiner did not fit next to the edit model in bf16: refine cases skipped")
    engine = assemble_engine(registry, LoadedEditModel(edit_name, entry, retouch, schedulers, adapters),
                             loaded_refiner)  # fmt: skip
    mem = fm.parameter_bytes(retouch.transformer, retouch.vae, retouch.text_encoder)
    if loaded_refiner is not None:
        p = loaded_refiner.pipe
        mem += fm.parameter_bytes(p.transformer, p.vae, p.text_encoder)
    notes.append(f"built in {time.perf_counter() - t0:.0f} s on {device}, weights {mem / 2**30:.1f} GiB bf16")
    return engine, notes, stock


def assemble_engine(registry, edit, refiner):
    """An ``EditEngine`` around models built in memory (no weight files, no loader)."""
    from pipelines.engine import EditEngine
    from pipelines.model_swap import ResidentEditModels

    engine = EditEngine.__new__(EditEngine)
    engine.registry = registry
    engine.models = ResidentEditModels.of(registry, edit)
    engine.edit = edit
    engine.refiner = refiner
    engine.versions = report.versions()
    return engine


def full_qwen21_engine(device: torch.device, *, layers: int | None = None, side: int | None = None,
                       record: dict | None = None):  # fmt: skip
    """Full-size Qwen-Image 2.1 engine (random bf16 weights, seeded), no refiner.

    Returns (engine, notes, stock ``QwenImage21Pipeline`` sharing its components).
    """
    from benchmarks import full_models as fm
    from pipelines import load_registry
    from pipelines.loader import LoadedEditModel

    record = {} if record is None else record
    torch.manual_seed(21)
    name = "qwen-image-2.1"
    registry = load_registry(report.ROOT / "weights.yaml").holding(name)
    # random weights: none of the model's files, so no licence to accept for this benchmark
    update = {"accept_license": True}
    notes = [
        f"{name}: transformer and VAE from diffusers 0.42.1's class defaults (no config is published), "
        "text encoder of Qwen3-VL-8B's shape (an assumption); scheduler: Qwen-Image-Edit's config"
    ]
    if side and side != 1024:
        update["vae_condition_pixels"] = side**2
        notes.append(f"{name} side {side}: condition area changed, NOT the issue's 1024/2048 cases")
    entry = registry.models[name].model_copy(update=update)
    registry = registry.model_copy(update={"models": {**registry.models, name: entry}})
    t0 = time.perf_counter()
    tokenizer, _processor = fm.build_tokenizer_and_processor()
    record["tokenizer_and_processor"] = {"seconds": time.perf_counter() - t0, "gib": 0.0}
    retouch, stock = fm.build_qwen_image_21(device, tokenizer, layers, record=record)
    retouch.use_kv_cache = entry.performance.kv_cache
    schedulers = {"default": retouch.scheduler}
    engine = assemble_engine(registry, LoadedEditModel(name, entry, retouch, schedulers, []), None)
    mem = fm.parameter_bytes(retouch.transformer, retouch.vae, retouch.text_encoder)
    notes.append(
        f"{name} built in {time.perf_counter() - t0:.0f} s on {device}, weights {mem / 2**30:.1f} GiB"
    )
    return engine, notes, stock


def with_stock(engine, stock_pipe=None) -> dict:
    """{"retouch": engine, "stock": the same engine with the stock pipeline as its edit pipe}."""
    from diffusers import QwenImage21Pipeline, QwenImageEditPlusPipeline

    from pipelines.model_swap import ResidentEditModels

    qwen21 = engine.edit.entry.pipeline == "qwen_image_21"
    if stock_pipe is None:
        stock_class = QwenImage21Pipeline if qwen21 else QwenImageEditPlusPipeline
        stock_pipe = stock_class(**engine.edit.pipe.components)
        stock_pipe.set_progress_bar_config(disable=True)
    if qwen21:
        wrapped = StockQwen21Pipe(stock_pipe, use_kv_cache=engine.edit.pipe.use_kv_cache)
    else:
        wrapped = StockEditPipe(stock_pipe)
    stock = copy.copy(engine)
    stock.edit = dataclasses.replace(engine.edit, pipe=wrapped)
    # the engine takes each job's model from .models: the stock copy's own, or it would run Retouch's
    stock.models = ResidentEditModels.of(engine.registry, stock.edit)
    return {"retouch": engine, "stock": stock}


def install_probe(engines: dict, device: torch.device) -> Probe:
    """Stage timers on every path's pipes and token counters on the shared transformers."""
    engine = engines["retouch"]
    probe = Probe(device)
    refiner = engine.refiner.pipe if engine.refiner is not None else None
    pipes = [engine.edit.pipe] + ([engines["stock"].edit.pipe.stock] if "stock" in engines else [])
    probe.install(pipes, engine.edit.pipe.vae, engine.edit.pipe.transformer, refiner)
    return probe
