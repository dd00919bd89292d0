"""The GPU check: every headline figure of issue 7 in one process, one command, a hard time budget.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT          # the lent GPU (README)
    python benchmarks/gpu_check.py --tiny --budget-s 120 --out /tmp/check  # CPU dry run (make test)
    python benchmarks/gpu_check.py --collect DIR  # here, afterwards: DIR's section into RESULTS.md

The cases (``gpu_cases.CASES``) run in the order of their value. Before each, its estimated
seconds (``gpu_estimates``, from FLOP counts and what earlier cases measured) are held against the
time left; a case that cannot finish is recorded as ``skipped: budget`` and the next one is tried.
``--out``'s JSON is rewritten after every case. If a case overruns, a watchdog records it as cut,
writes the JSON and the RESULTS section, and ends the process at the deadline.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import engine_latency, flops, report, server_overhead  # noqa: E402
from benchmarks.gpu_cases import CASES, Context  # noqa: E402
from benchmarks.gpu_estimates import Estimator  # noqa: E402
from benchmarks.gpu_memory_cases import memory_table  # noqa: E402

JSON_NAME = "gpu_check.json"
SECTION_NAME = "RESULTS-section.md"
SAFETY = 1.1  # a case starts only if its estimate, 10 % over, fits in the time left


class Run:
    """The results so far; written after every case, and by the watchdog at the deadline."""

    def __init__(self, out: Path, meta: dict, args, ctx: Context):
        self.out, self.args, self.ctx = out, args, ctx
        self.lock = threading.Lock()
        self.current: tuple[str, float, dict] | None = None
        self.data = {"meta": meta, "budget_s": args.budget_s, "side": ctx.side, "tiny": args.tiny,
                     "peak_tflops": ctx.peak_tflops, "notes": ctx.notes, "cases": {}}  # fmt: skip

    def record(self, name: str, result: dict) -> None:
        with self.lock:
            self.data["cases"][name] = result
            report.write_json(self.out / JSON_NAME, self.data)

    def cut(self) -> None:
        """At the deadline: the running case is cut, the rest skipped; write everything and exit.

        The exit status is 3 when a case was cut, 0 when the deadline fell between cases.
        """
        with self.lock:
            was_cut = self.current is not None
            if was_cut:
                name, t0, rec = self.current
                rec |= {"cut": "budget: still running at the deadline", "elapsed_s": time.monotonic() - t0}
                self.data["cases"][name] = rec
            for case in CASES:
                if case.name in self.args.cases:
                    self.data["cases"].setdefault(case.name, {"what": case.what, "skipped": "budget"})
            report.write_json(self.out / JSON_NAME, self.data)
            self.finish_locked()
        for server in list(server_overhead.RUNNING):
            server.proc.kill()
        print(
            f"gpu_check: budget of {self.args.budget_s:.0f} s spent; results written to {self.out}",
            flush=True,
        )
        os._exit(3 if was_cut else 0)

    def finish(self) -> None:
        with self.lock:
            report.write_json(self.out / JSON_NAME, self.data)
            self.finish_locked()

    def finish_locked(self) -> None:
        text = summary(self.data["cases"])
        print(text, flush=True)
        title = "gpu_check" + (
            " (TINY random weights on CPU: dry run, timings not meaningful)" if self.args.tiny else ""
        )
        used = time.monotonic() - STARTED
        side = self.ctx.side
        notes = [
            f"budget {self.args.budget_s:.0f} s, {used:.0f} s used; {side}x{side} edits",
            *self.ctx.notes,
        ]
        section = self.out / SECTION_NAME
        section.unlink(missing_ok=True)
        for path in [section] + ([Path(self.args.append_results)] if self.args.append_results else []):
            report.append_results(path, title, self.data["meta"], notes, text)


def _status(rec: dict) -> str:
    for key in ("error", "cut", "skipped", "unavailable"):
        if key in rec:
            return f"{key}: {str(rec[key]).splitlines()[0][:70]}"
    return "ok"


def summary(cases: dict) -> str:
    """One line per case, then the engine cases' stage table and the server's table."""
    lines = [f"{'case':20}{'estimate s':>12}{'took s':>10}  status", "-" * 72]
    engine_rows: dict[str, dict] = {}
    for name, rec in cases.items():
        took = rec.get("elapsed_s")
        took = "" if took is None else f"{took:.1f}"
        lines.append(f"{name:20}{rec.get('estimate_s', 0):>12.1f}{took:>10}  {_status(rec)}")
        if "retouch" in rec:
            label = name if "steps_run" not in rec else f"{name} ({rec['steps_run']} steps)"
            engine_rows[label] = rec
        for backend, sub in rec.get("backends", {}).items():
            engine_rows[f"attn {backend}"] = sub if "retouch" in sub else {"skipped": _status(sub)}
    if engine_rows:
        lines += ["", engine_latency.table(engine_rows)]
    memory = memory_table(cases)
    if memory:
        lines += ["", "memory plans (smaller cards emulated with a memory fraction; Lightning-8):", memory]
    if "table" in cases.get("server", {}):
        lines += ["", "server (3 jobs through HTTP + queue + worker):", cases["server"]["table"]]
    for name in ("build", "qwen21-build"):
        build = cases.get(name, {})
        if "components" in build:
            lines += ["", f"{name}: " + ", ".join(f"{k} {v['gib'] or 0:.1f} GiB" +
                                                 (f" {v['seconds']:.1f} s" if v.get("seconds") else "")
                                                 for k, v in build["components"].items())]  # fmt: skip
    return "\n".join(lines)


def run_cases(run: Run, ctx: Context, names: list[str]) -> bool:
    failed = False
    for case in CASES:
        if case.name not in names:
            continue
        left, estimate = ctx.left(), case.estimate(ctx)
        rec = {
            "what": case.what,
            "estimate_s": estimate,
            "left_s": left,
            "estimate_basis": ctx.estimator.basis,
        }
        if estimate * SAFETY > left:
            rec["skipped"] = "budget"
        elif case.needs_engine and ctx.engines is None:
            rec["skipped"] = "no engine: the build did not run or failed"
        elif case.missing and case.missing(ctx):
            rec["skipped"] = case.missing(ctx)
        else:
            print(f"[{time.monotonic() - STARTED:6.0f} s] {case.name}: estimated {estimate:.0f} s, "
                  f"{left:.0f} s left", flush=True)  # fmt: skip
            t0 = time.monotonic()
            run.current = (case.name, t0, rec)
            try:
                rec |= case.run(ctx)
            except Exception as e:  # keep going unattended; the JSON says what failed
                failed = True
                traceback.print_exc()
                rec["error"] = f"{type(e).__name__}: {e}"[:4000]
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            rec["elapsed_s"] = time.monotonic() - t0
            run.current = None
        ctx.results[case.name] = rec
        run.record(case.name, rec)
    return failed


def collect(folder: Path) -> int:
    """Append a GPU run's section to benchmarks/RESULTS.md and keep its JSON in benchmarks/results/."""
    data = json.loads((folder / JSON_NAME).read_text())
    stamp = data["meta"]["date"].replace(":", "").replace("+0000", "Z")
    results = report.ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    shutil.copyfile(folder / JSON_NAME, results / f"gpu_check-{stamp}.json")
    with (report.ROOT / "benchmarks" / "RESULTS.md").open("a") as f:
        f.write((folder / SECTION_NAME).read_text())
    print(f"appended {folder / SECTION_NAME} to benchmarks/RESULTS.md; JSON in {results}")
    return 0


