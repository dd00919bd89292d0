"""Structured logs: JSON lines, job_id on a job's lines, level from settings, no secrets or bytes."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from server.logging_setup import JsonFormatter, Redactor, job_context
from tests.conftest import encode, make_photo
from tests.support.server_harness import ServeProcess
from tests.support.server_harness import free_port as _free_port

KEY = "logging-test-key-0123456789"


def _format(record_kwargs: dict, secrets=()) -> dict:
    formatter = JsonFormatter(Redactor(secrets), "api")
    record = logging.LogRecord("retouch.test", logging.INFO, __file__, 1, "%s", None, None)
    for name, val in record_kwargs.items():
        setattr(record, name, val)
    line = formatter.format(record)
    assert "\n" not in line
    return json.loads(line)


def test_redactor_masks_secrets_signatures_and_picture_bytes():
    redact = Redactor(["sk-very-secret-key-123", "short"])
    picture = base64.b64encode(encode(make_photo(32, 32))).decode()
    text = redact(
        "key sk-very-secret-key-123 url http://h/files/results/a.png?expires=99&sig=abcdef0123"
        f" headers {{'x-api-key': 'abc123def456'}} Authorization: Bearer tok_987654321"
        f" inline data:image/png;base64,{picture} raw {picture}"
    )
    assert "sk-very-secret-key-123" not in text
    assert "abcdef0123" not in text and "sig=[redacted]" in text
    assert "abc123def456" not in text and "tok_987654321" not in text
    assert picture[:100] not in text
    assert "data:[image bytes omitted]" in text and "[base64 omitted]" in text
    assert "expires=99" in text  # not a secret: stays readable
    assert redact("short words stay") == "short words stay"  # values under 8 chars are not masked


def test_redactor_cuts_very_long_messages():
    cut = Redactor()("word " * 5000)
    assert len(cut) < 4100 and cut.endswith("chars cut]")


def test_json_line_carries_job_id_extra_fields_and_a_one_line_traceback():
    with job_context("job_abc"):
        entry = _format({"msg": "job started", "args": (), "attempt": 2, "timings": {"denoise": 1.5}})
    assert entry["job_id"] == "job_abc" and entry["msg"] == "job started"
    assert entry["attempt"] == 2 and entry["timings"] == {"denoise": 1.5}
    assert entry["level"] == "info" and entry["process"] == "api" and entry["ts"].endswith("Z")
    assert "job_id" not in _format({"msg": "outside any job", "args": ()})
    try:
        raise ValueError("boom with secret sk-very-secret-key-123")
    except ValueError:
        entry = _format({"msg": "failed", "args": (), "exc_info": sys.exc_info()}, ["sk-very-secret-key-123"])
    assert "ValueError" in entry["exc"] and "sk-very-secret-key-123" not in entry["exc"]


def test_level_and_format_come_from_settings():
    """In a fresh interpreter: configure_logging replaces the root logger's handlers."""
    script = textwrap.dedent(
        """
        import logging
        from server.logging_setup import configure_logging
        from server.settings import Settings
        configure_logging(Settings(log_level="warning", api_keys="sk-from-settings-123:edit"), "api")
        logging.getLogger("retouch.x").info("hidden at warning level")
        logging.getLogger("retouch.x").warning("shown, key sk-from-settings-123 masked")
        configure_logging(Settings(log_level="DEBUG", log_format="text"), "w0")
        logging.getLogger("retouch.x").debug("debug in text")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETOUCH_")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "warning" and "[redacted]" in entry["msg"] and "sk-from" not in lines[0]
    assert lines[1].endswith("retouch.x debug in text") and " w0 DEBUG " in lines[1]


@pytest.fixture(scope="module")
def served_log(tiny_weights, tmp_path_factory):
    """Runs a real server (fake engine: the log lines are what matter), returns its log and secrets."""
    data = tmp_path_factory.mktemp("logging") / "data"
    data.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RETOUCH_API_KEYS", KEY)
        env.setenv("RETOUCH_ENGINE_FACTORY", "tests.support.fakes:FakeEngine")
        srv = ServeProcess(tiny_weights, data, _free_port())
    headers = {"X-API-Key": KEY}
    jobs = {}
    try:
        srv.wait()
        files = {"file": ("p.png", encode(make_photo(64, 48)), "image/png")}
        url = requests.post(srv.base_url + "/upload/image/v1", headers=headers, files=files).json()["url"]
        picture = base64.b64encode(encode(make_photo(40, 40, seed=5))).decode()
        for name, prompt in (("ok", "make it warmer"), ("failed", "oom please")):
            answer = requests.post(
                srv.base_url + "/edit/image/v1", headers=headers, json={"prompt": prompt, "input_image": url}
            )
            jobs[name] = answer.json()["job_id"]
        # Picture bytes inside a request that is refused, and a wrong key: neither may be logged.
        requests.post(
            srv.base_url + "/edit/image/v1",
            headers=headers,
            json={"prompt": "x", "input_image": f"data:image/png;base64,{picture}"},
        )
        requests.get(
            srv.base_url + "/edit/image/v1/status/job_x", headers={"X-API-Key": "wrong-key-12345678"}
        )
        for job_id in jobs.values():
            deadline = time.monotonic() + 60
            while True:
                body = requests.get(f"{srv.base_url}/edit/image/v1/status/{job_id}", headers=headers).json()
                if body["status"] in ("completed", "failed"):
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            if body.get("result_url"):
                assert requests.get(body["result_url"]).status_code == 200  # an access-log line with sig=
    finally:
        srv.stop()
    secrets = [
        KEY,
        (data / "signing_secret").read_text().strip(),
        (data / "webhook_secret").read_text().strip(),
    ]
    return open(srv.log.name).read(), jobs, secrets, picture


def test_served_log_is_one_json_object_per_line(served_log):
    text, *_ = served_log
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        entry = json.loads(line)  # raises on a stray progress bar, warning or traceback line
        assert {"ts", "level", "logger", "msg", "process"} <= set(entry)
    processes = {json.loads(line)["process"] for line in lines}
    assert "api" in processes and any(p.endswith("-w0") for p in processes)


def test_every_line_of_a_job_names_it(served_log):
    text, jobs, *_ = served_log
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    for name, job_id in jobs.items():
        mine = [e for e in entries if e.get("job_id") == job_id]
        messages = [e["msg"] for e in mine]
        assert "job queued" in messages and "job started" in messages, messages
        assert ("job completed" if name == "ok" else "job failed") in messages, messages
        # Any line that mentions the job carries it as a field, access-log lines for its URLs included.
        mentioning = [e for e in entries if job_id in e["msg"]]
        assert any("/status/" in e["msg"] for e in mentioning)
        assert all(e.get("job_id") == job_id for e in mentioning), mentioning
    completed = next(e for e in entries if e.get("job_id") == jobs["ok"] and e["msg"] == "job completed")
    assert completed["process"].endswith("-w0") and "timings" in completed
    failed = next(e for e in entries if e.get("job_id") == jobs["failed"] and e["msg"] == "job failed")
    assert failed["level"] == "warning" and failed["code"] == "GPU_OUT_OF_MEMORY"


def test_no_secrets_or_picture_bytes_in_the_log(served_log):
    text, _, secrets, picture = served_log
    for secret in secrets:
        assert secret not in text
    assert "wrong-key-12345678" not in text
    assert picture[:40] not in text and "iVBORw0KGgo" not in text  # base64 of a PNG's first bytes
    assert not re.search(r"sig=(?!\[redacted\])", text)
    assert "sig=[redacted]" in text  # the result download was logged, without its signature


def test_serve_log_level_flag_reaches_the_settings(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-m", "server.cli", "serve", "--log-level", "LOUD", "--data-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 2 and "log_level" in done.stderr and "Traceback" not in done.stderr
