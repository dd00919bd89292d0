"""weights.yaml validation and the committed production registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from pipelines import RegistryError, load_registry, require_files

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "weights.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def tiny_dict(tiny_weights: Path) -> dict:
    return yaml.safe_load(tiny_weights.read_text())


def test_committed_registry_declares_the_production_set():
    reg = load_registry(ROOT / "weights.yaml")
    name, edit = reg.model_for("edit_plus")
    assert name == reg.default_model == "qwen-image-edit-2511"
    assert edit.hub_id == "Qwen/Qwen-Image-Edit-2511" and "inpaint" in edit.roles
    assert reg.models["qwen-image-edit-2509"].hub_id == "Qwen/Qwen-Image-Edit-2509"
    assert reg.model_for("refiner")[1].hub_id == "Tongyi-MAI/Z-Image-Turbo"
    assert {edit.loras[n].steps for n in ("lightning-4", "lightning-8")} == {4, 8}
    lightning = reg.schedulers["lightning"]
    assert math.isclose(lightning["base_shift"], math.log(3)) and lightning["shift_terminal"] is None
    assert lightning["use_dynamic_shifting"] is True and lightning["time_shift_type"] == "exponential"
    assert reg.limits.max_output_side == 2048 and reg.limits.max_input_pixels == 40_000_000


def test_missing_weights_are_named_with_how_to_get_them():
    reg = load_registry(ROOT / "weights.yaml")
    with pytest.raises(RegistryError) as err:
        require_files(reg)
    text = str(err.value)
    assert "Qwen-Image-Edit-2511" in text and "Z-Image-Turbo" in text and "does not exist" in text
    assert "retouch weights tiny" in text
    # only what a pod loads: the default edit model and the refiner, not every declared model
    assert "Qwen-Image-Edit-2509" not in text and "Qwen-Image-2.1" not in text
    with pytest.raises(RegistryError, match="Qwen-Image-Edit-2509"):
        require_files(reg.holding("qwen-image-edit-2509"))


def test_incomplete_model_folder_names_the_missing_part(tiny_weights, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_weights.parent, copy)
    shutil.rmtree(copy / "qwen-image-edit" / "vae")
    (copy / "qwen-image-lightning" / "lightning-4steps.safetensors").unlink()
    with pytest.raises(RegistryError) as err:
        require_files(load_registry(copy / "weights.yaml"))
    assert "qwen-image-edit/vae is missing" in str(err.value)
    assert "lightning-4steps.safetensors is missing" in str(err.value)


def test_errors_name_the_file_the_key_and_the_bad_value(tiny_weights, tmp_path):
    data = tiny_dict(tiny_weights)
    data["models"]["qwen-image-edit-tiny"]["default_steps"] = 500
    path = write(tmp_path, data)
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    text = str(err.value)
    assert str(path) in text and "models.qwen-image-edit-tiny.default_steps" in text and "500" in text


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["models"]["qwen-image-edit-tiny"].update(dtype="fp8"), "dtype"),
        (lambda d: d["models"]["qwen-image-edit-tiny"].update(colour="red"), "colour"),
        (
            lambda d: d["models"]["qwen-image-edit-tiny"]["loras"]["lightning-8"].update(scheduler="nope"),
            "'nope' is not in schedulers",
        ),
        (lambda d: d["modes"]["anime"].update(lora="missing-lora"), "missing-lora"),
        (lambda d: d["modes"]["anime"].update(prompt_template="no placeholder"), "{prompt}"),
        (lambda d: d["models"]["z-image-turbo-tiny"].update(roles=["edit_plus"]), "needs the pipeline"),
        (lambda d: d.pop("default_model"), "name one as default_model"),
        (lambda d: d.update(default_model="z-image-turbo-tiny"), "is not an edit model"),
        # a knob the model's pipeline never reads
        (lambda d: d["models"]["qwen-image-2.1-tiny"].update(vl_condition_pixels=4096), "reads one area"),
        (
            lambda d: d["models"]["qwen-image-edit-tiny"].update(performance={"kv_cache": False}),
            "this pipeline has none",
        ),
    ],
)
def test_invalid_registries_are_refused(tiny_weights, tmp_path, mutate, expected):
    data = tiny_dict(tiny_weights)
    mutate(data)
    with pytest.raises(RegistryError, match=None) as err:
        load_registry(write(tmp_path, data))
    assert expected in str(err.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(write(tmp_path, "models: [unclosed"))
    with pytest.raises(RegistryError, match="file not found"):
        load_registry(tmp_path / "nope.yaml")
