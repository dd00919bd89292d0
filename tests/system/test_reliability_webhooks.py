"""Webhooks (Standard Webhooks, retries, 410, SSRF) and signed result URLs."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from benchmarks.reliability import record
from tests.support.redis_server import redis_url  # noqa: F401 (a fixture, for the Redis case below)
from tests.support.server_harness import AsgiServer, WebhookReceiver, make_settings
from tests.system.test_reliability_faults import IMG, ROOT, Receiver, _submit, _wait

# -- webhooks ------------------------------------------------------------------------------------


def test_webhook_signature_matches_the_standard_webhooks_test_vector(tmp_path):
    """The spec's published vector (standard-webhooks/spec, "Signature scheme")."""
    from server.webhooks import WebhookSender

    settings = make_settings(tmp_path, webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sender = WebhookSender(store=None, settings=settings, contracts=None)
    signature = sender.signer.sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, UTC), '{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_webhook_backoff_grows_with_jitter_and_a_cap(tmp_path):
    from server.webhooks import WebhookSender

    settings = make_settings(tmp_path, webhook_backoff_initial_s=1.0, webhook_backoff_max_s=30.0)
    from server.secret_bootstrap import bootstrap_secrets

    bootstrap_secrets(settings)
    sender = WebhookSender(None, settings, None)
    samples = {attempt: [sender.next_delay(attempt) for _ in range(50)] for attempt in range(1, 9)}
    means = [sum(v) / len(v) for v in samples.values()]
    assert means[0] < means[2] < means[4]  # exponential growth
    assert all(len({round(x, 6) for x in v}) > 10 for v in samples.values())  # jitter: not in lockstep
    assert max(max(v) for v in samples.values()) <= 30.0  # capped
    assert len({round(x, 6) for x in samples[8]}) > 10  # still spread out at the cap


def test_webhook_retries_5xx_429_and_timeouts_stops_on_410_and_keeps_its_id(tmp_path):
    flaky = Receiver([503, 429, "hang", 500, 200])
    gone = Receiver([410])
    settings = make_settings(
        tmp_path, webhook_timeout_s=0.5, webhook_backoff_initial_s=0.1, webhook_backoff_max_s=1.5
    )
    srv = AsgiServer(settings)
    try:
        job_a = _submit(srv, "flaky receiver", callback_url=flaky.url)
        job_b = _submit(srv, "gone receiver", callback_url=gone.url)
        _wait(lambda: len(flaky.calls) >= 5, 30, "the flaky receiver's fifth call")
        _wait(
            lambda: srv.app.state.core.store.get_delivery(f"msg_{job_b}_completed").state == "failed",
            30,
            "410",
        )
        time.sleep(1.0)
        store = srv.app.state.core.store
        delivered = store.get_delivery(f"msg_{job_a}_completed")
        given_up = store.get_delivery(f"msg_{job_b}_completed")
    finally:
        srv.close()
        flaky.close()
        gone.close()
    assert len(flaky.calls) == 5 and set(flaky.ids()) == {f"msg_{job_a}_completed"}
    assert delivered.state == "delivered" and delivered.attempts == 5
    gaps = [b[2] - a[2] for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]
    assert gaps[1] >= 0.9  # after the 429 its Retry-After (1 s) was honoured
    assert len(gone.calls) == 1 and given_up.state == "failed" and given_up.attempts == 1
    record(
        "webhooks",
        {
            "flaky_attempts_until_delivered": len(flaky.calls),
            "distinct_ids_flaky": len(set(flaky.ids())),
            "attempts_after_410": len(gone.calls),
        },
    )


def test_webhook_sender_refuses_blocked_receivers(tmp_path):
    """A receiver allowed when the job was submitted but not when its webhook is sent (the allowlist
    was narrowed, or the name now resolves elsewhere) is refused by the sender: no connection."""
    from server.fetch import FetchPolicy

    receiver = Receiver()
    srv = AsgiServer(make_settings(tmp_path))
    srv.app.state.webhooks.policy = FetchPolicy()  # the sender's allowlist no longer opens loopback
    try:
        job = _submit(srv, "hook to a private address", callback_url=receiver.url)
        store = srv.app.state.core.store
        _wait(
            lambda: (d := store.get_delivery(f"msg_{job}_completed")) and d.state == "failed", 30, "a refusal"
        )
        delivery = store.get_delivery(f"msg_{job}_completed")
        shown = srv.get(f"/edit/image/v1/status/{job}").json()["webhook"]
    finally:
        srv.close()
        receiver.close()
    assert receiver.calls == [] and delivery.attempts == 1 and "not fetched" in delivery.last_error
    assert shown == {"state": "failed", "attempts": 1, "last_error": delivery.last_error}
    path = ROOT / "benchmarks" / "out" / "reliability" / "webhooks.json"
    if path.exists():
        import json

        data = json.loads(path.read_text())["figures"]
        data.update(connections_to_blocked_receiver=len(receiver.calls))
        record("webhooks", data)


