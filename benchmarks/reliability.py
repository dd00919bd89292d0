"""Figures of the reliability and security tests, and the table in docs/reliability.md.

Tests call ``record(row_id, figures)`` with what they measured; each row lands in
benchmarks/out/reliability/<row_id>.json. ``python -m benchmarks.reliability`` renders the table
from those files, so every number in the doc comes from a test run, never from a hand edit.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "reliability"
DOC = ROOT / "docs" / "reliability.md"

# row id -> (property, test that proves it, how to read the figures). Order = table order.
ROWS: dict[str, tuple[str, str, str]] = {
    "keys": (
        "API keys hashed at rest, constant-time compare, X-API-Key and Bearer, scopes (401/403)",
        "tests/contracts/test_keys_and_access.py::test_keys_*",
        "keys file holds no plaintext; wrong/missing key 401, wrong scope 403",
    ),
    "rate_limit": (
        "Per-key rate and concurrency limits: 429 with integer Retry-After; budgets: 402",
        "tests/contracts/test_keys_and_access.py::test_key_rate_concurrency_and_budget_limits",
        "requests over the limit / answered 429 with Retry-After",
    ),
    "bind_refusal": (
        "A non-loopback bind without keys refuses to start unless --insecure-no-auth",
        "tests/contracts/test_keys_and_access.py::test_serve_refuses_public_bind_without_keys",
        "exit code and time to refuse",
    ),
    "queue_full": (
        "Full queue: 503 + Retry-After in < 50 ms; slot reserved before any fetch or decode",
        "tests/system/test_reliability_overload.py::test_full_queue_rejects_fast_without_fetching_or_decoding",
        "burst size, latency p50/p99/max, fetches and decodes caused by the burst",
    ),
    "idempotency": (
        "Idempotency-Key: same key + body -> same job; other body -> 409",
        "tests/system/test_reliability_overload.py::test_idempotency_key_*",
        "replays, distinct jobs created",
    ),
    "budget_concurrent_sqlite": (
        "Budgets: a job's estimated cost is reserved atomically with queueing it (402 in each "
        "contract's shape when it does not fit); concurrent submissions from one key never overspend it",
        "tests/contracts/test_budgets_and_idempotency.py::test_budget_concurrent_http_submissions_from_one_key[sqlite]"
        " (store level, 16 threads: test_budget_concurrent_submissions_never_overspend)",
        "clients at once, budget, each job's reservation, admitted / refused, what is left",
    ),
    "budget_concurrent_redis": (
        "The same on the Redis store (one Lua script checks and reserves)",
        "tests/contracts/test_budgets_and_idempotency.py::test_budget_concurrent_http_submissions_from_one_key[redis]",
        "clients at once, budget, each job's reservation, admitted / refused, what is left",
    ),
    "budget_settled": (
        "Settled once when the job ends (completed, failed, cancelled, re-run after a dead worker); "
        "cost_usd stored at the price then in force: a later price change re-prices no history",
        "tests/contracts/test_budgets_and_idempotency.py::test_budget_balance_is_not_repriced_by_a_later_price,"
        " test_budget_reservation_is_settled_once_at_the_end, test_budget_a_rerun_*",
        "prices before and after the change, the job's seconds and cost, the balance before and after",
    ),
    "budget_replay": (
        "An Idempotency-Key replay is looked up before the budget on all four contracts: answered with "
        "its job even while that job's reservation holds the whole budget; never reserved or charged twice",
        "tests/contracts/test_budgets_and_idempotency.py::test_budget_an_idempotent_replay_*,"
        " test_budget_a_replay_is_answered_*",
        "contracts checked after completion / while the job's own reservation holds the budget",
    ),
    "body_caps": (
        "Caps on prompt, images, base64 and body size (413 before the body is read)",
        "tests/system/test_security_inputs.py::test_request_caps_*",
        "body bytes the server read before answering 413",
    ),
    "ssrf": (
        "SSRF: loopback/private/link-local/metadata/ULA/multicast/mapped/odd encodings refused; "
        "DNS pinned; redirects re-checked (<= 3); allowlist opens exactly its entries",
        "tests/unit/test_fetch_policy.py::test_ssrf_*,"
        " tests/system/test_security_inputs.py::test_ssrf_over_http_is_a_clear_422",
        "addresses tried / refused, connections made to refused addresses",
    ),
    "fetch_limits": (
        "Fetch limits: size cap, total time, non-image content refused",
        "tests/unit/test_fetch_policy.py::test_fetch_limits_*",
        "oversized / slow / non-image downloads refused and how long each took",
    ),
    "hostile_pictures": (
        "Hostile pictures (truncated, corrupt, bomb, CMYK, 16-bit, palette, alpha, EXIF, animated): "
        "upright RGB or a clear 4xx, never 500, never a hang",
        "tests/system/test_security_inputs.py::test_hostile_pictures_over_http",
        "cases tried, 5xx seen, slowest answer",
    ),
    "malformed_bodies": (
        "Malformed bodies (invalid UTF-8, 100k-deep nesting, 1e400, NaN/Infinity, non-object, wrong or "
        "missing content type, duplicate keys, truncated, broken multipart) on every JSON and multipart "
        "endpoint of every contract: a 4xx in the contract's own error shape, never 500",
        "tests/contracts/test_bad_bodies.py::test_malformed_bodies_get_a_4xx_in_each_contracts_shape",
        "bodies x endpoints tried, 5xx seen, statuses answered",
    ),
    "huge_headers": (
        "A 1 MB header or 2000 headers: 431 from the server's own limits (RETOUCH_MAX_HEADER_BYTES, "
        "RETOUCH_MAX_HEADER_COUNT), not a connection reset",
        "tests/contracts/test_bad_bodies.py::test_huge_headers_answer_431_not_a_reset",
        "status per case against a real `retouch serve`, connection resets",
    ),
    "templates": (
        "Profile templates rendered in Jinja2's sandbox: no attribute escapes, files, or huge output",
        "tests/system/test_security_inputs.py::test_profile_templates_are_sandboxed",
        "escape attempts tried / refused",
    ),
    "fuzz": (
        "Fuzzing of the picture decoder (hypothesis): only clean decode errors",
        "tests/system/test_security_fuzz.py::test_fuzz_decode_path",
        "inputs tried, unexpected exceptions",
    ),
    "schemathesis": (
        "schemathesis against /openapi.json: zero 5xx, zero schema violations",
        "tests/system/test_security_fuzz.py::test_schemathesis_openapi",
        "requests sent, 5xx, schema violations",
    ),
    "kill9": (
        "kill -9 of a worker mid-job: job re-run and completed; no loss, no duplicate result or webhook",
        "tests/system/test_reliability_faults.py::test_kill9_worker_mid_job_repeatedly (slow)",
        "kills, jobs lost, duplicate results, duplicate webhooks",
    ),
    "sigterm": (
        "SIGTERM: /readyz 503 at once, no new job taken, running job finishes in the grace period "
        "or goes back to the queue",
        "tests/system/test_reliability_shutdown.py::test_sigterm_*",
        "time to 503, jobs lost",
    ),
    "oom": (
        "GPU OOM: job fails with retryable GPU_OUT_OF_MEMORY; next job succeeds in the same worker",
        "tests/system/test_reliability_faults.py::test_gpu_oom_and_nan_on_the_real_engine",
        "worker pid before/after, next job status",
    ),
    "nan": (
        "NaN output fails the job (NON_FINITE_OUTPUT), never a black picture",
        "tests/system/test_reliability_faults.py::test_gpu_oom_and_nan_on_the_real_engine",
        "failure code, result files written",
    ),
    "timeout": (
        "A job over its time limit fails with JOB_TIMEOUT; the worker recovers",
        "tests/system/test_reliability_faults.py::test_job_over_its_time_limit_fails_with_timeout_and_worker_goes_on"
        " (a hung worker is killed: tests/system/test_server_workers.py::test_server_hung_job_times_out)",
        "time limit, when the job failed, the next job in the same worker",
    ),
    "watchdog": (
        "A hung worker (SIGSTOP) is killed (SIGKILL) and replaced after RETOUCH_WORKER_HANG_S; its job "
        "runs again; a long step is not a hang; /readyz's workers_alive counts live heartbeats only",
        "tests/system/test_reliability_watchdog.py::test_stopped_worker_is_killed_and_replaced_long_step_is_not",
        "hang limit, when the stopped worker was killed and replaced, the job, /readyz contradictions",
    ),
    "storage_floor": (
        "Disk below RETOUCH_MIN_FREE_BYTES: uploads and submissions 503 STORAGE_FULL + Retry-After in "
        "each contract's shape, /readyz 503 with the reason, retouch_storage_full=1, no job taken; "
        "recovers once space is freed",
        "tests/system/test_reliability_storage.py::test_disk_below_the_floor_refuses_writes_in_each_contract_and_recovers",
        "20 MB tmpfs: refusals, free space when low, time to ready after freeing, jobs lost, .part files",
    ),
    "storage_enospc_sqlite": (
        "ENOSPC on a job's result (files disk filled by another process; SQLite store): the job goes "
        "back to the queue, never stays processing; runs again once space is back, one result",
        "tests/system/test_reliability_storage.py::test_disk_filled_under_a_running_job_sends_it_back_to_the_queue[sqlite]",
        "state after ENOSPC, time back in the queue, final state, result files, .part files",
    ),
    "storage_enospc_redis": (
        "The same on the Redis store",
        "tests/system/test_reliability_storage.py::test_disk_filled_under_a_running_job_sends_it_back_to_the_queue[redis]",
        "state after ENOSPC, time back in the queue, final state, result files, .part files",
    ),
    "storage_db_full": (
        "Data disk (SQLite and files) filled to the last byte under a running job: no crash, /readyz "
        "says STORAGE_FULL, the supervisor backs off (one line per pause), the job completes once freed",
        "tests/system/test_reliability_storage.py::test_full_database_disk_is_waited_out_without_a_crash",
        "seconds full, supervisor failure lines (was one traceback per 0.5 s), worker exits, the job",
    ),
    "eta_cost_model": (
        "ETAs from a cost model: each job's units of work (transformer FLOPs of its sizes, pictures, "
        "steps and CFG; VAE pixels; per-picture and per-step constants) times rates fitted online "
        "from completed jobs; a queued job's ETA sums the work ahead",
        "tests/unit/test_eta_cost_model.py::test_eta_of_new_jobs_within_30_percent_on_the_tiny_set",
        "calibration jobs, then ETA / real (CPU) time of a new job per size and step count (1.0 = exact)",
    ),
    "webhooks": (
        "Webhooks: Standard Webhooks test vector, backoff + jitter on 5xx/429/timeouts, 410 stops, "
        "stable webhook-id, SSRF-safe sender",
        "tests/system/test_reliability_webhooks.py::test_webhook_*",
        "attempts per scenario, distinct webhook-ids",
    ),
    "webhook_urls": (
        "Webhook URLs checked at submission with the input-URL policy: private, reserved and "
        "unresolvable receivers refused in each contract's shape (RETOUCH_FETCH_ALLOW opens them)",
        "tests/system/test_reliability_webhooks.py::test_webhook_urls_are_checked_at_submission",
        "receivers tried / refused at submit on imagepipeline and FASHN, allowlisted ones accepted",
    ),
    "webhook_status": (
        "The status body shows webhook delivery (pending, delivered, failed, attempts, last error)",
        "tests/system/test_reliability_webhooks.py::test_status_shows_webhook_delivery",
        "attempts shown when delivered (after one 500) and when failed (410), webhook bodies with the field",
    ),
    "result_urls": (
        "Result URLs: tampered -> 403, expired -> 410, another job's path with a valid signature -> 403",
        "tests/system/test_reliability_webhooks.py::test_result_url_signatures",
        "status codes seen",
    ),
}


def record(row_id: str, figures: dict) -> None:
    if row_id not in ROWS:
        raise KeyError(f"unknown reliability row {row_id!r}")
    OUT.mkdir(parents=True, exist_ok=True)
    body = {
        "row": row_id,
        "figures": figures,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    (OUT / f"{row_id}.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def _format(figures: dict) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts).replace("|", "/")


INTRO = """\
# Reliability and security: what is guaranteed and how it was shown

