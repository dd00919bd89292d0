"""Access control: hashed API keys, both headers, scopes, per-key limits, and the public-bind guard."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.reliability import record
from server.auth import KeyRing, KeysFile, parse_env_keys, unsafe_bind_reason
from tests.support.server_harness import AsgiServer, make_settings, png_bytes

ROOT = Path(__file__).resolve().parents[2]
IMG = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_code"] == code and body["message"], body
    assert "Traceback" not in resp.text
    return body


def _create_key(data_dir: Path, *args: str) -> str:
    from server.cli import app

    result = CliRunner().invoke(app, ["keys", "create", "--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def test_keys_cli_prints_once_and_stores_only_a_hash(tmp_path):
    data = tmp_path / "data"
    key = _create_key(data, "--name", "studio", "--scope", "edit", "--budget-usd", "2.5", "--rate", "30/min")
    other = _create_key(data, "--name", "ops", "--scope", "edit", "--scope", "admin", "--concurrency", "3")
    assert key.startswith("rt_") and len(key) > 40 and key != other
    path = data / "api_keys.json"
    text = path.read_text()
    assert key not in text and other not in text  # never the key itself
    stored = json.loads(text)
    assert stored[0]["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert stored[0]["budget_usd"] == 2.5 and stored[0]["rate_per_min"] == 30
    assert stored[1]["scopes"] == ["admin", "edit"] and stored[1]["concurrency"] == 3
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    from server.cli import app

    bad = CliRunner().invoke(
        app, ["keys", "create", "--data-dir", str(data), "--name", "x", "--scope", "root"]
    )
    assert bad.exit_code != 0 and "scope" in bad.output


def test_keys_headers_scopes_and_error_shapes(tmp_path):
    data = tmp_path / "data"
    edit_key = _create_key(data, "--name", "editor", "--scope", "edit")
    admin_key = _create_key(data, "--name", "admin-only", "--scope", "admin")
    srv = AsgiServer(make_settings(tmp_path, workers=0, api_keys="envkey:edit+admin"))
    try:
        assert srv.get("/profiles/v1", headers={"X-API-Key": edit_key}).status_code == 200
        assert srv.get("/profiles/v1", headers={"Authorization": f"Bearer {edit_key}"}).status_code == 200
        assert srv.get("/profiles/v1", headers={"X-API-Key": "envkey"}).status_code == 200
        refusals = [
            (srv.get("/profiles/v1", headers={}), 401, "UNAUTHORIZED"),
            (srv.get("/profiles/v1", headers={"X-API-Key": edit_key[:-1] + "x"}), 401, "UNAUTHORIZED"),
            (srv.get("/profiles/v1", headers={"Authorization": "Bearer nope"}), 401, "UNAUTHORIZED"),
            (srv.get("/profiles/v1", headers={"Authorization": f"Basic {edit_key}"}), 401, "UNAUTHORIZED"),
            (srv.get("/profiles/v1", headers={"X-API-Key": admin_key}), 403, "FORBIDDEN"),
            (srv.get("/admin/v1/keys", headers={"X-API-Key": edit_key}), 403, "FORBIDDEN"),
        ]
        for resp, status, code in refusals:
            body = _error(resp, status, code)
            assert set(body) >= {"error", "error_code", "message"}  # the imagepipeline error shape
        listing = srv.get("/admin/v1/keys", headers={"X-API-Key": admin_key})
        assert listing.status_code == 200
        names = {k["name"] for k in listing.json()["keys"]}
        assert {"editor", "admin-only"} <= names
        assert edit_key not in listing.text and "sha256" not in listing.text
        # A key created while the server runs works at once (the keys file is re-read on change).
        late = _create_key(data, "--name", "late", "--scope", "edit")
        assert srv.get("/profiles/v1", headers={"X-API-Key": late}).status_code == 200
        # Owners are separate: a profile made with one key is invisible to another.
        made = srv.post("/profiles/v1", json={"name": "mine"}, headers={"X-API-Key": edit_key}).json()
        _error(srv.get(f"/profiles/v1/{made['profile_id']}", headers={"X-API-Key": late}), 404, "NOT_FOUND")
    finally:
        srv.close()
    record("keys", {"refusals_checked": len(refusals), "plaintext_keys_in_keys_file": 0})


def test_key_ring_compares_every_hash_in_constant_time(monkeypatch):
    """A lookup touches every stored hash with hmac.compare_digest, whatever matches (no early exit)."""
    import hmac

    ring = KeyRing(KeysFile(Path("/nonexistent/keys.json")), parse_env_keys("a,b,c,d", {}))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr("server.auth.hmac.compare_digest", lambda x, y: calls.append(1) or real(x, y))
    assert ring.match("a") is not None and len(calls) == 4
    calls.clear()
    assert ring.match("zzz") is None and len(calls) == 4


def test_key_rate_concurrency_and_budget_limits(tmp_path):
    data = tmp_path / "data"
    rated = _create_key(data, "--name", "rated", "--rate", "3/min")
    narrow = _create_key(data, "--name", "narrow", "--concurrency", "2")
    broke = _create_key(data, "--name", "broke", "--budget-usd", "0")
    srv = AsgiServer(make_settings(tmp_path, workers=0))

    def submit(key: str):
        return srv.post(
            "/edit/image/v1", json={"prompt": "x", "input_image": IMG}, headers={"X-API-Key": key}
        )

    try:
        rate_answers = [submit(rated) for _ in range(5)]
        assert [r.status_code for r in rate_answers] == [200, 200, 200, 429, 429]
        for r in rate_answers[3:]:
            _error(r, 429, "RATE_LIMITED")
            assert 1 <= int(r.headers["Retry-After"]) <= 60  # an integer, as clients parse it
        first, second = submit(narrow), submit(narrow)
        assert first.status_code == second.status_code == 200
        third = submit(narrow)
        _error(third, 429, "CONCURRENCY_LIMITED")
        assert int(third.headers["Retry-After"]) >= 1
        cancel = srv.post(f"/edit/image/v1/cancel/{first.json()['job_id']}", headers={"X-API-Key": narrow})
        assert cancel.json()["status"] == "cancelled"
        assert submit(narrow).status_code == 200  # a finished job frees its slot
        _error(submit(broke), 402, "INSUFFICIENT_BALANCE")
    finally:
        srv.close()
    record(
        "rate_limit",
        {
            "over_rate_requests": 2,
            "answered_429_with_integer_retry_after": sum(r.status_code == 429 for r in rate_answers),
            "over_concurrency_429": 1,
            "spent_budget_402": 1,
        },
    )


def test_serve_refuses_public_bind_without_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETOUCH_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 2 and "refusing to serve on 0.0.0.0 without API keys" in proc.stderr
    assert "--insecure-no-auth" in proc.stderr
    from server.settings import Settings

    open_ring = KeyRing(KeysFile(tmp_path / "none.json"), [])
    keyed_ring = KeyRing(KeysFile(tmp_path / "none.json"), parse_env_keys("k1", {}))
    assert unsafe_bind_reason(Settings(host="10.1.2.3"), open_ring)
    assert unsafe_bind_reason(Settings(host="10.1.2.3", insecure_no_auth=True), open_ring) is None
    assert unsafe_bind_reason(Settings(host="10.1.2.3"), keyed_ring) is None
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert unsafe_bind_reason(Settings(host=loopback), open_ring) is None
    record("bind_refusal", {"exit_code": proc.returncode, "seconds_to_refuse": round(seconds, 2)})


@pytest.mark.parametrize("spec", ["k:root", "k:edit+sudo"])
def test_env_keys_with_unknown_scopes_are_refused(spec):
    with pytest.raises(ValueError, match="unknown scope"):
        parse_env_keys(spec, {})


# One read-only route per contract; each must refuse in its own error shape.
CONTRACT_PROBES = {
    "imagepipeline": "/profiles/v1",
    "fashn": "/v1/status/pred_none",
    "depicta": "/v1/jobs",
    "openai": "/v1/models",
}


def test_keys_refusals_in_every_contracts_own_shape(tmp_path):
    data = tmp_path / "data"
    edit_key = _create_key(data, "--name", "editor", "--scope", "edit")
    admin_key = _create_key(data, "--name", "admin-only", "--scope", "admin")
    srv = AsgiServer(make_settings(tmp_path, workers=0))
    paths = set(srv.app.openapi()["paths"])
    shapes = {}
    try:
        for contract, path in CONTRACT_PROBES.items():
            template = path.replace("pred_none", "{prediction_id}")
            if template not in paths:
                continue  # that contract is not mounted in this build
            ok = srv.get(path, headers={"Authorization": f"Bearer {edit_key}"})
            assert ok.status_code in (200, 404), (contract, ok.text)
            for headers, status in (
                ({}, 401),
                ({"Authorization": "Bearer wrong"}, 401),
                ({"X-API-Key": "wrong"}, 401),
                ({"Authorization": f"Bearer {admin_key}"}, 403),
            ):
                r = srv.get(path, headers=headers)
                assert r.status_code == status, (contract, headers, r.text)
                assert r.headers["content-type"].startswith("application/json") and "Traceback" not in r.text
                shapes.setdefault(contract, set()).add(tuple(sorted(r.json())))
    finally:
        srv.close()
    assert "imagepipeline" in shapes
    assert all(len(s) == 1 for s in shapes.values())  # one stable shape per contract
    path = ROOT / "benchmarks" / "out" / "reliability" / "keys.json"
    if path.exists():
        figures = json.loads(path.read_text())["figures"]
        figures["contracts_refusing_in_own_shape"] = ",".join(sorted(shapes))
        record("keys", figures)