def plan(args) -> int:
    """Each case's estimate before anything is measured, against the budget; needs no device."""
    device_type = "cpu" if args.tiny else "cuda"
    side = args.side or (128 if args.tiny else 1024)
    peak = None if args.tiny else (args.peak_tflops or flops.PEAK_BF16_TFLOPS["H200"])
    ctx = Context(torch.device(device_type), args.tiny, side, Path("."), peak,
                  Estimator(device_type, peak, side, args.tiny), deadline=float("inf"))  # fmt: skip
    print(
        f"{'case':20}{'estimate s':>12}{'cumulative s':>14}  budget {args.budget_s:.0f} s, nothing measured"
    )
    total = 0.0
    for case in CASES:
        estimate = case.estimate(ctx)
        total += estimate
        late = "" if total * SAFETY <= args.budget_s else "  past the budget unless earlier cases are faster"
        print(f"{case.name:20}{estimate:>12.1f}{total:>14.1f}{late}")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", metavar="DIR", help=f"where {JSON_NAME} and {SECTION_NAME} go")
    p.add_argument("--budget-s", type=float, default=420.0, help="hard wall-clock budget (default 420)")
    p.add_argument("--tiny", action="store_true", help="the tiny random-weight set (CPU dry run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--side", type=int, help="edit size SIDExSIDE (default 1024; 128 with --tiny)")
    p.add_argument("--layers", type=int, help="full size truncated to N layers: smoke test only, no figures")
    p.add_argument("--cases", nargs="+", default=[c.name for c in CASES], help="subset, in CASES order")
    p.add_argument("--peak-tflops", type=float, help="override the device's peak bf16 TFLOP/s for the bound")
    p.add_argument("--append-results", metavar="MD", help="also append the section to this RESULTS.md")
    p.add_argument("--collect", metavar="DIR", help="append DIR's section to RESULTS.md, keep its JSON")
    p.add_argument("--plan", action="store_true", help="print each case's estimate before any is measured")
    args = p.parse_args(argv)
    if not (args.collect or args.plan or args.out):
        p.error("--out DIR is required")
    unknown = set(args.cases) - {c.name for c in CASES}
    if unknown:
        p.error(f"unknown cases {sorted(unknown)}; choose from {[c.name for c in CASES]}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collect:
        return collect(Path(args.collect))
    if args.plan:
        return plan(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --tiny --device cpu", file=sys.stderr)
        return 2
    side = args.side or (128 if args.tiny else 1024)
    if args.tiny and device.type == "cpu":
        # On a shared CPU, torch's spinning worker threads make tiny jobs many times slower; one
        # thread here and in the server's processes keeps the dry run inside its budget.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    meta = report.run_meta(device)
    peak = args.peak_tflops or (flops.peak_tflops(meta["device"]) if device.type == "cuda" else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="retouch-gpu-check-") as tmp:
        estimator = Estimator(device.type, peak, side, args.tiny)
        ctx = Context(device, args.tiny, side, Path(tmp), peak, estimator, STARTED + args.budget_s)
        ctx.layers = args.layers
        run = Run(out, meta, args, ctx)
        watchdog = threading.Timer(max(0.0, ctx.left()), run.cut)
        watchdog.daemon = True
        watchdog.start()
        failed = run_cases(run, ctx, args.cases)
        watchdog.cancel()
        run.finish()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