On-prem does not mean trusted: the server fetches URLs that clients name, decodes pictures from
strangers, runs for weeks on GPUs that run out of memory and is restarted by orchestrators mid-job.
Each row below is a property the server keeps, the test that proves it (all run by `make test`;
the one marked `slow` too) and the figures that test measured on its last run. The tests write
their figures to `benchmarks/out/reliability/*.json`; this file is rendered from those by
`python -m benchmarks.reliability`. No number in the table is typed by hand.

To refresh it:

```
.venv/bin/pytest -q tests/test_security_*.py tests/test_reliability_*.py
.venv/bin/python -m benchmarks.reliability
```
"""

HOW = """\
## Where each guarantee lives

- **Access** (`server/auth.py`, `server/keys_cli.py`): `retouch keys create --name N --scope edit
  [--budget-usd X] [--rate R/min] [--concurrency C]` prints a key once and stores its SHA-256 in
  `<data-dir>/api_keys.json` (mode 0600, re-read when it changes). `RETOUCH_API_KEYS=key` or
  `key:edit+admin` for quick setups. Keys are accepted as `X-API-Key` or `Authorization: Bearer`
  on every contract; every stored hash is compared with `hmac.compare_digest`. With no key at all
  the server is open, which it only allows on a loopback address unless `--insecure-no-auth`.
