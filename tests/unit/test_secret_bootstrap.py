"""Unset signing and webhook secrets are filled once and then kept: in the data dir on one machine,
in the shared Redis when there are several pods."""

from __future__ import annotations

from server.secret_bootstrap import bootstrap_secrets
from server.settings import Settings
from tests.support.redis_server import delete_prefix, redis_url, unique_prefix  # noqa: F401 (fixture)


def test_one_machine_keeps_its_secrets_in_the_data_dir(tmp_path):
    first = Settings(data_dir=tmp_path / "data")
    bootstrap_secrets(first)
    assert first.webhook_secret.startswith("whsec_") and len(first.signing_secret) == 64
    assert (tmp_path / "data" / "signing_secret").stat().st_mode & 0o777 == 0o600
    again = Settings(data_dir=tmp_path / "data")
    bootstrap_secrets(again)
    assert (again.signing_secret, again.webhook_secret) == (first.signing_secret, first.webhook_secret)


def test_a_set_secret_is_left_alone(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", signing_secret="mine", webhook_secret="whsec_bWluZQ==")
    bootstrap_secrets(settings)
    assert (settings.signing_secret, settings.webhook_secret) == ("mine", "whsec_bWluZQ==")
    assert not (tmp_path / "data" / "signing_secret").exists()


def test_pods_share_one_secret_through_redis(tmp_path, redis_url):  # noqa: F811
    prefix = unique_prefix()
    try:
        pods = [
            Settings(data_dir=tmp_path / name, redis_url=redis_url, redis_prefix=prefix)
            for name in ("a", "b")
        ]
        for settings in pods:
            bootstrap_secrets(settings)
        assert pods[0].signing_secret == pods[1].signing_secret
        assert pods[0].webhook_secret == pods[1].webhook_secret
        assert not (tmp_path / "a" / "signing_secret").exists()
    finally:
        delete_prefix(redis_url, prefix)
