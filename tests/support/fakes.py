"""A fake engine for queue and HTTP unit tests (``RETOUCH_ENGINE_FACTORY=tests.support.fakes:FakeEngine``).

It honours the engine's interface (``run(spec, on_progress) -> EditResult``) in milliseconds.
The prompt steers it, so tests can provoke each path: "crash" kills the worker process,
"hang" stops calling back, "slow" takes many small steps, "oom" raises the engine's OOM error.
End-to-end tests use the real engine on tiny weights instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import time

from PIL import Image

from pipelines.errors import GPUOutOfMemoryError
from pipelines.spec import EditResult, EditSpec, OutputImage

MIME = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}


class FakeEngine:
    def __init__(self, registry):
        self.registry = registry

    def run(self, spec: EditSpec, on_progress=None) -> EditResult:
        progress = on_progress or (lambda stage, step, total: None)
        if "crash" in spec.prompt:
            os._exit(3)
        if "oom" in spec.prompt:
            raise GPUOutOfMemoryError("the GPU ran out of memory for this job; try a smaller size")
        if "hang" in spec.prompt:
            time.sleep(3600)
        steps = 200 if "slow" in spec.prompt else 4
        progress("encode", 0, 1)
        for step in range(1, steps + 1):
            progress("denoise", step, steps)
            time.sleep(0.05 if "slow" in spec.prompt else 0.005)
        src = Image.open(io.BytesIO(spec.images[0]))
        size = (spec.width or src.width, spec.height or src.height)
        buf = io.BytesIO()
        Image.new("RGB", size, (10, 120, 200)).save(buf, spec.output_format.upper())
        data = buf.getvalue()
        seed = 1234 if spec.seed == -1 else spec.seed
        progress("postprocess", 1, 1)
        out = OutputImage(
            data=data,
            mime_type=MIME[spec.output_format],
            format=spec.output_format,
            width=size[0],
            height=size[1],
            sha256=hashlib.sha256(data).hexdigest(),
            seed=seed,
        )
        return EditResult(images=[out], seed=seed, timings={"total": 0.01}, record={}, warnings=[])