- **Admission** (`server/limits.py`, called first in `Core.submit` for every contract):
  Idempotency-Key replay, prompt cap, budget (402), per-key rate of job creations (429 +
  `Retry-After`), per-key unfinished jobs (429), then a queue slot reserved before any fetch or decode (503 +
  `Retry-After` when `RETOUCH_MAX_QUEUED_JOBS` are waiting). Rate windows and idempotency
  records live behind the `JobStore` protocol (SQLite and Redis).
- **Money** (`server/accounting.py`, `server/store/sqlite_costs.py`, `server/store/redis_costs.py`):
  a job's cost is estimated at admission (its ETA seconds times `RETOUCH_PRICE_PER_GPU_HOUR_USD`)
  and reserved in the same SQLite transaction or Redis script that queues it; the worker charges the
  actual seconds at its price in the job's terminal write, which also releases the reservation (so a
  re-run is charged once). Money is whole micro-dollars; a balance is the budget minus stored costs
  and open reservations.
- **ETAs** (`pipelines/cost_model.py`, `pipelines/flops.py`, `server/eta.py`): a job's units of work
  are computed at admission from the registry and its decoded sizes; rates are a non-negative,
  relative-error, recency-weighted least-squares fit of the last 50 completed jobs (SQLite: this
  machine's; Redis: the deployment's, one list), refitted only when a job completes.