_PRIVATE_RECEIVERS = [
    "http://127.0.0.2:9/hook",  # loopback outside the harness allowlist (127.0.0.1/32)
    "http://10.1.2.3/hook",
    "http://192.168.0.10:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://0x7f000002/hook",
    "http://2130706434/hook",
]


def _fashn_run(srv, webhook_url: str):
    body = {"model_name": "edit", "inputs": {"image": IMG, "prompt": "hook"}, "webhook_url": webhook_url}
    return srv.post("/v1/run", json=body, headers={"Authorization": "Bearer test-key"})


def test_webhook_urls_are_checked_at_submission(tmp_path):
    """Private and reserved receivers are refused in the submit's answer, in each contract's shape,
    with the setting that opens input URLs (RETOUCH_FETCH_ALLOW) opening them too."""
    receiver = Receiver()
    srv = AsgiServer(make_settings(tmp_path, workers=0))
    try:
        refused = 0
        for url in [*_PRIVATE_RECEIVERS, "http://no-such-host.invalid/hook"]:
            ip = srv.post("/edit/image/v1", json={"prompt": "x", "input_image": IMG, "callback_url": url})
            assert ip.status_code == 422 and ip.json()["field"] == "callback_url", (url, ip.text)
            blocked = url != "http://no-such-host.invalid/hook"
            assert ip.json()["error_code"] == ("INPUT_URL_BLOCKED" if blocked else "INVALID_PARAMETERS")
            fashn = _fashn_run(srv, url)
            assert fashn.status_code == 400 and fashn.json()["error"] == "BadRequest", (url, fashn.text)
            assert "webhook_url" in fashn.json()["message"]
            refused += 2
        jobs_created = len(srv.app.state.core.store.list_jobs("", limit=100))
        allowed = srv.post(
            "/edit/image/v1", json={"prompt": "x", "input_image": IMG, "callback_url": receiver.url}
        )
        allowed_fashn = _fashn_run(srv, receiver.url)
        waiting = srv.get(f"/edit/image/v1/status/{allowed.json()['job_id']}").json()["webhook"]
    finally:
        srv.close()
        receiver.close()
    assert allowed.status_code == 200 and allowed_fashn.status_code == 200
    assert waiting == {"state": "pending", "attempts": 0, "last_error": None}  # no worker: still queued
    record(
        "webhook_urls",
        {
            "private_receivers_refused_at_submit": refused,
            "receivers_tried": 2 * (len(_PRIVATE_RECEIVERS) + 1),
            "contracts": "fashn,imagepipeline",
            "allowlisted_loopback_accepted": 2,
        },
    )
    assert jobs_created == 0


def _delivery_ended(store, job_id: str) -> bool:
    delivery = store.get_delivery(f"msg_{job_id}_completed")
    return delivery is not None and delivery.state != "pending"


