"""``make gpu-wheels``: the wheels the GPU machine lacks, for its Python 3.12 on x86-64, into ./.whl/.

The lent GPU machine (``device`` kind ``nvidia-h200``) has no package registry; its image holds
PyTorch and a long list of packages, but not diffusers, FastAPI and the rest of what ``server/``,
``pipelines/`` and ``benchmarks/`` import. This walks the project's requirements (pyproject.toml's
dependencies and the ``fp8`` extra) through each wheel's own ``Requires-Dist``, stops at every
package the image already has, and downloads one wheel of each missing package: the exact
version pyproject.toml pins, else the one installed in this virtualenv (the one the tests ran
with). The GPU command in benchmarks/README.md installs them with ``pip install --no-index``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 64 * 2**20  # what one device call may carry, working tree included

# The image's packages, from ../.library/device/KINDS.md ("Python packages already there",
# read 2026-11-17), and the versions that page's pip list gives (2026-11). Carry one only for
# another version.
GPU_IMAGE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "tokenizers": "0.23.2", "torch": "2.11.0", "torchvision": "0.26.0", "transformers": "5.17.0",
    "triton": "3.6.0",
}  # fmt: skip
_IMAGE_LIST = """
absl-py aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet
filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore
httpx humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpyro nvidia-ml-py
onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm toolz torchaudio torchdiffeq torch-geometric torchmetrics tqdm treescope typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp"""
GPU_IMAGE_PACKAGES = set(GPU_IMAGE_VERSIONS) | set(_IMAGE_LIST.split())

# The GPU machine's interpreter, for evaluating environment markers of the requirements.
TARGET_ENV = default_environment() | {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix",
}  # fmt: skip
PIP_FLAGS = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]  # fmt: skip
MORE_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (24, 31, 34, 35, *range(29, 40))]


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).get("fp8", [])
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate(TARGET_ENV | {"extra": ""})


def pinned_version(req: Requirement) -> str:
    """The exact ``==`` pin, else the version in this virtualenv; it must satisfy the requirement."""
    exact = [s.version for s in req.specifier if s.operator == "=="]
    if exact:
        return exact[0]
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"{req.name} is not installed here and not pinned with ==: pin it") from None
    if not req.specifier.contains(version, prereleases=True):
        raise SystemExit(f"{req.name} {version} (installed here) does not satisfy {req}")
    return version


def download(name: str, version: str, dest: Path) -> Path:
    base = [sys.executable, "-m", "pip", "download", "-q", *PIP_FLAGS, "-d", str(dest)]
    for platforms in (PLATFORMS, PLATFORMS + MORE_PLATFORMS):
        flags = [f for p in platforms for f in ("--platform", p)]
        proc = subprocess.run([*base, *flags, f"{name}=={version}"], capture_output=True, text=True)
        if proc.returncode == 0:
            break
    else:
        raise SystemExit(f"no wheel of {name}=={version} for CPython 3.12 x86-64:\n{proc.stderr[-2000:]}")
    return wheel_of(dest, name, version)


def wheel_of(dest: Path, name: str, version: str) -> Path:
    for wheel in dest.glob("*.whl"):
        wname, wversion = wheel.name.split("-")[:2]
        if canonicalize_name(wname) == canonicalize_name(name) and Version(wversion) == Version(version):
            return wheel
    raise SystemExit(f"pip reported success but no wheel of {name}=={version} is in {dest}")


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = zf.read(meta).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]  # fmt: skip


def check_image_version(req: Requirement, notes: list[str]) -> bool:
    """True when the image's copy will do; a known version that fails the requirement is carried."""
    known = GPU_IMAGE_VERSIONS.get(canonicalize_name(req.name))
    if known is None or req.specifier.contains(known, prereleases=True):
        return True
    notes.append(f"{req.name}: the image has {known}, {req} needs another: carried")
    return False


def collect(dest: Path) -> tuple[dict[str, Path], list[str]]:
    wanted: dict[str, Path] = {}
    notes: list[str] = []
    queue = [r for r in project_requirements() if applies(r)]
    while queue:
        req = queue.pop(0)
        key = canonicalize_name(req.name)
        if key in wanted:
            continue
        if key in GPU_IMAGE_PACKAGES and check_image_version(req, notes):
            continue
        wanted[key] = download(req.name, pinned_version(req), dest)
        queue += [r for r in wheel_requirements(wanted[key]) if applies(r)]
    return wanted, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", default=str(ROOT / ".whl"))
    args = p.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted, notes = collect(dest)
    keep = set(wanted.values())
    for stale in dest.glob("*.whl"):  # two versions of one package stop the whole install there
        if stale not in keep:
            stale.unlink()
    total = sum(w.stat().st_size for w in keep)
    for wheel in sorted(keep, key=lambda w: w.name.lower()):
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    for note in notes:
        print(f"note: {note}")
    limit = LIMIT_BYTES / 2**20
    print(f"{len(keep)} wheels, {total / 2**20:.1f} MiB in all in {dest} (limit {limit:.0f} MiB)")
    if total > LIMIT_BYTES:
        print("over the limit of what one device call carries", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
