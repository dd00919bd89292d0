"""Parameter counts of every model component and LoRA, without loading a single weight.

Two sources, in this order: the safetensors headers of the component's weight files (exact; only
the JSON header at the front of each file is read), or, for a folder that holds only the configs
(a studio asking "will it fit?" before the download), the real diffusers / transformers class built
from its ``config.json`` on the ``meta`` device (exact too: the same modules, no storage). A LoRA
file that is not there yet is sized from its declared ``rank`` (or ``DEFAULT_LORA_RANK``) over the
transformer's block linear layers, and marked as an estimate.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import RegistryError
from .registry import LoraEntry, ModelEntry, Registry

# Qwen-Image-Lightning is published at rank 64; an undeclared rank is assumed to be that.
DEFAULT_LORA_RANK = 64
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8}
# The repeated blocks diffusers' block-level group offloading streams, per component class.
BLOCK_LISTS = {
    "QwenImageTransformer2DModel": ("transformer_blocks",),
    "QwenImage21Transformer2DModel": ("transformer_blocks",),
    "ZImageTransformer2DModel": ("layers", "noise_refiner", "context_refiner"),
}
SIZED_COMPONENTS = ("transformer", "text_encoder", "vae")


@dataclass(frozen=True)
class TensorCounts:
    """Parameters of one component, split the way the planner needs them."""

    parameters: int
    # largest single repeated block (what one offload group holds) and how many blocks there are
    block_parameters: int
    blocks: int
    # sum of (in + out) over the blocks' linear layers: a LoRA of rank r adds r times this
    lora_fan: int
    source: str  # "safetensors headers" or "config (meta device)"


@dataclass(frozen=True)
class ComponentSize:
    model: str
    component: str  # transformer | text_encoder | vae
    class_name: str
    config: dict
    counts: TensorCounts
    bytes_per_parameter: int

    @property
    def key(self) -> str:
        return f"{self.model}.{self.component}"

    @property
    def parameters(self) -> int:
        return self.counts.parameters

    @property
    def bytes(self) -> int:
        return self.counts.parameters * self.bytes_per_parameter

    @property
    def block_bytes(self) -> int:
        return self.counts.block_parameters * self.bytes_per_parameter

    @property
    def non_block_bytes(self) -> int:
        return self.bytes - self.counts.blocks * self.block_bytes


@dataclass(frozen=True)
class LoraSize:
    model: str
    name: str
    parameters: int
    bytes: int
    estimate: bool
    why: str


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table at the front of a safetensors file (8-byte length, then JSON)."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise RegistryError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 2**20:
            raise RegistryError(f"{path}: not a safetensors file (header of {length} bytes)")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _counts(shapes: dict[str, list[int]], block_lists: tuple[str, ...], source: str) -> TensorCounts:
    per_block: dict[str, int] = {}
    lora_fan = 0
    pattern = (
        re.compile(r"^(" + "|".join(map(re.escape, block_lists)) + r")\.(\d+)\.") if block_lists else None
    )
    for name, shape in shapes.items():
        found = pattern.match(name) if pattern else None
        if found is None:
            continue
        block = found.group(0)
        per_block[block] = per_block.get(block, 0) + _numel(shape)
        if name.endswith(".weight") and len(shape) == 2:
            lora_fan += shape[0] + shape[1]
    return TensorCounts(
        parameters=sum(_numel(s) for s in shapes.values()),
        block_parameters=max(per_block.values(), default=0),
        blocks=len(per_block),
        lora_fan=lora_fan,
        source=source,
    )


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


@lru_cache(maxsize=32)
def _meta_shapes(library: str, class_name: str, folder: str) -> dict[str, list[int]]:
    """Build the real class from its config on the meta device: exact shapes, no storage."""
    import torch
    from accelerate import init_empty_weights

    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name)
        with init_empty_weights(), torch.device("meta"):
            model = cls.from_config(cls.load_config(folder))
    else:
        import transformers

        # The published configs carry legacy keys transformers warns about; nothing to act on here.
        transformers.logging.set_verbosity_error()
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        cls = getattr(transformers, class_name)
        with init_empty_weights(), torch.device("meta"):
            model = cls._from_config(config)
    # Tied weights appear once, as they are stored and loaded.
    return {name: list(p.shape) for name, p in model.named_parameters(remove_duplicate=True)}


def tensor_counts(folder: Path, library: str, class_name: str) -> TensorCounts:
    blocks = BLOCK_LISTS.get(class_name, ())
    files = _weight_files(folder)
    if files:
        shapes = {}
        for file in files:
            shapes.update({k: v["shape"] for k, v in read_safetensors_header(file).items()})
        return _counts(shapes, blocks, "safetensors headers")
    if not (folder / "config.json").is_file():
        raise RegistryError(f"{folder}: neither weight files nor a config.json to size this component from")
    return _counts(_meta_shapes(library, class_name, str(folder)), blocks, "config (meta device)")


def component_sizes(registry: Registry, name: str, entry: ModelEntry) -> list[ComponentSize]:
    folder = registry.resolve(entry.path)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise RegistryError(f"models.{name}: {index_file} is missing (the planner reads it and the configs)")
    index = json.loads(index_file.read_text())
    sizes = []
    for component in SIZED_COMPONENTS:
        if component not in index:
            continue
        library, class_name = index[component]
        sub = folder / component
        config_file = sub / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        sizes.append(
            ComponentSize(
                model=name,
                component=component,
                class_name=class_name,
                config=config,
                counts=tensor_counts(sub, library, class_name),
                bytes_per_parameter=DTYPE_BYTES[entry.dtype],
            )
        )
    return sizes


def lora_size(
    registry: Registry, model: str, name: str, lora: LoraEntry, transformer: ComponentSize
) -> LoraSize:
    file = registry.resolve(lora.path)
    if file.is_file():
        header = read_safetensors_header(file)
        params = sum(_numel(t["shape"]) for t in header.values())
        nbytes = sum(_numel(t["shape"]) * SAFETENSORS_DTYPE_BYTES.get(t["dtype"], 2) for t in header.values())
        return LoraSize(model, name, params, nbytes, False, "safetensors header")
    rank = lora.rank or DEFAULT_LORA_RANK
    params = rank * transformer.counts.lora_fan
    declared = "declared rank" if lora.rank else "default rank (not declared)"
    why = f"file not present: {declared} {rank} over the transformer's block linear layers"
    return LoraSize(model, name, params, params * transformer.bytes_per_parameter, True, why)