def test_status_shows_webhook_delivery(tmp_path):
    """imagepipeline and FASHN status bodies say pending / delivered / failed, attempts, last error;
    the webhook's own body and a job without a webhook carry no such field."""
    flaky = WebhookReceiver(fail_first=1)  # this job's receiver alone: its first post is the one failed
    fashn_hook = WebhookReceiver()
    gone = Receiver([410])
    srv = AsgiServer(make_settings(tmp_path, webhook_backoff_initial_s=0.05, webhook_backoff_max_s=0.2))
    store = srv.app.state.core.store
    try:
        queued = _submit(srv, "flaky", callback_url=flaky.url)
        job_gone = _submit(srv, "gone", callback_url=gone.url)
        fashn_job = _fashn_run(srv, fashn_hook.url).json()["id"]
        plain = srv.post(
            "/v1/run",
            json={"model_name": "edit", "inputs": {"image": IMG, "prompt": "no hook"}},
            headers={"Authorization": "Bearer test-key"},
        ).json()["id"]
        for job in (queued, job_gone, fashn_job):
            _wait(lambda j=job: _delivery_ended(store, j), 30, f"the webhook of {job}")
        delivered = srv.get(f"/edit/image/v1/status/{queued}").json()["webhook"]
        failed = srv.get(f"/edit/image/v1/status/{job_gone}").json()["webhook"]
        fashn = srv.get(f"/v1/status/{fashn_job}", headers={"Authorization": "Bearer test-key"}).json()
        plain_status = srv.get(f"/v1/status/{plain}", headers={"Authorization": "Bearer test-key"}).json()
        payloads = [json.loads(body) for _, body in flaky.got + fashn_hook.got]
    finally:
        srv.close()
        flaky.close()
        fashn_hook.close()
        gone.close()
    assert delivered == {"state": "delivered", "attempts": 2, "last_error": "HTTP 500"}
    assert failed == {"state": "failed", "attempts": 1, "last_error": "HTTP 410"}
    assert fashn["webhook"]["state"] == "delivered" and fashn["status"] == "completed"
    assert all("webhook" not in p for p in payloads) and len(payloads) >= 3
    assert "webhook" not in plain_status
    record(
        "webhook_status",
        {
            "contracts": "fashn,imagepipeline",
            "delivered_shown_after_attempts": delivered["attempts"],
            "failed_shown_after_attempts": failed["attempts"],
            "webhook_bodies_carrying_the_field": sum("webhook" in p for p in payloads),
        },
    )


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_webhook_state_follows_the_outbox_on_both_stores(kind, tmp_path, request):
    """What the status shows is the outbox row: the same on SQLite and on Redis (several pods)."""
    from server.jobs import EditJob, InputRef, JobMeta, ResultFile
    from server.store import open_store
    from server.webhooks import webhook_state

    extra = {}
    if kind == "redis":
        from tests.support.redis_server import delete_prefix, unique_prefix

        url = request.getfixturevalue("redis_url")
        extra = {"redis_url": url, "redis_prefix": unique_prefix()}
        request.addfinalizer(lambda: delete_prefix(url, extra["redis_prefix"]))
    store = open_store(make_settings(tmp_path, workers=0, **extra))
    try:
        job = EditJob(prompt="p", images=[InputRef(path="inputs/job_w/0")])
        meta = JobMeta(contract="imagepipeline", owner="o", callback_url="http://127.0.0.1:9/hook")
        store.add_job("job_w", job, meta, max_queued=10)
        shown = [webhook_state(store, store.get_job("job_w"))]
        store.claim("w0", 10)
        result = ResultFile(
            path="results/job_w/1-0.webp", mime_type="image/webp", format="webp", width=8, height=8,
            sha256="0" * 64, seed=1,
        )  # fmt: skip
        store.complete("job_w", [result], 1, 0.5, [])
        shown.append(webhook_state(store, store.get_job("job_w")))
        store.delivery_failed("msg_job_w_completed", "HTTP 503", time.time() + 60)
        shown.append(webhook_state(store, store.get_job("job_w")))
        store.delivery_done("msg_job_w_completed")
        shown.append(webhook_state(store, store.get_job("job_w")))
        store.add_job("job_plain", job, meta.model_copy(update={"callback_url": None}), max_queued=10)
        plain = webhook_state(store, store.get_job("job_plain"))
    finally:
        close = getattr(store, "close", None)
        if close:
            close()
    assert [(s.state, s.attempts, s.last_error) for s in shown] == [
        ("pending", 0, None),
        ("pending", 0, None),
        ("pending", 1, "HTTP 503"),
        ("delivered", 2, "HTTP 503"),
    ]
    assert plain is None


# -- result URLs ---------------------------------------------------------------------------------


def test_result_url_signatures(tmp_path):
    from server import signing

    srv = AsgiServer(make_settings(tmp_path))
    try:
        first = srv.wait_status(_submit(srv, "first"))
        second = srv.wait_status(_submit(srv, "second"))
        a, b = urlsplit(first["result_url"]), urlsplit(second["result_url"])
        seen = {"valid": srv.get(f"{a.path}?{a.query}").status_code}
        tampered_sig = a.query[:-1] + ("0" if a.query[-1] != "0" else "1")
        seen["tampered_signature"] = srv.get(f"{a.path}?{tampered_sig}").status_code
        later = re.sub(r"expires=(\d+)", lambda m: f"expires={int(m.group(1)) + 3600}", a.query)
        seen["extended_expiry"] = srv.get(f"{a.path}?{later}").status_code
        seen["other_jobs_path_with_valid_signature"] = srv.get(f"{b.path}?{a.query}").status_code
        seen["unsigned"] = srv.get(a.path).status_code
        expired = urlsplit(signing.sign(srv.settings.signing_secret, "", a.path, -10))
        seen["expired"] = srv.get(f"{expired.path}?{expired.query}").status_code
    finally:
        srv.close()
    assert seen == {
        "valid": 200,
        "tampered_signature": 403,
        "extended_expiry": 403,
        "other_jobs_path_with_valid_signature": 403,
        "unsigned": 403,
        "expired": 410,
    }
    record("result_urls", seen)
