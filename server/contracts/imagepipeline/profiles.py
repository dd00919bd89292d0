"""Identity profiles: defaults and a prompt template applied to edit requests that name them.

Templates come from API users, so they are rendered by server/safe_templates.py: Jinja2's immutable
sandbox plus a parse-time allowlist (no loops, macros, includes or arithmetic), only ``user_prompt``
in scope.
"""

from __future__ import annotations

from ... import safe_templates
from ...errors import ServiceError
from .protocol import EditRequest

_SAMPLE_PROMPT = "make the sky blue"


def render_template(template: str, user_prompt: str) -> str:
    try:
        return safe_templates.render(template, user_prompt=user_prompt)
    except safe_templates.TemplateRefused as exc:
        raise ServiceError(
            "INVALID_PARAMETERS", f"prompt_template cannot be rendered: {exc}", field="prompt_template"
        ) from None


def check_template(template: str | None) -> None:
    if template:
        render_template(template, _SAMPLE_PROMPT)


def apply_profile(req: EditRequest, profile: dict) -> EditRequest:
    """The request with the profile's template and defaults applied (explicit values win)."""
    sent = req.model_fields_set
    update: dict = {}
    template = profile.get("prompt_template")
    if template:
        rendered = render_template(template, req.prompt)
        if "user_prompt" in template:
            update["prompt"] = rendered
        elif profile.get("prompt_template_mode") == "prefix":
            update["prompt"] = f"{rendered}, {req.prompt}"
        else:
            update["prompt"] = f"{req.prompt}, {rendered}"
    for ours, theirs in (
        ("negative_prompt", "negative_prompt"),
        ("cfg_scale", "guidance_scale"),
        ("steps", "num_inference_steps"),
        ("width", "width"),
        ("height", "height"),
    ):
        if profile.get(ours) is not None and getattr(req, theirs) is None:
            update[theirs] = profile[ours]
    # The official client always sends output_format="webp" and seed=-1, so those defaults count
    # as "not chosen" here; otherwise a profile's format and seed could never take effect.
    if profile.get("output_format") and ("output_format" not in sent or req.output_format == "webp"):
        update["output_format"] = profile["output_format"]
    strategy = profile.get("seed_strategy", "random")
    if strategy == "fixed" and profile.get("fixed_seed") is not None:
        update["seed"] = profile["fixed_seed"]
    elif strategy == "random":
        update["seed"] = -1
    return req.model_copy(update=update)