- **Request size** (`RequestGuard` in `server/limits.py`): bodies over
  `RETOUCH_MAX_REQUEST_BYTES` get 413 from the declared length before a byte is read, or as
  soon as the running count passes the cap.
- **Fetching** (`server/fetch.py`): resolve once, check every address, connect to the checked
  one (Host and TLS name kept), redirects re-checked and capped, size/time caps, image content
  types only. `RETOUCH_FETCH_ALLOW="assets.corp,10.20.0.0/16"` opens exactly those names and
  networks, for inputs and webhooks alike.
- **Templates** (`server/safe_templates.py`): Jinja2's immutable sandbox plus a parse-time
  allowlist (text, `user_prompt`, if/else, concatenation, a few string filters). Loops, macros,
  includes, attribute access and arithmetic are refused when the profile is created.
- **Workers** (`server/worker.py`, `server/supervisor.py`, `server/shutdown.py`): leases with
  heartbeats re-run a killed worker's job; the first terminal write wins, so a re-run can add
  neither a result nor a webhook. SIGTERM drains: `/readyz` 503, no new job, the running job gets
  `RETOUCH_SHUTDOWN_GRACE_S` and is then handed back to the queue. A job over its time limit
  fails with `JOB_TIMEOUT`; an engine OOM fails it with retryable `GPU_OUT_OF_MEMORY` and the same
  worker goes on; NaN output fails with `NON_FINITE_OUTPUT`. A heartbeat thread in each worker
  (`server/worker_process.py`, never the denoise loop) stamps a few bytes shared with the
  supervisor; one silent for `RETOUCH_WORKER_HANG_S` (stopped, frozen) is SIGKILLed and replaced
  and its job goes back through the lease. `/readyz` counts only workers with a live heartbeat.
