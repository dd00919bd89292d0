"""One engine serving several edit models (weights.yaml ``swap: true``): a job for a model that is
not loaded loads it, least recently used out, and the job reports the swap it took."""

from __future__ import annotations

import pytest

from pipelines import EditSpec, UnsupportedFeatureError
from tests.conftest import encode, make_photo

NEWEST, OLDER, QWEN21 = "qwen-image-edit-tiny", "qwen-image-edit-2509-tiny", "qwen-image-2.1-tiny"


def job(model: str | None) -> EditSpec:
    return EditSpec(
        prompt="make it warmer", images=[encode(make_photo())], model=model, seed=5,
        lightning_steps=None, num_inference_steps=2, output_format="png",
    )  # fmt: skip


def swapping(registry, resident: int):
    memory = registry.memory.model_copy(update={"resident_edit_models": resident})
    return registry.model_copy(update={"swap": True, "memory": memory})


@pytest.fixture(scope="module")
def swap_engine(registry):
    from pipelines import EditEngine

    return EditEngine(swapping(registry, resident=2))


def test_jobs_swap_models_least_recently_used_out_and_report_it(swap_engine, engine):
    assert swap_engine.models.names == [NEWEST]  # the default, loaded at start
    first = swap_engine.run(job(None))
    assert first.record["swap"] is None and "swap" not in first.timings
    steps = []
    for model in (OLDER, QWEN21, OLDER, NEWEST):
        result = swap_engine.run(job(model))
        assert result.record["model"] == model
        steps.append(result.record["swap"])
    assert steps[0]["loaded"] == OLDER and steps[0]["unloaded"] == []  # room for two
    assert steps[1] == {"loaded": QWEN21, "unloaded": [NEWEST], "seconds": steps[1]["seconds"]}
    assert steps[2] is None  # still loaded: nothing to swap
    assert steps[3]["unloaded"] == [QWEN21]  # 2509 ran more recently than 2.1
    assert steps[3]["seconds"] > 0
    assert swap_engine.models.names == [OLDER, NEWEST]
    # a model swapped back in paints what an engine that never swapped paints
    assert swap_engine.run(job(NEWEST)).images[0].data == engine.run(job(NEWEST)).images[0].data


def test_a_swap_is_timed_on_the_job(swap_engine):
    swap_engine.run(job(QWEN21))  # make sure the next job swaps
    result = swap_engine.run(job(OLDER if OLDER not in swap_engine.models.names else NEWEST))
    assert result.timings["swap"] == result.record["swap"]["seconds"] > 0
    assert result.timings["total"] >= result.timings["swap"]
    assert any(w.startswith(f"{result.record['model']} was loaded for this job in") for w in result.warnings)


def test_without_swap_a_job_for_another_model_is_refused_naming_the_setting(engine):
    with pytest.raises(UnsupportedFeatureError) as err:
        engine.run(job(OLDER))
    assert err.value.field == "model" and "swap: true" in err.value.message
    assert engine.models.names == [NEWEST]


def test_a_model_swapped_out_is_freed_before_the_next_one_loads(registry, monkeypatch):
    import gc
    import weakref

    from pipelines import EditEngine, model_swap

    one_at_a_time = EditEngine(swapping(registry, resident=1))
    first = weakref.ref(one_at_a_time.edit.pipe.transformer)
    alive_at_load = []
    real_load = model_swap.load_edit_model

    def load(*args, **kwargs):
        gc.collect()
        alive_at_load.append(first() is not None)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_swap, "load_edit_model", load)
    result = one_at_a_time.run(job(OLDER))
    assert result.record["swap"]["unloaded"] == [NEWEST]
    # nothing kept the unloaded model's weights alive while the next one loaded: one model's memory
    assert alive_at_load == [False]
    assert one_at_a_time.models.names == [OLDER]


def test_a_swapping_engine_plans_every_model_it_may_load(registry):
    from pipelines.memory_settings import MemorySettings
    from pipelines.model_swap import ResidentEditModels

    planned = MemorySettings(plan="resident", gpu_memory_gib=2)  # a named plan applies on a CPU too
    fixed = ResidentEditModels(registry.model_copy(update={"memory": planned}))
    assert list(fixed.largest_sides()) == [NEWEST]  # one model: only its own plan
    swap = ResidentEditModels(swapping(registry.model_copy(update={"memory": planned}), resident=1))
    sides = swap.largest_sides()  # each model's own plan (what the API holds its jobs to)
    assert set(sides) == {NEWEST, OLDER, QWEN21} and all(side >= 64 for side in sides.values())
