"""The edit models one engine keeps loaded, and swapping them per job (weights.yaml ``swap: true``).

Without ``swap`` an engine holds one edit model, its pod's, and a job for another is refused (the
API routes it to a pod that holds it). With ``swap``, a job for an edit model that is not loaded
loads it, after unloading the least recently used ones until it fits: at most
``memory.resident_edit_models`` at once, and on a GPU as many as leave room for the new model's
planned GPU weights. Each swap is timed; the engine reports it on the job (``timings["swap"]``,
``record["swap"]``) and keeps the last measure per model for ETAs.
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict

import torch

from .errors import UnsupportedFeatureError
from .loader import LoadedEditModel, load_edit_model, resolve_device
from .registry import Registry


class ResidentEditModels:
    def __init__(self, registry: Registry, device: str | None = None):
        self.registry = registry
        self.device = device
        self.capacity = registry.memory.resident_edit_models if registry.swap else 1
        self._loaded: OrderedDict[str, LoadedEditModel] = OrderedDict()
        # seconds the last load of each model took (the first, at start, included)
        self.load_seconds: dict[str, float] = {}
        self._pods: dict[str, Registry] = {}  # the registry as a pod holding each model sees it
        self._load(registry.edit_model(None)[0])

    def _pod(self, name: str) -> Registry:
        if name not in self._pods:
            self._pods[name] = self.registry.holding(name)
        return self._pods[name]

    @classmethod
    def of(cls, registry: Registry, model: LoadedEditModel) -> ResidentEditModels:
        """One model built in memory, not from files (benchmarks' full-size random-weight ones)."""
        held = cls.__new__(cls)
        held.registry, held.device, held.capacity = registry, None, 1
        held._loaded = OrderedDict({model.name: model})
        held.load_seconds, held._pods = {}, {}
        return held

    @property
    def names(self) -> list[str]:
        """The loaded edit models, least recently used first."""
        return list(self._loaded)

    def get(self, name: str) -> tuple[LoadedEditModel, dict | None]:
        """The edit model ``name``, loaded; the second value reports the swap it took, if any.
        A caller holding a loaded model drops it first (``will_swap``): an unloaded model is freed
        only once nothing refers to it."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name], None
        if not self.registry.swap:
            raise UnsupportedFeatureError(
                f"this engine holds {', '.join(self._loaded)}, the job asks for {name} "
                "(weights.yaml swap: true lets a worker swap models)",
                field="model",
            )
        started = time.perf_counter()
        unloaded = self._make_room(name)
        model = self._load(name)
        seconds = time.perf_counter() - started
        return model, {"loaded": name, "unloaded": unloaded, "seconds": round(seconds, 3)}

    def largest_sides(self) -> dict[str, int]:
        """The largest output side each edit model this engine may run fits under its own memory
        plan (a swapping worker's plans differ per model); empty where nothing is planned (a CPU)."""
        from . import memory_apply

        edit = {n for n, _ in self.registry.edit_models()}
        names = [n for n in self.registry.pod_models() if n in edit] if self.registry.swap else self.names
        sides = {}
        for name in names:
            device = resolve_device(self.device or self.registry.models[name].device)
            plan = memory_apply.plan_for(self._pod(name), device)
            if plan is not None:
                sides[name] = plan.largest_side
        return sides

    def will_swap(self, name: str) -> bool:
        return self.registry.swap and name not in self._loaded

    def _make_room(self, name: str) -> list[str]:
        unloaded = []
        while self._loaded and (len(self._loaded) >= self.capacity or not self._fits(name)):
            old, model = self._loaded.popitem(last=False)
            unloaded.append(old)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return unloaded

    def _fits(self, name: str) -> bool:
        """On a GPU: is there room for the model's planned GPU weights next to those loaded?"""
        device = resolve_device(self.device or self.registry.models[name].device)
        if device.type != "cuda" or not self._loaded:
            return True
        from . import memory_apply

        plan = memory_apply.plan_for(self._pod(name), device)
        if plan is None:
            return True
        needed = sum(r.placed_bytes for r in plan.rows if r.size.model == name and r.placement == "gpu")
        free, _ = torch.cuda.mem_get_info(device)
        # the activations of the largest job are the plan's own headroom, kept free as well
        headroom = plan.peak_bytes - sum(r.placed_bytes for r in plan.rows if r.placement == "gpu")
        return free >= needed + max(headroom, 0)

    def _load(self, name: str) -> LoadedEditModel:
        started = time.perf_counter()
        model = load_edit_model(self._pod(name), self.device)
        self.load_seconds[name] = round(time.perf_counter() - started, 3)
        self._loaded[name] = model
        return model
