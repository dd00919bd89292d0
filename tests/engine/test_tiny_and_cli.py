"""`retouch weights tiny` and `retouch edit` as a newcomer runs them."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from pipelines.tiny.build import build_tiny_weights
from tests.conftest import encode, make_photo

RETOUCH = [sys.executable, "-m", "server.cli"]
ROOT = Path(__file__).resolve().parents[2]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_tiny_weights_are_deterministic_and_small(tiny_weights, tmp_path):
    again = build_tiny_weights(tmp_path / "again")
    assert digest(again.parent) == digest(tiny_weights.parent)
    size = sum(p.stat().st_size for p in tiny_weights.parent.rglob("*") if p.is_file())
    assert size < 20 * 1024 * 1024


def test_demo_set_has_the_production_limits_resolutions_qualities_and_model_names(tiny_weights):
    from pipelines import load_registry

    demo, production = load_registry(tiny_weights), load_registry(ROOT / "weights.yaml")
    assert demo.limits == production.limits and demo.limits.max_output_side == 2048
    assert demo.resolutions == production.resolutions
    assert demo.qualities == production.qualities
    assert set(demo.public_models) == set(production.public_models)
    assert demo.demo and not production.demo


def test_tiny_lora_uses_the_kohya_lightning_key_format(tiny_weights):
    state = load_file(tiny_weights.parent / "qwen-image-lightning" / "lightning-8steps.safetensors")
    assert "transformer_blocks.0.attn.to_q.lora_down.weight" in state
    assert "transformer_blocks.0.attn.to_q.lora_up.weight" in state
    assert "transformer_blocks.1.img_mlp.net.2.alpha" in state


def test_tiny_tokenizer_keeps_qwen_special_token_ids(tiny_weights):
    import json

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_weights.parent / "qwen-image-edit" / "processor")
    config = json.loads(
        (tiny_weights.parent / "qwen-image-edit" / "text_encoder" / "config.json").read_text()
    )
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"]
    assert processor.tokenizer.convert_tokens_to_ids("<|vision_start|>") == config["vision_start_token_id"]


def run_cli(*args, cwd=None):
    return subprocess.run([*RETOUCH, *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def test_edit_command_writes_a_picture(tiny_weights, tmp_path):
    src = tmp_path / "photo.jpg"
    make_photo().save(src, "JPEG")
    out = tmp_path / "out.png"
    done = run_cli(
        "edit", "--weights", str(tiny_weights), "--image", str(src), "--prompt", "make it warmer",
        "--seed", "5", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.size == (96, 64)
    assert "seed 5" in done.stdout


def test_edit_command_with_mask_refine_and_two_images(tiny_weights, tmp_path):
    a, b, mask = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mask.png"
    make_photo().save(a)
    make_photo(64, 64, seed=3).save(b)
    Image.new("L", (96, 64), 255).save(mask)
    out = tmp_path / "out.webp"
    done = run_cli(
        "edit", "--weights", str(tiny_weights), "--image", str(a), "--image", str(b), "--mask", str(mask),
        "--prompt", "put the object from image 2 on the table", "--refine", "0.3", "--lightning-steps", "4",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Image.open(out).format == "WEBP"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--steps", "0", "--no-fast"], "num_inference_steps must be within 1..100"),
        (["--lightning-steps", "6"], "no Lightning LoRA for 6 steps"),
        (["--refine", "2"], "refine_strength must be within 0..1"),
    ],
)
def test_edit_command_bad_input_exits_2_with_one_line(tiny_weights, tmp_path, extra, reason):
    src = tmp_path / "photo.png"
    make_photo().save(src)
    done = run_cli(
        "edit", "--weights", str(tiny_weights), "--image", str(src), "--prompt", "x", "--out",
        str(tmp_path / "o.png"), *extra,
    )  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and reason in lines[0], done.stderr


def test_edit_command_unreadable_image_and_mask_size(tiny_weights, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    done = run_cli(
        "edit", "--weights", str(tiny_weights), "--image", str(bad), "--prompt", "x", "--out",
        str(tmp_path / "o.png"),
    )  # fmt: skip
    assert done.returncode == 2 and "could not be read" in done.stderr
    src, mask = tmp_path / "p.png", tmp_path / "m.png"
    src.write_bytes(encode(make_photo()))
    Image.new("L", (10, 10), 255).save(mask)
    done = run_cli(
        "edit", "--weights", str(tiny_weights), "--image", str(src), "--mask", str(mask), "--prompt", "x",
        "--out", str(tmp_path / "o.png"),
    )  # fmt: skip
    assert done.returncode == 2 and "10x10" in done.stderr and "96x64" in done.stderr


def test_missing_weights_exit_2_with_the_paths(tmp_path):
    src = tmp_path / "p.png"
    make_photo().save(src)
    done = run_cli(
        "edit", "--weights", str(ROOT / "weights.yaml"), "--image", str(src), "--prompt", "x", "--out",
        str(tmp_path / "o.png"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "Qwen-Image-Edit-2511" in done.stderr and "retouch weights tiny" in done.stderr
    assert not io.StringIO(done.stderr).read().count("Traceback")
