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
import copy
import dataclasses
import io
import os
import sys
import tempfile
import time
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
from benchmarks.instrument import Probe, StockEditPipe  # noqa: E402

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
DEFAULT_LORA_RANK = 32  # the published Lightning LoRAs' rank is not stated here; 32 is assumed
RANDOM_NOTE = "random weights: timings reflect the architectures' compute, not image quality"


# -- models ----------------------------------------------------------------------------------------
def tiny_engine(device: torch.device, workdir: str):
    from pipelines import EditEngine, build_tiny_weights, load_registry

    registry = load_registry(build_tiny_weights(workdir))
    return EditEngine(registry, str(device)), ["tiny random-weight models on the real code path (EditEngine)"]


def full_engine(device: torch.device, names: list[str], args):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from benchmarks import full_models as fm
    from pipelines import load_registry
    from pipelines.engine import EditEngine
    from pipelines.loader import LoadedEditModel, LoadedRefiner

    registry = load_registry(report.ROOT / "weights.yaml")
    edit_name, entry = registry.model_for("edit_plus")
    notes = [
        RANDOM_NOTE,
        "tokenizer/processor: the tiny builder's (the real Qwen tokenizer is not available)",
    ]
    if args.side:
        entry = entry.model_copy(update={"vae_condition_pixels": args.side**2})
        resolutions = registry.resolutions.model_copy(update={"k1": args.side**2})
        registry = registry.model_copy(update={"models": {**registry.models, edit_name: entry},
                                               "resolutions": resolutions})  # fmt: skip
        notes.append(f"--side {args.side}: edit and condition size changed, NOT the issue's 1024x1024 cases")
    if args.layers:
        notes.append(f"--layers {args.layers}: models truncated, NOT a benchmark (smoke test only)")
    t0 = time.perf_counter()
    tokenizer, processor = fm.build_tokenizer_and_processor()
    retouch, stock = fm.build_qwen_edit(device, tokenizer, processor, args.layers)
    wanted = {f"lightning-{CASES[n]['lightning_steps']}" for n in names if CASES[n]["lightning_steps"]}
    adapters = []
    for i, lora_name in enumerate(sorted(wanted & set(entry.loras))):
        state = fm.random_lora_state_dict(retouch.transformer, args.lora_rank, seed=i)
        retouch.load_lora_weights(state, adapter_name=lora_name)
        adapters.append(lora_name)
    if adapters:
        retouch.disable_lora()
    notes.append(
        f"Lightning LoRAs: random, rank {args.lora_rank}, kohya format, every linear of transformer_blocks"
    )
    schedulers = {"default": retouch.scheduler} | {
        n: FlowMatchEulerDiscreteScheduler.from_config(retouch.scheduler.config, **{k: v for k, v in c.items()
                                                                                   if not k.startswith("_")})
        for n, c in registry.schedulers.items()
    }  # fmt: skip
    refiner = None
    if any(CASES[n].get("refine_strength") or CASES[n].get("resolution") for n in names):
        ref_name, ref_entry = registry.model_for("refiner")
        try:
            refiner = LoadedRefiner(ref_name, ref_entry, fm.build_z_image(device, tokenizer, args.layers))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            notes.append("refiner did not fit next to the edit model in bf16: refine cases skipped")
    engine = EditEngine.__new__(EditEngine)
    engine.registry = registry
    engine.edit = LoadedEditModel(edit_name, entry, retouch, schedulers, adapters)
    engine.refiner = refiner
    engine.versions = report.versions()
    mem = fm.parameter_bytes(retouch.transformer, retouch.vae, retouch.text_encoder)
    if refiner is not None:
        mem += fm.parameter_bytes(refiner.pipe.transformer, refiner.pipe.vae, refiner.pipe.text_encoder)
    notes.append(f"built in {time.perf_counter() - t0:.0f} s on {device}, weights {mem / 2**30:.1f} GiB bf16")
    return engine, notes, stock


# -- one case --------------------------------------------------------------------------------------
def picture(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    arr = np.stack([x * 255 // side, y * 255 // side, (x + y) % 97 * 2], axis=-1).astype(np.uint8)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def make_spec(name: str, registry):
    from pipelines import EditSpec

    c = dict(CASES[name])
    side = int(round(registry.resolutions.area("1k") ** 0.5))
    images = [picture(side, seed) for seed in range(c.pop("n_images", 1))]
    return EditSpec(prompt=PROMPT, images=images, seed=0, **c)


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
    q = sum(b * flops.qwen_image_forward_flops(qcfg, img, txt) for b, img, txt in probe.qwen)
    z = 0.0
    if probe.z:
        zcfg = dict(engine.refiner.pipe.transformer.config)
        z = sum(flops.z_image_forward_flops(zcfg, img, cap) for img, cap in probe.z)
    peak = torch.cuda.max_memory_allocated(probe.device) / 2**30 if probe.device.type == "cuda" else None
    return {"stages": stages, "qwen_flops": q, "z_flops": z, "qwen_forwards": list(probe.qwen),
            "z_forwards": list(probe.z), "peak_gib": peak, "picture": result.images[0].data}  # fmt: skip


def run_case(name, engines: dict, probe: Probe, args, peak_tflops) -> dict:
    spec = make_spec(name, engines["retouch"].registry)
    samples: dict[str, list[dict]] = {path: [] for path in engines}
    for engine in engines.values():
        for _ in range(args.warmup):
            run_once(engine, spec, probe)
    for _ in range(args.runs):  # alternate, so drift (clocks, heat) hits both paths alike
        for path, engine in engines.items():
            samples[path].append(run_once(engine, spec, probe))
    out = {"settings": {k: v for k, v in CASES[name].items()}, "runs": args.runs, "warmup": args.warmup}
    picture = samples["retouch"][0]["picture"]
    perf_options.save_picture(args.save_pictures, name, picture)
    out["psnr_vs_exact_db"] = perf_options.compare(args.compare_with, name, picture)
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
            engine, notes, stock_pipe = full_engine(device, args.cases, args)
        notes.append(f"peak bf16 TFLOP/s for the bound: {_f(peak, '.0f')}; FLOPs: transformers only")
        overrides = perf_options.parse(args.perf)
        notes += perf_options.apply(engine, overrides)
        if overrides:
            args.no_stock = True  # the stock pipeline would share the modified transformer
        data["notes"] = notes
        print("\n".join(report.header_lines("engine_latency", meta, notes)), flush=True)
        engines = {"retouch": engine}
        if not args.no_stock:
            from diffusers import QwenImageEditPlusPipeline

            if stock_pipe is None:
                stock_pipe = QwenImageEditPlusPipeline(**engine.edit.pipe.components)
                stock_pipe.set_progress_bar_config(disable=True)
            stock = copy.copy(engine)
            stock.edit = dataclasses.replace(engine.edit, pipe=StockEditPipe(stock_pipe))
            engines["stock"] = stock
        probe = Probe(device)
        refiner = engine.refiner.pipe if engine.refiner is not None else None
        pipes = [engine.edit.pipe] + ([engines["stock"].edit.pipe.stock] if "stock" in engines else [])
        probe.install(pipes, engine.edit.pipe.vae, engine.edit.pipe.transformer, refiner)
        failed = False
        for name in args.cases:
            needs_refiner = CASES[name].get("refine_strength") or CASES[name].get("resolution")
            if needs_refiner and engine.refiner is None:
                data["cases"][name] = {"skipped": "no refiner loaded (did not fit)"}
                continue
            print(f"running {name} ...", flush=True)
            try:
                data["cases"][name] = run_case(name, engines, probe, args, peak)
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
