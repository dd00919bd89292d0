"""Which weights a server runs, said plainly: the demo set or a registry, and at which revisions."""

from __future__ import annotations

from .registry import Registry
from .weights_manifest import ManifestError, read_manifest

DEMO_NOTICE = (
    "demo weights: tiny random-weight models with the production limits; pictures are noise.",
    "They were built because none of the weight files that {registry} names are on disk.",
    "Real weights: `retouch weights pull` on a connected machine, or `retouch weights import` (README).",
)


def describe(registry: Registry, registry_path: str) -> dict:
    """``{"set": "demo"|"registry", "registry": path, "manifest": bool, "revisions": {model: rev}}``.

    Revisions are the commits the manifest recorded where there is one (what is really on disk),
    else the revisions weights.yaml pins."""
    revisions = {name: model.revision for name, model in registry.models.items()}
    try:
        recorded = read_manifest(registry)["entries"]
        has_manifest = True
    except ManifestError:
        recorded, has_manifest = {}, False
    for name in revisions:
        rec = recorded.get(name) or {}
        revisions[name] = rec.get("commit") or rec.get("revision") or revisions[name]
    return {
        "set": "demo" if registry.demo else "registry",
        "registry": registry_path,
        "manifest": has_manifest,
        "revisions": revisions,
    }


def none_on_disk(registry: Registry) -> bool:
    """True when not one declared model folder or LoRA file exists (a fresh clone)."""
    paths = [registry.resolve(m.path) for m in registry.models.values()]
    paths += [registry.resolve(lora.path) for m in registry.models.values() for lora in m.loras.values()]
    return not any(p.exists() for p in paths)
