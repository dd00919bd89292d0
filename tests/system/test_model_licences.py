"""A model whose licence is not a permissive open one is served only once the operator accepts it
(``accept_license: true`` in weights.yaml): ``retouch serve`` refuses before anything loads,
naming the model and the licence."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipelines import load_registry
from tests.system.test_demo_serve import ROOT

RESEARCH = {
    "name": "Qwen Research License",
    "url": "https://huggingface.co/Qwen/Qwen-Image-2.1/blob/main/LICENSE",
}


def weights_with(tmp_path, model: str = "qwen-image-edit-2511", **entry) -> str:
    """The committed registry with ``entry`` changed in ``model`` (by default the one a pod loads)."""
    data = yaml.safe_load((ROOT / "weights.yaml").read_text())
    data["models"][model].update(entry)
    path = tmp_path / "weights.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def serve(weights: str, tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--weights", weights, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env},
    )  # fmt: skip


def test_an_unaccepted_research_licence_is_refused_at_start_naming_it(tmp_path):
    done = serve(weights_with(tmp_path, license=RESEARCH), tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "models.qwen-image-edit-2511: Qwen Research License" in done.stderr
    assert "accept_license: true" in done.stderr


def test_the_committed_registry_declares_21_unaccepted_and_a_pod_loading_it_is_refused(tmp_path):
    registry = load_registry(ROOT / "weights.yaml")
    assert registry.license_refusal("qwen-image-2.1") and "Qwen Research License" in (
        registry.license_refusal("qwen-image-2.1")
    )
    # a pod loading the default model is not held back by a model it does not load ...
    assert registry.unaccepted_licenses(registry.pod_models()) == []
    done = serve(str(ROOT / "weights.yaml"), tmp_path)
    assert (
        done.returncode == 2 and "not accepted" not in done.stderr and "Qwen-Image-Edit-2511" in done.stderr
    )
    assert "Qwen-Image-2.1" not in done.stderr  # nor asked for files it does not load
    # ... but one told to load it is refused at start, naming the licence
    done = serve(str(ROOT / "weights.yaml"), tmp_path, RETOUCH_EDIT_MODEL="qwen-image-2.1")
    assert done.returncode == 2 and "models.qwen-image-2.1: Qwen Research License" in done.stderr


def test_a_job_for_a_model_whose_licence_is_not_accepted_is_refused_naming_it():
    from pipelines import EditParams, UnsupportedFeatureError
    from pipelines.validation import check_params

    registry = load_registry(ROOT / "weights.yaml")
    with pytest.raises(UnsupportedFeatureError) as err:
        check_params(EditParams(prompt="x", model="qwen-image-2.1"), registry)
    assert err.value.field == "model" and "Qwen Research License" in err.value.message


def test_an_accepted_licence_gets_past_the_check(tmp_path):
    done = serve(weights_with(tmp_path, license=RESEARCH, accept_license=True), tmp_path)
    # the next check is the weights on disk, which this registry's empty root lacks
    assert done.returncode == 2 and "not accepted" not in done.stderr and "does not exist" in done.stderr


@pytest.mark.parametrize(
    "license, accepted, refused",
    [
        ({"id": "Apache-2.0"}, False, False),
        (RESEARCH, False, True),
        (None, False, True),
        (RESEARCH, True, False),
    ],
)
def test_which_licences_need_accepting(tmp_path, license, accepted, refused):
    entry = {"accept_license": accepted} | ({"license": license} if license else {})
    registry = load_registry(weights_with(tmp_path, **entry))
    data = yaml.safe_load((ROOT / "weights.yaml").read_text())
    if license is None:  # stated nowhere: served as if not permissive
        data["models"]["qwen-image-edit-2511"].pop("license")
        (tmp_path / "weights.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        registry = load_registry(tmp_path / "weights.yaml")
    assert bool(registry.unaccepted_licenses(registry.pod_models())) == refused


def test_a_licence_needs_an_spdx_id_or_a_name_and_its_url(tmp_path):
    from pipelines.errors import RegistryError

    with pytest.raises(RegistryError, match="SPDX id, or a name and the URL"):
        load_registry(weights_with(tmp_path, license={"name": "Some licence"}))
