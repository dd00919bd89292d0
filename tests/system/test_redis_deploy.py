"""The multi-pod deployment files say only what the server understands: every RETOUCH_* variable in
deploy/ and docs/deploy.md is a real setting, every pod command uses real `retouch serve` options,
and the settings table's defaults are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from server.cli import app
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FIELDS = set(Settings.model_fields)


def _variables(text: str) -> set[str]:
    return {m.lower() for m in re.findall(r"RETOUCH_([A-Z0-9_]+)", text)}


def test_redis_deploy_files_name_only_real_settings():
    texts = [(ROOT / p).read_text() for p in ("deploy/compose.yaml", "deploy/example.env", "docs/deploy.md")]
    for text in texts:
        unknown = _variables(text) - FIELDS - {"weights_dir"}  # compose's own: where weights are mounted
        assert not unknown, unknown


def test_redis_compose_pods_use_real_serve_options():
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    roles = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if not isinstance(command, list) or "serve" not in command:
            continue
        for option in (c for c in command if c.startswith("--")):
            assert option in help_text, (name, option)
        roles[name] = command[command.index("--role") + 1]
        assert service["environment"]["RETOUCH_REDIS_URL"].startswith("redis://")
        assert service["environment"]["RETOUCH_FILES_DIR"] in {v.split(":")[1] for v in service["volumes"]}
    assert sorted(roles.values()) == ["api", "api", "worker", "worker"]
    upstream = (ROOT / "deploy/nginx.conf").read_text()
    assert all(f"server {name}:8000" in upstream for name, role in roles.items() if role == "api")


def test_redis_deploy_doc_defaults_match_the_code():
    rows = re.findall(
        r"^\| `RETOUCH_([A-Z_]+)`[^|]*\| `([^`]+)` \|", (ROOT / "docs/deploy.md").read_text(), re.M
    )
    assert len(rows) >= 6
    for name, default in rows:
        value = Settings.model_fields[name.lower()].default
        assert str(value).removesuffix(".0") == default, (name, value, default)
