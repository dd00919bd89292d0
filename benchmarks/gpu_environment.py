"""The GPU check's first case: what the numbers were measured on."""

from __future__ import annotations

import subprocess
import tomllib
from importlib import metadata

import torch

from benchmarks import report

PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "torchao", "fastapi", "pydantic",
            "uvicorn", "huggingface-hub", "safetensors", "tokenizers", "numpy")  # fmt: skip


def nvidia_smi() -> str | None:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        proc = subprocess.run(query, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def unmet_requirements() -> list[str]:
    """pyproject.toml's requirements, and theirs in turn, that this interpreter does not meet: on the
    GPU machine, where the image's own packages stand in for the ones not carried as wheels."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((report.ROOT / "pyproject.toml").read_text())["project"]
    queue = [
        Requirement(r)
        for r in project["dependencies"] + project.get("optional-dependencies", {}).get("fp8", [])
    ]
    seen, unmet = set(), []
    while queue:
        req = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = (canonicalize_name(req.name), str(req.specifier))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            unmet.append(f"{req}: {dist.version} installed")
        queue += [Requirement(r) for r in dist.requires or []]
    return unmet


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 n x n x n products on random data, mean of ``reps`` after 3 warm-ups (CUDA events)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1000) / 1e12


def environment_info(device: torch.device, peak_tflops: float | None) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    out = {"device": report.device_name(device), "versions": versions, "torch_cuda": torch.version.cuda,
           "peak_tflops_for_bound": peak_tflops, "requirements_unmet": unmet_requirements()}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {"name": props.name, "memory_gib": props.total_memory / 2**30, "multiprocessors":
                props.multi_processor_count, "capability": list(torch.cuda.get_device_capability(device)),
                "nvidia_smi": nvidia_smi(), "measured_bf16_matmul_tflops": matmul_tflops(device)}  # fmt: skip
    return out
