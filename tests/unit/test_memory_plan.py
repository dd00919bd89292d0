"""The memory planner on the real full-size configs (no weights anywhere): the placements, peaks and
costs docs/memory.md argues for, the refusal below the minimum, and `retouch plan` on that folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.errors import RegistryError
from pipelines.memory import NoPlanFits, plan_memory
from pipelines.memory_model import GIB
from pipelines.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "benchmarks" / "configs"
DOCS = ROOT / "docs" / "memory.md"
HOST_GIB = 512  # plan as if host memory were plentiful, so the figures do not depend on this machine
CONFIG_FILES = {
    "Qwen-Image-Edit-2511": {
        "model_index.json": "qwen_image_edit_model_index.json",
        "transformer/config.json": "qwen_image_edit_2511_transformer.json",
        "text_encoder/config.json": "qwen_image_edit_text_encoder.json",
        "vae/config.json": "qwen_image_edit_vae.json",
    },
    "Qwen-Image-Edit-2509": {
        "model_index.json": "qwen_image_edit_model_index.json",
        "transformer/config.json": "qwen_image_edit_transformer.json",
        "text_encoder/config.json": "qwen_image_edit_text_encoder.json",
        "vae/config.json": "qwen_image_edit_vae.json",
    },
    # no configs are published with 2.1: diffusers' class defaults (transformer, VAE) and Qwen3-VL-8B's
    # shape for its encoder (benchmarks/README.md)
    "Qwen-Image-2.1": {
        "model_index.json": "qwen_image_21_model_index.json",
        "transformer/config.json": "qwen_image_21_transformer.json",
        "text_encoder/config.json": "qwen_image_21_text_encoder.json",
        "vae/config.json": "qwen_image_21_vae.json",
    },
    "Z-Image-Turbo": {
        "model_index.json": "z_image_turbo_model_index.json",
        "transformer/config.json": "z_image_turbo_transformer.json",
        "text_encoder/config.json": "z_image_turbo_text_encoder.json",
        "vae/config.json": "z_image_turbo_vae.json",
    },
}


def write_configs_only(folder: Path) -> Path:
    """The committed weights.yaml over model folders that hold only the published configs."""
    for model, files in CONFIG_FILES.items():
        for dest, name in files.items():
            target = folder / "weights" / model / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(CONFIGS / name, target)
    shutil.copy(ROOT / "weights.yaml", folder / "weights.yaml")
    return folder / "weights.yaml"


@pytest.fixture(scope="module")
def configs_only(tmp_path_factory) -> Path:
    return write_configs_only(tmp_path_factory.mktemp("configs-only"))


@pytest.fixture(scope="module")
def real(configs_only):
    return load_registry(configs_only)


def table_row(plan) -> str:
    """One row of the docs table, as docs/memory.md writes it."""
    edit = ", ".join(r.placement for r in plan.rows if r.role == "edit")
    refiner = ", ".join(r.placement for r in plan.rows if r.role == "refiner")
    return (
        f"| {plan.gpu_bytes / GIB:g} | {plan.device.name} | {plan.name} | {edit} | {refiner} | "
        f"{plan.peak_bytes / GIB:.1f} | {plan.largest_side} | "
        f"{plan.reference_transfer_bytes / 1e9:.0f} GB, +{plan.reference_seconds:.1f} s | "
        f"{plan.refined_transfer_bytes / 1e9:.0f} GB, +{plan.refined_seconds:.1f} s | "
        f"{plan.host_bytes_needed / GIB:.0f} |"
    )


def docs_rows() -> list[str]:
    text = DOCS.read_text()
    return [line.strip() for line in text.splitlines() if re.match(r"^\| \d+ \| ", line)]


def test_parameter_counts_of_the_real_configs_match_the_published_model_sizes(real):
    plan = plan_memory(real, 141, host_memory_gib=HOST_GIB)
    params = {row.size.key: row.size.parameters for row in plan.rows}
    # Qwen-Image 20B MMDiT, Qwen2.5-VL-7B (8.3B with its vision tower), Z-Image 6B, Qwen3-4B
    assert params["qwen-image-edit-2511.transformer"] == 20_430_401_088
    assert params["qwen-image-edit-2511.text_encoder"] == 8_292_166_656
    assert params["z-image-turbo.transformer"] == 6_154_908_736
    assert params["z-image-turbo.text_encoder"] == 4_022_468_096
    assert all(row.size.counts.source == "config (meta device)" for row in plan.rows)
    assert any("meta-device" in note for note in plan.notes)


def test_every_gpu_size_gets_the_plan_in_the_docs_table(real):
    rows = docs_rows()
    assert [int(r.split("|")[1]) for r in rows] == [24, 32, 48, 80, 141]
    for expected in rows:
        gib = float(expected.split("|")[1])
        plan = plan_memory(real, gib, host_memory_gib=HOST_GIB)
        assert table_row(plan) == expected, f"regenerate docs/memory.md's row for {gib:g} GiB"
        assert plan.peak_bytes <= plan.gpu_bytes * 0.92
        assert not plan.lossy


def test_the_biggest_card_keeps_everything_resident_and_smaller_ones_stream_the_transformer(real):
    resident = plan_memory(real, 141, host_memory_gib=HOST_GIB)
    assert set(resident.placements().values()) == {"gpu"}
    small = plan_memory(real, 24, host_memory_gib=HOST_GIB)
    assert small.placement("qwen-image-edit-2511", "transformer") == "streamed"
    assert small.placement("qwen-image-edit-2511", "text_encoder") == "cpu-visit"
    assert small.streamed_bytes_per_step > 40e9
    assert any("per denoising step" in line for line in small.cost_lines())


def test_below_the_minimum_no_plan_fits_and_the_smallest_memory_that_works_is_named(real):
    with pytest.raises(NoPlanFits) as refused:
        plan_memory(real, 16, host_memory_gib=HOST_GIB)
    assert refused.value.needed_gib == 19
    assert "the smallest GPU memory that would work is 19 GiB" in str(refused.value)
    # ... and that memory is indeed enough
    just_enough = plan_memory(real, refused.value.needed_gib, host_memory_gib=HOST_GIB)
    assert just_enough.placement("qwen-image-edit-2511", "text_encoder") == "cpu-visit"


def test_host_memory_too_small_for_the_pinned_copies_is_refused(real):
    with pytest.raises(NoPlanFits, match="host memory"):
        plan_memory(real, 24, host_memory_gib=32)
    # with 64 GiB of host memory a 24 GiB card cannot stream, and the refusal says why
    why = "plans that fit 24 GiB need 79 GiB of host memory even pinned block by block, this machine has 64"
    with pytest.raises(NoPlanFits, match=why):
        plan_memory(real, 24, host_memory_gib=64)
    # with 100 GiB the weights cannot all be pinned up front (~2x), so they are pinned as they stream
    tight = plan_memory(real, 24, host_memory_gib=100)
    assert tight.placement("qwen-image-edit-2511", "transformer") == "streamed"
    assert not tight.pinned_streams and tight.host_bytes_needed <= 100 * 2**30
    assert any("pinned block by block" in note for note in tight.notes)
    assert plan_memory(real, 24, host_memory_gib=HOST_GIB).pinned_streams


def test_a_named_plan_that_does_not_fit_is_refused_not_replaced(real):
    with pytest.raises(NoPlanFits, match="plan 'resident' fits in 48 GiB"):
        plan_memory(real, 48, host_memory_gib=HOST_GIB, plan="resident")
    fp8 = plan_memory(real, 48, host_memory_gib=HOST_GIB, plan="fp8")
    assert fp8.lossy and fp8.placement("qwen-image-edit-2511", "transformer") == "gpu-fp8"
    # FP8 stores the blocks' linear layers in one byte per weight: about half the bf16 bytes
    row = next(r for r in fp8.rows if r.size.key == "qwen-image-edit-2511.transformer")
    assert 0.5 < row.placed_bytes / row.size.bytes < 0.52


def test_a_smaller_max_side_lets_a_faster_plan_fit(real):
    at_2048 = plan_memory(real, 80, host_memory_gib=HOST_GIB)
    at_1024 = plan_memory(real, 80, host_memory_gib=HOST_GIB, max_side=1024)
    assert at_1024.refined_seconds < at_2048.refined_seconds
    assert at_1024.largest_side >= 1024 and at_2048.largest_side >= 2048
    # the named plans docs/memory.md quotes for --max-side 1024
    assert at_1024.name == "refiner-streamed"
    assert plan_memory(real, 48, host_memory_gib=HOST_GIB, max_side=1024).name == "edit-streamed"


def test_memory_settings_in_weights_yaml_are_validated(configs_only, tmp_path):
    text = configs_only.read_text().replace("root: ./weights", f"root: {configs_only.parent / 'weights'}")
    good = tmp_path / "good.yaml"
    good.write_text(text + "\nmemory: low-memory\n")
    assert load_registry(good).memory.plan == "low-memory"
    overridden = tmp_path / "overridden.yaml"
    overridden.write_text(
        text + "\nmemory:\n  gpu_memory_gib: 141\n  overrides:\n    z-image-turbo.text_encoder: cpu-visit\n"
    )
    registry = load_registry(overridden)
    plan = plan_memory(registry, registry.memory.gpu_memory_gib, host_memory_gib=HOST_GIB)
    assert plan.placement("z-image-turbo", "text_encoder") == "cpu-visit"
    assert plan.placement("z-image-turbo", "transformer") == "gpu"
    for bad, named in (
        ("memory: everything-on-gpu", "memory"),
        ("memory:\n  overrides:\n    qwen-image-edit-2511.vae: streamed", "qwen-image-edit-2511.vae"),
        ("memory:\n  overrides:\n    z-image-turbo.text_encoder: streamed", "not 'streamed'"),
        ("memory:\n  overrides:\n    nope.transformer: gpu", "nope.transformer"),
        ("memory:\n  gpu_memory_gib: -3", "gpu_memory_gib"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(text + "\n" + bad + "\n")
        with pytest.raises(RegistryError, match=re.escape(named)):
            load_registry(path)


def run_plan(*args):
    command = [sys.executable, "-m", "server.cli", "plan", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_retouch_plan_on_a_configs_only_folder(configs_only):
    done = run_plan("--weights", str(configs_only), "--gpu-memory", "24", "--host-memory", str(HOST_GIB))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "plan: low-memory" in out
    assert re.search(r"qwen-image-edit-2511\.transformer\s+20\.430 B\s+40\.86 GB\s+streamed", out)
    assert "lightning-8" in out and "estimate" in out  # the LoRA files are not there yet
    assert "estimated peak GPU memory: 17.6 GiB of 24 GiB" in out
    assert "GB over PCIe per denoising step" in out
    assert "largest output side that fits: 7760px" in out
    assert "why not all resident: that would peak at 85.8 GiB" in out

    refused = run_plan("--weights", str(configs_only), "--gpu-memory", "12", "--host-memory", str(HOST_GIB))
    assert refused.returncode == 2
    assert "smallest GPU memory that would work is 19 GiB" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_sizes_from_headers_and_from_configs_alone_match_the_loaded_model(tiny_weights, engine, tmp_path):
    from pipelines.memory_sizes import component_sizes, lora_size, read_safetensors_header

    registry = load_registry(tiny_weights)
    name, entry = registry.model_for("edit_plus")
    pipe = engine.edit.pipe
    # the engine holds the LoRAs as adapters inside the transformer: count its base weights
    loaded = {
        part: sum(p.numel() for n, p in getattr(pipe, part).named_parameters() if ".lora_" not in n)
        for part in ("transformer", "text_encoder", "vae")
    }
    from_headers = {s.component: s for s in component_sizes(registry, name, entry)}
    assert {c: s.parameters for c, s in from_headers.items()} == loaded
    assert all(s.counts.source == "safetensors headers" for s in from_headers.values())

    # the same folder with its weight files gone: built on the meta device, counted the same
    bare_folder = tmp_path / "configs-only"
    shutil.copytree(tiny_weights.parent, bare_folder)
    for file in bare_folder.rglob("*.safetensors"):
        file.unlink()
    bare = load_registry(bare_folder / tiny_weights.name)
    from_configs = {s.component: s for s in component_sizes(bare, name, entry)}
    for component, size in from_headers.items():
        assert from_configs[component].counts == replace(size.counts, source="config (meta device)")

    # a LoRA on disk is sized from its header; one not downloaded yet, from its declared rank
    lora = entry.loras["lightning-8"]
    on_disk = lora_size(registry, name, "lightning-8", lora, from_headers["transformer"])
    ranked = lora.model_copy(update={"rank": 4})
    estimated = lora_size(bare, name, "lightning-8", ranked, from_configs["transformer"])
    assert not on_disk.estimate and estimated.estimate and "declared rank 4" in estimated.why
    header = read_safetensors_header(registry.resolve(lora.path))
    alphas = sum(1 for t in header.values() if t["shape"] == [])
    # rank x (in + out) over the blocks' linear layers: the file's matrices exactly (tiny: rank 4)
    assert estimated.parameters == on_disk.parameters - alphas


def test_retouch_plan_without_a_gpu_or_a_size_asks_for_one(configs_only):
    done = run_plan("--weights", str(configs_only))
    assert done.returncode == 2
    assert "pass --gpu-memory GIB" in done.stderr and "Traceback" not in done.stderr
    wrong = run_plan("--weights", str(configs_only), "--gpu-memory", "24", "--plan", "everything")
    assert wrong.returncode == 2 and "--plan must be auto or one of resident" in wrong.stderr


def test_retouch_plan_for_a_chosen_model_and_for_several_on_one_pod(configs_only):
    args = ("--weights", str(configs_only), "--host-memory", str(HOST_GIB))
    done = run_plan(*args, "--gpu-memory", "24", "--model", "qwen-image-2.1")
    assert done.returncode == 0, done.stderr
    assert re.search(r"qwen-image-2\.1\.transformer\s+7\.115 B\s+14\.23 GB", done.stdout)  # 7.1 B
    assert "qwen-image-edit-2511" not in done.stdout  # that pod does not load it
    both = ("--model", "qwen-image-edit-2511", "--model", "qwen-image-2.1")
    roomy = run_plan(*args, "--gpu-memory", "141", *both)
    assert roomy.returncode == 0 and "== qwen-image-2.1 ==" in roomy.stdout
    assert "they fit loaded together" in roomy.stdout and "resident_edit_models: 2" in roomy.stdout
    tight = run_plan(*args, "--gpu-memory", "80", *both)
    assert "they do not fit loaded together" in tight.stdout and "one at a time" in tight.stdout
    unknown = run_plan(*args, "--gpu-memory", "80", "--model", "qwen-image-9")
    assert unknown.returncode == 2 and "have: qwen-image-edit-2511" in unknown.stderr


def test_the_docs_table_of_qwen_image_21_is_what_the_planner_says(real):
    rows = re.findall(
        r"^\| (\d+) GiB \| ([\w-]+) \| ([^|]+) \| ([\d.]+) \| (\d+) \|$", DOCS.read_text(), re.M
    )
    assert [int(r[0]) for r in rows] == [24, 48, 80]
    for gib, name, placements, peak, side in rows:
        plan = plan_memory(real.holding("qwen-image-2.1"), int(gib), host_memory_gib=HOST_GIB)
        where = ", ".join(plan.placement("qwen-image-2.1", c) for c in ("transformer", "text_encoder", "vae"))
        assert (plan.name, where, f"{plan.peak_bytes / GIB:.1f}", plan.largest_side) == (
            name, placements.strip(), peak, int(side)
        )  # fmt: skip