- **Storage** (`server/storage.py`): below `RETOUCH_MIN_FREE_BYTES` on the files or database
  disk, uploads and submissions answer `STORAGE_FULL` before anything is written: 503 +
  `Retry-After`, because it passes by itself and 503 is the status whose `Retry-After` generic
  clients (urllib3, proxies) honour; 507 is WebDAV's. Workers take no job, `/readyz` is 503 with
  the reason and `retouch_storage_full` is 1.
  ENOSPC met anyway removes the half-written `.part` file (the cleanup removes any a killed writer
  left, after an hour) and sends the job back to the queue
  (failed as retryable `STORAGE_FULL` after `RETOUCH_MAX_ATTEMPTS`); the worker then pauses its
  claims with a doubling backoff. A failing supervisor tick backs off too (1 s doubling to 15 s,
  one line per pause), and the webhook outbox pauses 10 s when it cannot store an outcome rather
  than posting the same webhook again every 0.2 s.
- **Bodies and heads** (`server/contracts/json_body.py`, `server/http_limits.py`): every JSON
  body of every contract goes through one strict reader (UTF-8 only, no NaN/Infinity, finite
  numbers, no duplicate keys, no nesting past Python's recursion limit, an object at the top)
  and Starlette's own refusals are rendered in the contract's shape; `retouch serve` answers a
  request head over `RETOUCH_MAX_HEADER_BYTES` or `RETOUCH_MAX_HEADER_COUNT` with 431 and a
  lingering close.
- **Webhooks** (`server/webhooks.py`): Standard Webhooks signatures, a stable `webhook-id` per job
  and event, full-jitter exponential backoff (`Retry-After` of a 429 honoured), 410 stops, a
  blocked address stops, sent through the same SSRF-safe client. The URL is checked at
  submission too (`server/fetch.py` `check_callback_url`), and the status shows the delivery.

## Honest limits

- The GPU out-of-memory row runs on CPU: the worker's test-only fault hook
  (`RETOUCH_FAULT_INJECTION=oom:MARKER`) raises torch's own CUDA OOM exception inside the real
  engine's denoise loop, so the engine's OOM handling runs for real, but no GPU memory was
  exhausted. On a GPU, check it with a job sized past the card's memory followed by a normal one.
- Queue-full latencies are measured in process (ASGI, no network), on a shared CI-class machine;
  the max column includes scheduler noise that the p99 does not.
- The NaN row poisons the tiny refiner's weights, so the real engine produces NaN and its guard
  fires; it is not a NaN from a full-size model.
- The disk-full and watchdog rows run the fake engine (a gate or a long sleep in place of a
  model), so the disk can be filled and the worker stopped at a chosen moment; the storage paths,
  stores, worker processes and supervisor are the real ones. Whether a full database disk fails
  the supervisor's writes depends on the room left in SQLite's WAL file, so that row's count of
  failure lines varies between runs (0 to 3 seen); the bound it checks does not.
- The ETA row runs the real engine on the tiny set on a shared 2-core CPU, with one torch thread,
  and times each job by its CPU time: there the wall clock is mostly other processes' load (2 to 3
  times the CPU time, varying between runs), which no cost model predicts. On the tiny set the
  per-picture and VAE terms dominate and steps weigh little; on a GPU the transformer FLOPs carry
  most of a job, which the fit learns from that pod's own jobs. Check it there with the test's sizes.
- A job reserves at least one GPU second; one that runs longer than its reservation is still
  charged its actual cost (a balance can go below zero by an estimate's error, never by a whole
  unreserved job).
"""


def render() -> str:
    lines = [
        INTRO,
        f"Figures last rendered on {platform.node() or 'unknown host'} ({platform.machine()}, "
        f"Python {platform.python_version()}).",
        "",
        "| Property | Test | Figures (last run) | Measured |",
        "|---|---|---|---|",
    ]
    for row_id, (prop, test, meaning) in ROWS.items():
        path = OUT / f"{row_id}.json"
        if path.exists():
            data = json.loads(path.read_text())
            figures, when = _format(data["figures"]), data["measured_at"]
        else:
            figures, when = f"not measured yet ({meaning})", "-"
        lines.append(f"| {prop} | `{test}` | {figures} | {when} |")
    lines += ["", "What the figures count:", ""]
    lines += [f"- **{row_id}**: {meaning}" for row_id, (_, _, meaning) in ROWS.items()]
    lines += ["", HOW]
    return "\n".join(lines)


def main() -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
