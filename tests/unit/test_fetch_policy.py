"""SSRF-safe fetching (server/fetch.py): blocked addresses, pinned DNS, redirects, allowlist, limits."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from benchmarks.reliability import record
from server.errors import ServiceError
from server.fetch import FetchPolicy, fetch_url
from tests.support.server_harness import png_bytes

PNG = png_bytes(40, 30)


class AssetServer:
    """A loopback HTTP server with the behaviours a hostile or broken asset host can show."""

    def __init__(self, host: str = "127.0.0.1"):
        self.hits: list[tuple[str, str]] = []  # (path, Host header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("Host", "")))
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                route = parts.path
                if route == "/img.png":
                    self._send(200, "image/png", PNG)
                elif route == "/octet":
                    self._send(200, "application/octet-stream", PNG)
                elif route == "/html":
                    self._send(200, "text/html; charset=utf-8", b"<html>login</html>")
                elif route == "/big":
                    self._send(200, "image/png", b"\0" * 2_000_000)
                elif route == "/big-unsized":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for _ in range(40):
                        self.wfile.write(b"\0" * 50_000)
                elif route == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(1000):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        time.sleep(0.05)
                elif route == "/to":
                    self.send_response(302)
                    self.send_header("Location", query["url"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif route.startswith("/hops/"):
                    left = int(route.rsplit("/", 1)[1])
                    self.send_response(302)
                    self.send_header("Location", "/img.png" if left <= 1 else f"/hops/{left - 1}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(404, "text/plain", b"no")

            def _send(self, status: int, kind: str, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def assets():
    server = AssetServer()
    yield server
    server.close()


LOOPBACK_ONLY = FetchPolicy(allow_nets=(ipaddress.ip_network("127.0.0.1/32"),))


def _refused(url: str, policy: FetchPolicy = FetchPolicy()) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        fetch_url(url, what="input_image", policy=policy)
    assert err.value.field == "input_image"
    return err.value


# Every spelling of an address that must never be fetched. {port} is the loopback asset server, so a
# connection that slipped through would show up in its hit list.
BLOCKED = [
    "http://127.0.0.1:{port}/img.png",
    "http://localhost:{port}/img.png",
    "http://0x7f000001:{port}/img.png",
    "http://2130706433:{port}/img.png",
    "http://127.1:{port}/img.png",
    "http://0177.0.0.1:{port}/img.png",
    "http://0.0.0.0:{port}/img.png",
    "http://[::1]:{port}/img.png",
    "http://[::ffff:127.0.0.1]:{port}/img.png",
    "http://[::ffff:7f00:1]:{port}/img.png",
    "http://[2002:7f00:1::]:{port}/img.png",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[fd00::1]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
]


def test_ssrf_blocked_addresses_never_connect(assets):
    started = time.perf_counter()
    for template in BLOCKED:
        err = _refused(template.format(port=assets.port))
        # httpx itself refuses some odd spellings (leading-zero octets) as invalid URLs: also a 422.
        assert err.code in ("INPUT_URL_BLOCKED", "INVALID_PARAMETERS"), (template, err.message)
        assert err.http_status == 422
    seconds = time.perf_counter() - started
    assert assets.hits == []  # no refused address was ever connected to
    record(
        "ssrf",
        {
            "addresses_tried": len(BLOCKED),
            "refused": len(BLOCKED),
            "connections_to_refused": len(assets.hits),
            "seconds_for_all": round(seconds, 3),
        },
    )


def test_ssrf_allowlist_opens_exactly_its_entries(assets):
    assert fetch_url(f"{assets.base}/img.png", what="input_image", policy=LOOPBACK_ONLY) == PNG
    # 127.0.0.2 is loopback too, but not in the list.
    assert _refused(f"http://127.0.0.2:{assets.port}/img.png", LOOPBACK_ONLY).code == "INPUT_URL_BLOCKED"
    by_name = FetchPolicy(allow_hosts=frozenset({"localhost"}))
    assert fetch_url(f"http://localhost:{assets.port}/img.png", what="input_image", policy=by_name) == PNG
    assert _refused(f"{assets.base}/img.png", by_name).code == "INPUT_URL_BLOCKED"
    wide = FetchPolicy(allow_nets=(ipaddress.ip_network("127.0.0.0/8"),))
    assert _refused("http://169.254.169.254/", wide).code == "INPUT_URL_BLOCKED"
    from server.settings import Settings

    parsed = FetchPolicy.from_settings(Settings(fetch_allow="assets.corp, 10.20.0.0/16 ,fd12::/16"))
    assert parsed.allow_hosts == {"assets.corp"}
    assert [str(n) for n in parsed.allow_nets] == ["10.20.0.0/16", "fd12::/16"]


def test_ssrf_dns_is_resolved_once_and_the_checked_address_is_used(assets, monkeypatch):
    """DNS rebinding: the second answer would point at the metadata service; it is never asked for."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1", "169.254.169.254", "169.254.169.254"])
    asked = []

    def rebinding(host, port, *args, **kwargs):
        if host != "assets.test":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr("server.fetch.socket.getaddrinfo", rebinding)
    got = fetch_url(f"http://assets.test:{assets.port}/img.png", what="input_image", policy=LOOPBACK_ONLY)
    assert got == PNG and asked == ["assets.test"]
    assert assets.hits[-1] == ("/img.png", f"assets.test:{assets.port}")  # the name, not the IP
    # Next time the name resolves to the metadata address: refused before any connection.
    hits = len(assets.hits)
    assert _refused(f"http://assets.test:{assets.port}/img.png", LOOPBACK_ONLY).code == "INPUT_URL_BLOCKED"
    assert len(assets.hits) == hits


