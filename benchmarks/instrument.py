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
        self.qwen: list[tuple[int, int, int]] = []  # (batch, image tokens, text tokens)
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

        transformer.register_forward_pre_hook(qwen_hook, with_kwargs=True)
        if refiner is not None:

            def z_hook(module, args, kwargs):
                xs, caps = args[0], args[2] if len(args) > 2 else kwargs["cap_feats"]
                for x, cap in zip(xs, caps, strict=True):
                    self.z.append((x.shape[1] * (x.shape[2] // 2) * (x.shape[3] // 2), cap.shape[0]))

            refiner.transformer.register_forward_pre_hook(z_hook, with_kwargs=True)


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
