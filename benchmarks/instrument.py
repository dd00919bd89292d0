"""Instruments for the engine benchmark: stage timers and the stock pipeline behind the engine's call."""

from __future__ import annotations

import time

import torch


class Probe:
    """Stage spans (CUDA-synchronised perf_counter) and the transformers' token counts per forward."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.spans: dict[str, float] = {}
        self.first: dict[str, float] = {}
        # per edit-transformer forward: (batch, image tokens, text tokens) for Qwen-Image-Edit;
        # (batch, query tokens, key tokens) for Qwen-Image 2.1, whose prefix KV cache recomputes
        # only the target's tokens after the first step (flops.edit_forward_flops reads both)
        self.qwen: list[tuple[int, int, int]] = []
        self.z: list[tuple[int, int]] = []  # (image tokens, caption tokens) per sample

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def wrap(self, obj, attr: str, stage: str) -> None:
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = self.now()
            self.first.setdefault(stage, t0)
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans[stage] = self.spans.get(stage, 0.0) + self.now() - t0

        object.__setattr__(obj, attr, timed)  # an instance attribute shadows the method

    def install(self, pipes, vae, transformer, refiner) -> None:
        for pipe in pipes:
            self.wrap(pipe, "encode_prompt", "text_encoder")
        self.wrap(vae, "encode", "vae_encode")
        self.wrap(vae, "decode", "vae_decode")

        def qwen_hook(module, args, kwargs):
            if "denoise" not in self.first:
                self.first["denoise"] = self.now()
            hs, ehs = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            self.qwen.append((hs.shape[0], hs.shape[1], ehs.shape[1]))

        def qwen21_hook(module, args, kwargs):
            if "denoise" not in self.first:
                self.first["denoise"] = self.now()
            self.qwen.append(qwen21_tokens(kwargs))

        single_stream = "context_in_dim" in transformer.config  # Qwen-Image 2.1
        transformer.register_forward_pre_hook(qwen21_hook if single_stream else qwen_hook, with_kwargs=True)
        if refiner is not None:

            def z_hook(module, args, kwargs):
                xs, caps = args[0], args[2] if len(args) > 2 else kwargs["cap_feats"]
                for x, cap in zip(xs, caps, strict=True):
                    self.z.append((x.shape[1] * (x.shape[2] // 2) * (x.shape[3] // 2), cap.shape[0]))

            refiner.transformer.register_forward_pre_hook(z_hook, with_kwargs=True)


def qwen21_tokens(kwargs: dict) -> tuple[int, int, int]:
    """(batch, query, key tokens) of one QwenImage21Transformer2DModel forward, from shapes alone (no
    device sync). The joint sequence is the prompt's text tokens, then every picture's latents
    (conditions, then the target); each image slot of the encoded prompt stands for 2x2 latents.
    A ``cached`` forward (the prefix KV cache) recomputes only the target's tokens over all keys.
    """
    hs, ehs, shapes = kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["img_shapes"][0]
    condition_latents = sum(f * h * w for f, h, w in shapes[:-1])
    keys = ehs.shape[1] - condition_latents // 4 + hs.shape[1]
    f, h, w = shapes[-1]
    queries = f * h * w if kwargs.get("kv_cache_mode") == "cached" else keys
    return hs.shape[0], queries, keys


class StockEditPipe:
    """Stock ``QwenImageEditPlusPipeline.__call__`` behind the call the engine makes on its edit pipe."""

    def __init__(self, stock):
        object.__setattr__(self, "stock", stock)

    def __getattr__(self, name):
        return getattr(self.stock, name)

    def __setattr__(self, name, value):  # the engine sets .scheduler per job
        setattr(self.stock, name, value)

    def __call__(self, images, prompt, *, height, width, num_inference_steps, generator,
                 negative_prompt=None, true_cfg_scale=4.0, cfg_norm_strength=1.0, mask=None,
                 vae_condition_pixels, vl_condition_pixels, on_step=None,
                 max_sequence_length=512, preview_steps=(), on_preview=None):  # fmt: skip
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as stock_module

        from pipelines.edit_loop import EditOutput

        if mask is not None or cfg_norm_strength != 1.0 or preview_steps:
            raise ValueError("the stock pipeline has no mask, no previews and only the norm-rescaled CFG")
        # The stock module fixes the condition areas as module constants; same values as the
        # registry's for the real model (1 MP / 384^2), the tiny set declares smaller ones.
        saved = stock_module.VAE_IMAGE_SIZE, stock_module.CONDITION_IMAGE_SIZE
        stock_module.VAE_IMAGE_SIZE = vae_condition_pixels
        stock_module.CONDITION_IMAGE_SIZE = vl_condition_pixels
        try:
            out = self.stock(image=images, prompt=prompt, negative_prompt=negative_prompt,
                             true_cfg_scale=true_cfg_scale, height=height, width=width,
                             num_inference_steps=num_inference_steps, generator=generator, output_type="pil",
                             max_sequence_length=max_sequence_length)  # fmt: skip
        finally:
            stock_module.VAE_IMAGE_SIZE, stock_module.CONDITION_IMAGE_SIZE = saved
        return EditOutput(images=out.images, timings={})


class StockQwen21Pipe(StockEditPipe):
    """Stock ``QwenImage21Pipeline.__call__`` behind the engine's call, with the Retouch pipe's
    prefix-KV-cache setting (``use_kv_cache``) so that both run the same forwards."""

    def __init__(self, stock, use_kv_cache: bool = True):
        super().__init__(stock)
        object.__setattr__(self, "use_kv_cache", use_kv_cache)

    def __call__(self, images, prompt, *, height, width, num_inference_steps, generator,
                 negative_prompt=None, true_cfg_scale=1.0, cfg_norm_strength=0.0, mask=None,
                 vae_condition_pixels, vl_condition_pixels=None, on_step=None, preview_steps=(),
                 on_preview=None):  # fmt: skip
        from pipelines.edit_loop import EditOutput

        if mask is not None or cfg_norm_strength or preview_steps:
            raise ValueError("the stock 2.1 pipeline has no mask, no previews and only plain CFG")
        side = round(vae_condition_pixels**0.5)
        if side * side != vae_condition_pixels:  # stock resizes conditions to output_resolution^2
            raise ValueError(
                f"the stock 2.1 pipeline reads a square condition area, not {vae_condition_pixels}"
            )
        cfg = true_cfg_scale > 1 and negative_prompt is not None
        out = self.stock(prompt=prompt, image=images, negative_prompt=negative_prompt if cfg else None,
                         true_cfg_scale=true_cfg_scale, height=height, width=width,
                         num_inference_steps=num_inference_steps, generator=generator, output_type="pil",
                         output_resolution=side, use_kv_cache=self.use_kv_cache)  # fmt: skip
        # its VAE paints RGBA, as Retouch's, which hands the engine RGB
        return EditOutput(images=[picture.convert("RGB") for picture in out.images], timings={})
