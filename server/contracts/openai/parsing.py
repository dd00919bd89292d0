"""One ``EditRequest`` from either body the endpoint accepts: JSON (IG1, current OpenAI) or multipart.

The ``openai`` client's ``images.edit`` sends multipart: one ``image`` file or several ``image[]``
files, an optional ``mask`` file, and every other field as text ("2", "true"); pydantic's lax mode
reads those. Files become data: URLs so both bodies reach the core the same way.
"""

from __future__ import annotations

import base64

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from pipelines.mime import sniff_mime

from ...errors import ServiceError
from ...multipart import FormLimits, open_form
from ..json_body import parse_json_object
from .protocol import EditRequest, ImageRef

IMAGE_FIELDS = ("image", "image[]")
# Generous next to the job limits (pictures per job, the model's fields), which answer more
# precisely; these only bound the parts a body may make the parser spool.
_FORM_LIMITS = FormLimits(max_files=64, max_fields=64)


def _invalid(message: str, param: str | None) -> ServiceError:
    return ServiceError("INVALID_PARAMETERS", message, field=param)


def param_name(loc) -> str | None:
    """OpenAI's way of naming a nested field: ``images[0].image_url``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def _check_refs(req: EditRequest) -> EditRequest:
    refs = [(f"images[{i}]", ref) for i, ref in enumerate(req.images)]
    if isinstance(req.mask, ImageRef):
        refs.append(("mask", req.mask))
    for name, ref in refs:
        if ref.file_id is not None:
            raise ServiceError(
                "UNSUPPORTED_PARAMETER",
                f"{name}.file_id is not supported here: send image_url (a data: or http(s) URL)",
                field=f"{name}.file_id",
            )
        if not ref.image_url:
            raise _invalid(f"{name}.image_url is required", f"{name}.image_url")
    return req


def _validation_error(exc: ValidationError) -> ServiceError:
    err = exc.errors()[0]
    param = param_name(err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return _invalid(f"Unrecognized request argument supplied: {param}", param)
    return _invalid(f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", ""), param)


async def _data_url(upload: UploadFile) -> str:
    data = await upload.read()
    mime = sniff_mime(data) or upload.content_type or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def _from_multipart(request: Request) -> EditRequest:
    fields: dict = {}
    images: list[ImageRef] = []
    async with open_form(request, _FORM_LIMITS, field="image") as form:
        for key, value in form.multi_items():
            if key in IMAGE_FIELDS:
                if not isinstance(value, UploadFile):
                    raise _invalid(f"{key} must be a file", "image")
                images.append(ImageRef(image_url=await _data_url(value)))
            elif key == "mask":
                fields["mask"] = await _data_url(value) if isinstance(value, UploadFile) else value
            elif isinstance(value, UploadFile):
                raise _invalid(f"Unrecognized file field supplied: {key}", key)
            elif key in fields:
                raise _invalid(f"{key} was sent more than once", key)
            elif value != "":  # the client sends an explicit None as an empty field
                fields[key] = value
    if not images:
        raise _invalid("image is required: send one image file (or several as image[])", "image")
    if "images" in fields:
        raise _invalid("send pictures as image/image[] files in a multipart body", "images")
    try:
        return _check_refs(EditRequest.model_validate(fields | {"images": images}))
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def parse_edit_request(request: Request) -> tuple[EditRequest, str]:
    """The request and the field name its pictures came in (for error messages)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _from_multipart(request), "image"
    if content_type and not content_type.startswith("application/json"):
        raise _invalid("send the request as application/json or multipart/form-data", None)
    body = parse_json_object(await request.body(), field=None)
    try:
        req = EditRequest.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if not req.images:
        raise _invalid("images is required: a list of {image_url} objects (data: or http(s) URLs)", "images")
    return _check_refs(req), "images"
