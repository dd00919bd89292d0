"""What the GPU check's cases share: the ``Context`` (device, budget, engines) and the ``Case``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import engine_latency
from benchmarks.gpu_estimates import Estimator


@dataclass
class Context:
    device: torch.device
    tiny: bool
    side: int
    workdir: Path
    peak_tflops: float | None
    estimator: Estimator
    deadline: float
    engines: dict | None = None
    probe: object = None
    notes: list[str] = field(default_factory=list)
    layers: int | None = None  # full size truncated to N layers: a smoke test of that path, no figures
    results: dict = field(default_factory=dict)  # each case's record once it ran, for later cases
    # Qwen-Image 2.1 while built (gpu_qwen21_cases): its {"retouch", "stock"} engines, probe, state
    qwen21: dict | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def runs(self, n: int) -> int:
        """Timed runs: the case's own number on a GPU, one in a dry run (tiny set, truncated models)."""
        return 1 if self.tiny or self.layers else n

    def warmups(self, n: int) -> int:
        return 0 if self.tiny or self.layers else n

    @property
    def engine(self):
        return self.engines["retouch"]

    @property
    def pictures(self) -> str:
        return str(self.workdir / "exact-pictures")


@dataclass
class Case:
    name: str
    what: str
    estimate: Callable[[Context], float]
    run: Callable[[Context], dict]
    needs_engine: bool = True
    # what else it needs: the reason it is skipped when that is missing, else None
    missing: Callable[[Context], str | None] | None = None


def run_engine_case(ctx: Context, name: str, engines: dict | None = None, *, runs: int, warmup: int,
                    learn: bool = True, **kwargs) -> dict:  # fmt: skip
    """``engine_latency.run_case`` at the check's size and run counts; unless the runs compiled
    something (``learn=False``), later estimates use the rate and overhead it measured."""
    engines = engines or ctx.engines
    result = engine_latency.run_case(name, engines, ctx.probe, ctx.peak_tflops, side=ctx.side,
                                     runs=ctx.runs(runs), warmup=ctx.warmups(warmup), **kwargs)  # fmt: skip
    if learn:
        ctx.estimator.learn_case(result)
    return result
