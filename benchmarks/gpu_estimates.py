"""How long each case of the GPU check will take, estimated before it runs.

A job's time is its transformer FLOPs (``flops.py``) over an achieved rate, plus a per-job overhead
(text encoder, VAE, post-processing). Until an engine case has run, the rate is ``ASSUMED_FRACTION``
of the device's peak and the overhead an assumed figure; every engine case then replaces both with
what it measured (retouch path: Qwen-Image FLOPs / denoise p50, and end-to-end minus denoise), so
later estimates use this device's own numbers. Building, compiling and starting the server are not
FLOP-bound: they use the assumed seconds below (on a GPU: a guess for an H100/H200, to be replaced
by the first real run's figures) until the build case has measured the build.
"""

from __future__ import annotations

import math

from benchmarks import flops

ASSUMED_FRACTION = 0.5  # of the bf16 bound before anything is measured (issue 7's target: 0.8)
TEXT_TOKENS = 256  # prompt + template + the ~196 vision tokens of one condition picture
# Not FLOP-bound, in seconds: GPU (full size) and CPU (tiny set).
ASSUMED = {
    "cuda": {"rate": None, "overhead_s": 0.6, "build_s": 60.0, "compile_s": 60.0, "fp8_s": 20.0,
             "server_start_s": 15.0, "environment_s": 5.0},
    "cpu": {"rate": 5e10, "overhead_s": 0.5, "build_s": 20.0, "compile_s": 30.0, "fp8_s": 1.0,
            "server_start_s": 15.0, "environment_s": 1.0},
}  # fmt: skip


class Estimator:
    def __init__(self, device_type: str, peak_tflops: float | None, side: int, tiny: bool = False):
        assumed = ASSUMED["cuda" if device_type == "cuda" else "cpu"]
        self.cuda = device_type == "cuda"
        self.side = side
        self.fixed = dict(assumed)
        self.rate = peak_tflops * 1e12 * ASSUMED_FRACTION if peak_tflops else assumed["rate"]
        self.overhead_s = assumed["overhead_s"]
        # The built model's config replaces it after the build. Until then the tiny set's jobs are
        # taken to cost their overhead alone: their FLOPs are negligible on any CPU.
        self.config = None if tiny else flops.qwen_edit_config()
        self.txt_tokens = TEXT_TOKENS
        self.basis = "assumed"

    def forward_s(self) -> float:
        if self.config is None:
            return 0.0
        img = 2 * flops.image_tokens(self.side, self.side)  # the output and one condition picture
        return flops.qwen_image_forward_flops(self.config, img, self.txt_tokens) / self.rate

    def job_s(self, forwards: int) -> float:
        return forwards * self.forward_s() + self.overhead_s

    def steps_that_fit(self, seconds: float, jobs: int, forwards_per_step: int, most: int) -> int:
        """The most denoising steps (at most ``most``) with which ``jobs`` jobs fit in ``seconds``."""
        per_job = seconds / jobs - self.overhead_s
        return max(1, min(most, math.floor(per_job / (forwards_per_step * self.forward_s()))))

    def learn_model(self, transformer_config: dict) -> None:
        self.config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}

    def learn_build(self, seconds: float) -> None:
        self.fixed["build_s"] = seconds

    def learn_case(self, case: dict) -> None:
        """Take the achieved rate and the per-job overhead from an engine case's retouch path."""
        r = case.get("retouch")
        if not r:
            return
        denoise = r["stages"]["denoise"]["p50"]
        forwards = r["forwards"]["qwen"]
        if denoise > 0 and r["flops"]["qwen_transformer"] > 0:
            self.rate = r["flops"]["qwen_transformer"] / denoise
            self.txt_tokens = max(txt for _batch, _img, txt in forwards)
        busy = denoise + r["stages"]["refine"]["p50"]
        self.overhead_s = max(0.0, r["stages"]["end_to_end"]["p50"] - busy)
        self.basis = "measured"
