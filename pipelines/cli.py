"""Bodies of the engine's commands (`retouch weights tiny`, `retouch edit`).

Bad input exits with code 2 and one line saying why; the console entry point lives in
``server.cli`` so that all commands share one ``retouch`` program.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import EngineError, InvalidInputError, RegistryError
from .spec import EditSpec

FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def weights_tiny_command(directory: str) -> None:
    from .tiny.build import build_tiny_weights

    path = build_tiny_weights(directory)
    print(f"wrote {path}")


def edit_command(
    *,
    weights: str,
    images: list[str],
    prompt: str,
    out: str,
    mask: str | None,
    seed: int,
    steps: int | None,
    guidance: float | None,
    lightning_steps: int | None,
    refine: float,
    width: int | None,
    height: int | None,
    fmt: str | None,
    negative_prompt: str | None,
    num_images: int,
) -> None:
    from tqdm import tqdm

    from .registry import load_registry
    from .validation import check_spec

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            _fail(f"cannot read {what} {path}: {e.strerror}")

    out_path = Path(out)
    fmt = fmt or FORMAT_BY_SUFFIX.get(out_path.suffix.lower())
    if fmt not in ("png", "jpeg", "webp"):
        _fail(f"output format must be png, jpeg or webp (from --format or the --out suffix), got {fmt!r}")
    spec = EditSpec(
        prompt=prompt,
        images=[read(p, "image") for p in images],
        mask=read(mask, "mask") if mask else None,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=guidance,
        lightning_steps=lightning_steps,
        refine_strength=refine,
        width=width,
        height=height,
        output_format=fmt,
        negative_prompt=negative_prompt,
        num_images=num_images,
    )
    try:
        registry = load_registry(weights)
        for warning in check_spec(spec, registry):
            print(f"warning: {warning}", file=sys.stderr)
    except (InvalidInputError, RegistryError) as e:
        _fail(str(e).replace("\n", " "))

    from .engine import EditEngine

    try:
        engine = EditEngine(registry)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    bars: dict[str, tqdm] = {}

    def on_progress(stage: str, step: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False, file=sys.stderr)
        bar.total = total
        bar.n = step
        bar.refresh()

    try:
        result = engine.run(spec, on_progress)
    except InvalidInputError as e:
        _fail(e.message)
    except EngineError as e:
        print(f"error: {e.message} ({e.code})", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for bar in bars.values():
            bar.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for k, image in enumerate(result.images):
        target = out_path if len(result.images) == 1 else out_path.with_stem(f"{out_path.stem}_{k + 1}")
        target.write_bytes(image.data)
        written.append(f"{target} ({image.width}x{image.height}, seed {image.seed})")
    total = result.timings.get("total", 0.0)
    print(f"wrote {', '.join(written)} in {total:.2f}s")