def test_ssrf_mixed_dns_answer_is_refused(monkeypatch):
    def mixed(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr("server.fetch.socket.getaddrinfo", mixed)
    assert _refused("http://cdn.example/img.png").code == "INPUT_URL_BLOCKED"


def test_ssrf_redirects_are_rechecked_and_limited(assets):
    to_private = f"{assets.base}/to?url=http://127.0.0.2:{assets.port}/img.png"
    assert _refused(to_private, LOOPBACK_ONLY).code == "INPUT_URL_BLOCKED"
    to_metadata = f"{assets.base}/to?url=http://169.254.169.254/latest/meta-data/"
    assert _refused(to_metadata, LOOPBACK_ONLY).code == "INPUT_URL_BLOCKED"
    assert fetch_url(f"{assets.base}/hops/3", what="input_image", policy=LOOPBACK_ONLY) == PNG
    err = _refused(f"{assets.base}/hops/4", LOOPBACK_ONLY)
    assert err.code == "INPUT_FETCH_FAILED" and "more than 3 redirects" in err.message


def test_fetch_limits_size_time_and_content_type(assets):
    small = FetchPolicy(max_bytes=1_000_000, allow_nets=LOOPBACK_ONLY.allow_nets)
    figures = {}
    for route, code in (
        ("/big", "FILE_TOO_LARGE"),
        ("/big-unsized", "FILE_TOO_LARGE"),
        ("/html", "INPUT_FETCH_FAILED"),
    ):
        started = time.perf_counter()
        err = _refused(f"{assets.base}{route}", small)
        figures[f"{route.strip('/')}_s"] = round(time.perf_counter() - started, 3)
        assert err.code == code, (route, err.message)
    assert "text/html" in _refused(f"{assets.base}/html", small).message
    assert fetch_url(f"{assets.base}/octet", what="input_image", policy=small) == PNG
    quick = FetchPolicy(timeout_s=1.0, allow_nets=LOOPBACK_ONLY.allow_nets)
    started = time.perf_counter()
    err = _refused(f"{assets.base}/slow", quick)
    slow_s = time.perf_counter() - started
    assert err.code == "INPUT_FETCH_FAILED" and slow_s < 3.0  # a trickling server cannot hold us
    figures["trickle_stopped_after_s"] = round(slow_s, 2)
    from server.settings import Settings

    defaults = FetchPolicy.from_settings(Settings())
    assert (defaults.max_bytes, defaults.timeout_s, defaults.connect_timeout_s, defaults.max_redirects) == (
        20 * 1024 * 1024,
        30.0,
        5.0,
        3,
    )
    record("fetch_limits", figures)
