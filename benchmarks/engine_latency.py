"""Engine latency per stage, Retouch vs stock diffusers, and the fraction of the FLOP bound (issue 7).

    python benchmarks/engine_latency.py --tiny                      # CPU/CI: tiny random weights
    python benchmarks/engine_latency.py --json out.json             # GPU: full size, random bf16 weights

Each case runs through ``EditEngine.run`` twice over: once with Retouch's own denoising loop
(``RetouchQwenEditPipeline``) and once with stock ``QwenImageEditPlusPipeline.__call__`` put in
its place, same components, settings, inputs and seed, same process; input decoding, refining and
post-processing are the engine's in both. See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import flops, perf_options, report  # noqa: E402
from benchmarks.engines import DEFAULT_LORA_RANK, full_engine, install_probe, tiny_engine, with_stock  # noqa: E402
from benchmarks.instrument import Probe  # noqa: E402

CASES: dict[str, dict] = {
    "lightning-4": dict(lightning_steps=4),
    "lightning-8": dict(lightning_steps=8),
    "cfg-40": dict(lightning_steps=None, num_inference_steps=40, guidance_scale=4.0),
    "lightning-8-refine": dict(lightning_steps=8, refine_strength=0.3),
    "lightning-8-2img": dict(lightning_steps=8, n_images=2),
    "lightning-8-3img": dict(lightning_steps=8, n_images=3),
    "4k": dict(lightning_steps=8, resolution="4k"),
}
STAGES = (
    "text_encoder",
    "vae_encode",
    "denoise",
    "vae_decode",
    "refine",
    "postprocess",
    "other",
    "end_to_end",
)
PROMPT = "Replace the background with a sunlit beach and keep the person's face unchanged"


# -- one case --------------------------------------------------------------------------------------
def picture(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    arr = np.stack([x * 255 // side, y * 255 // side, (x + y) % 97 * 2], axis=-1).astype(np.uint8)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def make_spec(name: str, registry, side: int | None = None, settings: dict | None = None):
    """The case's job; ``side`` fixes the input and output size (default: the registry's 1k area)."""
    from pipelines import EditSpec

    c = dict(CASES[name] if settings is None else settings)
    size = {"width": side, "height": side} if side else {}
    side = side or int(round(registry.resolutions.area("1k") ** 0.5))
    images = [picture(side, seed) for seed in range(c.pop("n_images", 1))]
    return EditSpec(prompt=PROMPT, images=images, seed=0, **size, **c)


def run_once(engine, spec, probe: Probe) -> dict:
    probe.reset()
    if probe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(probe.device)
    t0 = probe.now()
    result = engine.run(spec)
    e2e = probe.now() - t0
    s = probe.spans
    stages = {
        "text_encoder": s.get("text_encoder", 0.0),
        "vae_encode": s.get("vae_encode", 0.0),
        "denoise": probe.first["vae_decode"] - probe.first["denoise"],
        "vae_decode": s.get("vae_decode", 0.0),
        "refine": result.timings.get("refine", 0.0),
        "postprocess": result.timings.get("postprocess", 0.0),
    }
    stages["other"] = e2e - sum(stages.values())
    stages["end_to_end"] = e2e
    qcfg = dict(engine.edit.pipe.transformer.config)
    # Qwen-Image-Edit: (batch, image, text tokens); Qwen-Image 2.1: (batch, query, key tokens)
    q = sum(b * flops.edit_forward_flops(qcfg, first, second) for b, first, second in probe.qwen)
    z = 0.0
    if probe.z:
        zcfg = dict(engine.refiner.pipe.transformer.config)
        z = sum(flops.z_image_forward_flops(zcfg, img, cap) for img, cap in probe.z)
    peak = torch.cuda.max_memory_allocated(probe.device) / 2**30 if probe.device.type == "cuda" else None
    return {"stages": stages, "qwen_flops": q, "z_flops": z, "qwen_forwards": list(probe.qwen),
            "z_forwards": list(probe.z), "peak_gib": peak, "picture": result.images[0].data}  # fmt: skip


def run_case(name, engines: dict, probe: Probe, peak_tflops, *, runs: int, warmup: int,
             side: int | None = None, settings: dict | None = None, save_pictures: str | None = None,
             compare_with: str | None = None) -> dict:  # fmt: skip
    """``runs`` timed runs per path after ``warmup`` untimed ones; ``settings`` replace CASES[name]."""
    settings = dict(CASES[name] if settings is None else settings)
    spec = make_spec(name, engines["retouch"].registry, side, settings)
    samples: dict[str, list[dict]] = {path: [] for path in engines}
    for engine in engines.values():
        for _ in range(warmup):
            run_once(engine, spec, probe)
    for _ in range(runs):  # alternate, so drift (clocks, heat) hits both paths alike
        for path, engine in engines.items():
            samples[path].append(run_once(engine, spec, probe))
    out = {"settings": settings, "runs": runs, "warmup": warmup}
    if probe.device.type == "cuda":  # the weights held while the case ran, all models together
        out["resident_gib"] = torch.cuda.memory_allocated(probe.device) / 2**30
    if side:
        out["side"] = side
    picture = samples["retouch"][0]["picture"]
    perf_options.save_picture(save_pictures, name, picture)
    out["psnr_vs_exact_db"] = perf_options.compare(compare_with, name, picture)
    for path, runs in samples.items():
        stages = {st: report.summary([r["stages"][st] for r in runs]) for st in STAGES}
        total = runs[0]["qwen_flops"] + runs[0]["z_flops"]
        e2e, dn = stages["end_to_end"]["p50"], stages["denoise"]["p50"]
        out[path] = {
            "stages": stages,
            "flops": {
                "qwen_transformer": runs[0]["qwen_flops"],
                "z_transformer": runs[0]["z_flops"],
                "total": total,
            },
            "forwards": {"qwen": runs[0]["qwen_forwards"], "z": runs[0]["z_forwards"]},
            "tflops_per_s_denoise": runs[0]["qwen_flops"] / dn / 1e12 if dn > 0 else None,
            "tflops_per_s_end_to_end": total / e2e / 1e12,
            "bound_s": total / (peak_tflops * 1e12) if peak_tflops else None,
            "fraction_of_bound": total / (peak_tflops * 1e12) / e2e if peak_tflops else None,
            "peak_memory_gib": max((r["peak_gib"] or 0) for r in runs)
            if probe.device.type == "cuda"
            else None,
        }
    if "stock" in out:
        out["ratio_stock_over_retouch"] = {
            st: out["stock"]["stages"][st]["p50"] / out["retouch"]["stages"][st]["p50"]
            for st in STAGES
            if out["retouch"]["stages"][st]["p50"] > 0
        }
        out["same_forwards"] = out["stock"]["forwards"] == out["retouch"]["forwards"]
    return out


# -- output ----------------------------------------------------------------------------------------
def _f(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def table(results: dict) -> str:
    cols = ("text_encoder", "vae_encode", "denoise", "vae_decode", "refine", "postprocess", "other")
    head = ["case", "path", "text_enc", "vae_enc", "denoise", "vae_dec", "refine", "post", "other", "e2e p50",
            "e2e p95", "TFLOP", "TF/s dn", "TF/s e2e", "bound s", "%bound", "peak GiB",
            "PSNR dB"]  # fmt: skip
    rows = [head]
    for name, case in results.items():
        if "error" in case or "skipped" in case:
            rows.append([name, "-", case.get("error", case.get("skipped", ""))[:90]])
            continue
        for path in ("retouch", "stock"):
            if path not in case:
                continue
            r, st = case[path], case[path]["stages"]
            frac = r["fraction_of_bound"]
            rows.append([name, path, *(_f(st[c]["p50"]) for c in cols), _f(st["end_to_end"]["p50"]),
                         _f(st["end_to_end"]["p95"]), _f(r["flops"]["total"] / 1e12, ".3g"),
                         _f(r["tflops_per_s_denoise"], ".3g"), _f(r["tflops_per_s_end_to_end"], ".3g"),
                         _f(r["bound_s"]), "n/a" if frac is None else f"{100 * frac:.0f}%",
                         _f(r["peak_memory_gib"], ".1f"),
                         _f(case.get("psnr_vs_exact_db") if path == "retouch" else None, ".1f")])  # fmt: skip
        if "ratio_stock_over_retouch" in case:
            ratio = case["ratio_stock_over_retouch"]
            rows.append([name, "stock/retouch", *(_f(ratio.get(c), ".2f") for c in cols),
                         _f(ratio.get("end_to_end"), ".2f")])  # fmt: skip
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(stage columns: p50 seconds over the timed runs)"


@contextmanager
def _workdir(tiny: bool):
    if tiny:
        with tempfile.TemporaryDirectory(prefix="retouch-bench-") as d:
            yield d
    else:
        yield None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny random weights through EditEngine (CPU/CI mode)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per path and case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per path and case first")
    p.add_argument("--cases", nargs="+", default=list(CASES), help=f"subset of: {', '.join(CASES)}")
    p.add_argument("--no-stock", action="store_true", help="skip the stock diffusers comparison")
    p.add_argument(
        "--perf",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="weights.yaml performance overrides for the Retouch path (implies --no-stock)",
    )
    p.add_argument("--save-pictures", metavar="DIR", help="save each case's first picture (the exact run)")
    p.add_argument("--compare-with", metavar="DIR", help="PSNR of each case against pictures saved there")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON (rewritten after every case)")
    p.add_argument("--append-results", metavar="MD", help="append date, device, versions, command, table")
    p.add_argument("--peak-tflops", type=float, help="override the device's peak bf16 TFLOP/s for the bound")
    p.add_argument(
        "--lora-rank", type=int, default=DEFAULT_LORA_RANK, help="rank of the random Lightning LoRAs"
    )
    p.add_argument("--layers", type=int, help="full size only: truncate every model to N layers (smoke test)")
    p.add_argument("--side", type=int, help="full size only: edit at SIDExSIDE instead of 1024 (smoke test)")
    args = p.parse_args(argv)
    args.cases = [c for item in args.cases for c in item.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --tiny", file=sys.stderr)
        return 2
    meta = report.run_meta(device)
    peak = args.peak_tflops or (flops.peak_tflops(meta["device"]) if device.type == "cuda" else None)
    data = {"meta": meta, "peak_tflops": peak, "cases": {}}
    with _workdir(args.tiny) as workdir:
        if args.tiny:
            engine, notes = tiny_engine(device, workdir)
            stock_pipe = None
        else:
            steps = {CASES[n]["lightning_steps"] for n in args.cases if CASES[n]["lightning_steps"]}
            refiner = any(CASES[n].get("refine_strength") or CASES[n].get("resolution") for n in args.cases)
            engine, notes, stock_pipe = full_engine(device, steps, refiner, lora_rank=args.lora_rank,
                                                    layers=args.layers, side=args.side)  # fmt: skip
        notes.append(f"peak bf16 TFLOP/s for the bound: {_f(peak, '.0f')}; FLOPs: transformers only")
        overrides = perf_options.parse(args.perf)
        notes += perf_options.apply(engine, overrides)
        if overrides:
            args.no_stock = True  # the stock pipeline would share the modified transformer
        data["notes"] = notes
        print("\n".join(report.header_lines("engine_latency", meta, notes)), flush=True)
        engines = {"retouch": engine} if args.no_stock else with_stock(engine, stock_pipe)
        probe = install_probe(engines, device)
        failed = False
        for name in args.cases:
            needs_refiner = CASES[name].get("refine_strength") or CASES[name].get("resolution")
            if needs_refiner and engine.refiner is None:
                data["cases"][name] = {"skipped": "no refiner loaded (did not fit)"}
                continue
            print(f"running {name} ...", flush=True)
            try:
                data["cases"][name] = run_case(name, engines, probe, peak, runs=args.runs, warmup=args.warmup,
                                               save_pictures=args.save_pictures,
                                               compare_with=args.compare_with)  # fmt: skip
            except Exception as e:  # keep going unattended; the JSON says what failed
                failed = True
                traceback.print_exc()
                data["cases"][name] = {"error": f"{type(e).__name__}: {e}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if args.json:
                report.write_json(args.json, data)
    text = table(data["cases"])
    print(text)
    if args.json:
        report.write_json(args.json, data)
    if args.append_results:
        title = "engine_latency" + (
            " (TINY random weights on CPU: not meaningful for speed)" if args.tiny else ""
        )
        report.append_results(args.append_results, title, meta, notes, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
