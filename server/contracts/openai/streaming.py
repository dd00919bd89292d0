"""OpenAI's streamed edits: ``image_edit.partial_image`` events as the worker writes previews, then
``image_edit.completed`` per picture (or an ``error`` event), as the ``openai`` client reads them.
The stream wakes on the job-change signal the worker sends after each preview (server/job_events.py)."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from PIL import Image
from starlette.concurrency import run_in_threadpool

from ...jobs import JobRecord, JobStatus
from .service import OpenAIService, Plan, render_error

_PREVIEW = re.compile(r"^(\d+)-(\d+)\.(png|jpeg|webp)$")


def _sse(event: str, payload: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _previews(service: OpenAIService, job_id: str) -> list[tuple[int, int, Path]]:
    folder = service.core.inputs.previews(job_id)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _PREVIEW.match(path.name)
        if match:
            found.append((int(match[1]), int(match[2]), path))
    return sorted(found)


async def stream(service: OpenAIService, record: JobRecord, owner: str, plan: Plan) -> AsyncIterator[bytes]:
    """``image_edit.partial_image`` events as the worker writes previews, then one
    ``image_edit.completed`` per picture (or an ``error`` event), as the openai client reads them."""
    sent: set[tuple[int, int]] = set()
    finished = False
    base = {"background": "opaque", "output_format": plan.output_format, "quality": plan.quality}
    try:
        async with service.core.events.watch(record.id) as watch:  # the worker signals each preview
            while True:
                record = await run_in_threadpool(service.core.get_job, record.id, owner)
                # Previews are written before the job ends: a scan after a terminal read is complete.
                for image_index, partial_index, path in _previews(service, record.id):
                    if (image_index, partial_index) in sent:
                        continue
                    sent.add((image_index, partial_index))
                    data = path.read_bytes()
                    yield _sse(
                        "image_edit.partial_image",
                        base
                        | {
                            "type": "image_edit.partial_image",
                            "b64_json": base64.b64encode(data).decode(),
                            "created_at": int(time.time()),
                            "partial_image_index": len(sent) - 1,
                            "size": _picture_size(data),
                        },
                    )
                if record.status.is_terminal():
                    break
                await watch.wait()
        finished = True
        if record.status != JobStatus.COMPLETED:
            failure = service.failure(record)
            yield _sse("error", json.loads(render_error(failure).body))
            return
        usage = service._usage(record).model_dump()
        blobs = service._pictures(record)
        for blob, result in zip(blobs, record.results, strict=True):
            event = base | {
                "type": "image_edit.completed",
                "b64_json": base64.b64encode(blob).decode(),
                "created_at": int(record.finished_at or time.time()),
                "size": f"{result.width}x{result.height}",
                "usage": usage,
            }
            if plan.enhance:
                event["revised_prompt"] = result.revised_prompt
            yield _sse("image_edit.completed", event)
        service._drop_inline(record, plan)
    finally:
        if not finished:  # the client went away mid-stream: nobody will read this edit
            service.core.cancel(record.id, owner)
        service.core.inputs.drop_previews(record.id)


def _picture_size(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        return f"{img.width}x{img.height}"
