"""Memory plans applied on the tiny set, on the CPU (CPU as both devices), through the real diffusers,
accelerate and torchao hooks: lossless plans give the resident plan's pictures bit for bit; FP8
storage is close to the full-precision pictures, and its PSNR is reported."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines import EditEngine, EditSpec, load_registry
from tests.conftest import encode, make_photo


def with_memory(tiny_weights, name: str, memory: str):
    path = tiny_weights.parent / f"weights-{name}.yaml"
    path.write_text(tiny_weights.read_text() + "\n" + memory + "\n")
    return load_registry(path)


def spec(**kw) -> EditSpec:
    base = dict(prompt="make it warmer.", images=[encode(make_photo())], seed=5, output_format="png")
    return EditSpec(**(base | kw))


def psnr(a: bytes, b: bytes) -> float:
    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), dtype=np.float64) for d in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


JOBS = {
    "lightning-8 + refine": dict(lightning_steps=8, refine_strength=0.5),
    "full model, cfg": dict(lightning_steps=None, num_inference_steps=3, guidance_scale=4.0),
}


@pytest.fixture(scope="module")
def streamed(tiny_weights):
    """Every lossless mechanism at once: both transformers streamed, encoders and VAEs visiting."""
    memory = (
        "memory:\n  plan: low-memory\n  overrides:\n"
        "    qwen-image-edit-tiny.vae: cpu-visit\n    z-image-turbo-tiny.vae: cpu-visit"
    )
    return EditEngine(with_memory(tiny_weights, "streamed", memory))


def test_the_plan_named_in_weights_yaml_is_applied_through_the_library_hooks(streamed):
    from diffusers.hooks import HookRegistry

    plan = streamed.edit.memory_plan
    assert plan is not None and plan.name == "low-memory"
    for pipe in (streamed.edit.pipe, streamed.refiner.pipe):
        for module in (pipe.transformer, pipe.vae):
            hooked = [
                name
                for part in module.modules()
                for name in getattr(part, "_diffusers_hook", HookRegistry(part)).hooks
            ]
            assert any("group_offloading" in name for name in hooked), type(module).__name__
        assert pipe.text_encoder_hook is not None


@pytest.mark.parametrize("job", JOBS, ids=list(JOBS))
def test_lossless_plans_give_the_resident_pictures_bit_for_bit(streamed, engine, job):
    job_spec = spec(**JOBS[job])
    assert streamed.run(job_spec).images[0].sha256 == engine.run(job_spec).images[0].sha256


def test_transformers_brought_in_per_job_give_the_resident_pictures_and_go_back(tiny_weights, engine):
    """``cpu-visit`` transformers (``refiner-on-demand`` keeps the refiner this way): in CPU memory
    between jobs, brought in whole for one job's denoise loop and sent back before the decode."""
    memory = (
        "memory:\n  plan: refiner-on-demand\n  overrides:\n    qwen-image-edit-tiny.transformer: cpu-visit"
    )
    visiting = EditEngine(with_memory(tiny_weights, "visiting", memory))
    assert visiting.edit.memory_plan.placement("z-image-turbo-tiny", "transformer") == "cpu-visit"
    sent_back = []
    for role, pipe in (("edit", visiting.edit.pipe), ("refiner", visiting.refiner.pipe)):
        hook = pipe.transformer_hook
        hook.offload = lambda offload=hook.offload, role=role: (sent_back.append(role), offload())
    job_spec = spec(**JOBS["lightning-8 + refine"])
    assert visiting.run(job_spec).images[0].sha256 == engine.run(job_spec).images[0].sha256
    assert sent_back == ["edit", "refiner"]


def test_fp8_storage_is_close_to_full_precision_and_keeps_the_loras_switchable(tiny_weights, engine):
    # torchao comes with the fp8 extra (`pip install -e '.[fp8]'`), not with the test extra
    Float8Tensor = pytest.importorskip("torchao.quantization").Float8Tensor

    fp8 = EditEngine(with_memory(tiny_weights, "fp8", "memory: fp8"))
    blocks = fp8.edit.pipe.transformer.transformer_blocks
    assert isinstance(blocks[0].attn.to_q.base_layer.weight, Float8Tensor)
    scores = {}
    for job, settings in JOBS.items():
        got, want = fp8.run(spec(**settings)), engine.run(spec(**settings))
        scores[job] = psnr(got.images[0].data, want.images[0].data)
    print(f"\nFP8 weight storage vs full precision, tiny set on CPU: PSNR {scores}")
    # not the same pictures (the weights are rounded), but close ones: FP8 is a named, lossy plan
    assert all(20 < s < float("inf") for s in scores.values()), scores
    lightning = fp8.run(spec(**JOBS["lightning-8 + refine"])).images[0].sha256
    assert lightning != fp8.run(spec(**JOBS["full model, cfg"])).images[0].sha256
