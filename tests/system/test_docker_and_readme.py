"""What can be checked of Dockerfile.cuda without Docker, and the README against the code.

Every shell command in the README is either run here verbatim (the CPU quick start) or matched
against what it relies on (Makefile targets, CLI options, HTTP routes, settings, Dockerfile) and
the test that exercises it, so a renamed flag or route breaks this test instead of a reader.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from tests.conftest import encode, make_photo

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile.cuda").read_text()

# README command -> the test that runs it (file, test function).
CLI_COVERAGE = {
    ("serve",): (
        "tests/contracts/imagepipeline/test_imagepipeline_client.py",
        "test_server_e2e_upload_and_edit_one_image",
    ),
    ("keys", "create"): (
        "tests/contracts/test_keys_and_access.py",
        "test_keys_cli_prints_once_and_stores_only_a_hash",
    ),
    ("weights", "pull"): (
        "tests/engine/test_weights_manifest.py",
        "test_pull_downloads_at_the_resolved_commit_and_writes_the_manifest",
    ),
    ("weights", "verify"): (
        "tests/engine/test_weights_manifest.py",
        "test_retouch_commands_verify_and_serve_refuses_a_tampered_set",
    ),
    ("weights", "bundle"): (
        "tests/engine/test_weights_manifest.py",
        "test_bundle_then_import_gives_a_verified_loadable_set",
    ),
    ("weights", "import"): (
        "tests/engine/test_weights_manifest.py",
        "test_bundle_then_import_gives_a_verified_loadable_set",
    ),
    ("weights", "manifest"): (
        "tests/engine/test_weights_sources.py",
        "test_manifest_command_hashes_the_files_on_disk_and_names_extra_and_missing_ones",
    ),
    # Run verbatim below (test_readme_quick_start_commands_run_as_written).
    ("weights", "tiny"): (
        "tests/system/test_docker_and_readme.py",
        "test_readme_quick_start_commands_run_as_written",
    ),
    ("edit",): ("tests/system/test_docker_and_readme.py", "test_readme_quick_start_commands_run_as_written"),
}
# Commands of the official clients' CLIs, and the variables they read, with the test that runs them.
CLIENT_COVERAGE = {
    "depicta": ("tests/contracts/depicta/test_depicta.py", "test_depicta_e2e_cli_edit_with_reference"),
    "DEPICTA_API_URL": (
        "tests/contracts/depicta/test_depicta.py",
        "test_depicta_e2e_cli_edit_with_reference",
    ),
    "DEPICTA_API_KEY": (
        "tests/contracts/depicta/test_depicta.py",
        "test_depicta_e2e_cli_edit_with_reference",
    ),
}


# -- helpers -------------------------------------------------------------------------------
def shell_commands(markdown: str) -> list[str]:
    """Every command line of the README's ```bash blocks (continuations joined, && split)."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", markdown, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            commands += [part.strip() for part in line.split("&&")]
    return commands


def click_root():
    from server.cli import app

    return typer.main.get_command(app)


def find_cli(words: list[str]):
    """(path of subcommand names, the click command, the remaining words)."""
    command, path = click_root(), []
    while words and hasattr(command, "commands") and words[0] in command.commands:
        path.append(words[0])
        command = command.commands[words.pop(0)]
    return tuple(path), command, words


def covering_test_exists(file: str, test: str) -> bool:
    path = ROOT / file
    return (
        path.is_file() and re.search(rf"^def {re.escape(test)}\(", path.read_text(), flags=re.M) is not None
    )


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from server.app import create_app
    from tests.support.server_harness import make_settings

    return create_app(make_settings(tmp_path_factory.mktemp("routes")))


def has_route(app, method: str, path: str) -> bool:
    from starlette.routing import Match

    scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


# -- Dockerfile.cuda -----------------------------------------------------------------------
DOCKER_KEYWORDS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def test_dockerfile_parses_and_uses_a_cuda_runtime_base():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    assert {k for k, _ in instructions} <= DOCKER_KEYWORDS
    image = instructions[0][1].split()[0]
    assert image.startswith("nvidia/cuda:") and "runtime" in image
    for keyword, rest in instructions:
        if keyword in ("CMD", "VOLUME"):
            assert isinstance(json.loads(rest), list)  # exec form: signals reach retouch, not a shell


def test_dockerfile_installs_like_the_readme_and_runs_serve_as_a_user():
    instructions = dockerfile_instructions()
    runs = [rest for k, rest in instructions if k == "RUN"]
    install = [r for r in runs if "make install" in r]
    assert len(install) == 1
    # The README's set-up is `make install` (what `make serve` / `make test` run first).
    assert shlex.split(install[0].split("&&")[0])[:2] == ["make", "install"]
    assert "(`make install`)" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve: install$", makefile, flags=re.M) and re.search(
        r"^test: install$", makefile, flags=re.M
    )
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any("useradd" in r and users[-1] in r.split() for r in runs)
    keys = [k for k, _ in instructions]
    assert keys.index("USER") < keys.index("CMD")
    cmd = json.loads(next(rest for k, rest in instructions if k == "CMD"))
    assert cmd[0].endswith("retouch") and cmd[1] == "serve"
    assert cmd[cmd.index("--weights") + 1] == "weights.yaml"
    assert ".venv/" in (ROOT / ".dockerignore").read_text().split()  # a local venv never enters the image


def test_dockerfile_volumes_match_the_weights_root_and_data_dir():
    from pipelines.registry import load_registry

    instructions = dockerfile_instructions()
    volumes = set(json.loads(next(rest for k, rest in instructions if k == "VOLUME")))
    workdir = Path(next(rest for k, rest in instructions if k == "WORKDIR"))
    env = " ".join(rest for k, rest in instructions if k == "ENV")
    data_dir = re.search(r"RETOUCH_DATA_DIR=(\S+)", env).group(1)
    assert data_dir in volumes
    # weights.yaml's root, resolved inside the image, is the weights volume.
    root = load_registry(ROOT / "weights.yaml").base_dir().relative_to(ROOT)
    assert str(workdir / root) in volumes


def test_dockerfile_healthcheck_hits_readyz_on_the_served_port(app):
    instructions = dockerfile_instructions()
    health = next(rest for k, rest in instructions if k == "HEALTHCHECK")
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*)", health)
    assert url, health
    port, path = url.group(1), url.group(2)
    assert path == "/readyz"
    assert has_route(app, "GET", path)
    expose = next(rest for k, rest in instructions if k == "EXPOSE")
    cmd = json.loads(next(rest for k, rest in instructions if k == "CMD"))
    assert port == expose == cmd[cmd.index("--port") + 1]
    assert "0.0.0.0" in cmd  # reachable from outside the container


# -- README --------------------------------------------------------------------------------
def test_readme_starts_with_the_two_setup_commands_in_a_block_under_the_title():
    lines = README.splitlines()
    assert lines[0] == "# Retouch" and lines[1] == "" and lines[2] == "```bash"
    block = lines[3 : lines.index("```", 3)]
    assert [line.split("#")[0].strip() for line in block] == ["make serve", "make test"]


def test_readme_documents_every_setting():
    from server.settings import Settings

    missing = [
        f"RETOUCH_{name.upper()}"
        for name in Settings.model_fields
        if f"RETOUCH_{name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_readme_explains_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    names.discard(project["name"])  # an extra that pulls in another extra (test -> fp8)
    table = README.split("## Dependencies and why", 1)[1]
    explained = {
        p.strip().lower().replace("_", "-")
        for row in re.findall(r"^\| ([^|]+) \|", table, flags=re.M)
        for p in re.sub(r"\(.*?\)", "", row).split(",")
    }
    assert not names - explained, f"dependencies without a why in the README: {sorted(names - explained)}"


def test_readme_links_point_to_files_that_exist():
    links = re.findall(r"\]\(((?!https?:|#)[^)]+)\)", README)
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_every_readme_command_is_covered(app):
    from server.settings import Settings

    settings_env = {f"RETOUCH_{n.upper()}" for n in Settings.model_fields}
    makefile = (ROOT / "Makefile").read_text()
    volumes = set(json.loads(next(rest for k, rest in dockerfile_instructions() if k == "VOLUME")))
    test_sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    problems = []
    commands = shell_commands(README)
    assert len(commands) >= 15
    for command in commands:
        words = shlex.split(command)
        head = words[0]
        if head in ("git", "cd"):  # how CI itself gets the code
            continue
        if head == "make":
            target = words[1]
            if not re.search(rf"^{re.escape(target)}:", makefile, flags=re.M):
                problems.append(f"{command}: no Makefile target {target!r}")
            continue
        if head.endswith("retouch"):
            path, click_command, rest = find_cli(words[1:])
            opts = {o for p in click_command.params for o in p.opts}
            unknown = [w for w in rest if w.startswith("--") and w not in opts]
            file_test = CLI_COVERAGE.get(path)
            if unknown:
                problems.append(f"{command}: unknown options {unknown}")
            if file_test is None or not covering_test_exists(*file_test):
                problems.append(f"{command}: no test runs `retouch {' '.join(path)}`")
            continue
        if head == "curl":
            url = next(w for w in words if w.startswith("http://"))
            path = "/" + url.split("/", 3)[3].split("?")[0]
            method = (
                words[words.index("-X") + 1]
                if "-X" in words
                else ("POST" if {"-d", "-F"} & set(words) else "GET")
            )
            if not has_route(app, method, path):
                problems.append(f"{command}: no route {method} {path}")
            template = re.sub(r"/job_\w+$", "/", path)
            if template not in test_sources:
                problems.append(f"{command}: no test calls {template}")
            key_header = [
                words[i + 1] for i, w in enumerate(words) if w == "-H" and "key" in words[i + 1].lower()
            ]
            key_header += [
                words[i + 1] for i, w in enumerate(words) if w == "-H" and "Bearer" in words[i + 1]
            ]
            if not key_header:
                problems.append(f"{command}: sends no API key")
            continue
        if head == "docker":
            if words[1] == "build":
                if words[words.index("-f") + 1] != "Dockerfile.cuda":
                    problems.append(f"{command}: not Dockerfile.cuda")
            else:
                mounts = {words[i + 1].split(":")[1] for i, w in enumerate(words) if w == "-v"}
                envs = {words[i + 1].split("=")[0] for i, w in enumerate(words) if w == "-e"}
                ports = {words[i + 1].split(":")[1] for i, w in enumerate(words) if w == "-p"}
                if mounts != volumes or not envs <= settings_env or ports != {"8000"}:
                    problems.append(
                        f"{command}: volumes/env/port do not match Dockerfile.cuda and the settings"
                    )
            continue
        if head == "export":
            for assignment in words[1:]:
                name = assignment.split("=")[0]
                covered = name in settings_env or (
                    name in CLIENT_COVERAGE and covering_test_exists(*CLIENT_COVERAGE[name])
                )
                if not covered:
                    problems.append(f"{command}: nothing tests {name}")
            continue
        if head in CLIENT_COVERAGE:
            file, test = CLIENT_COVERAGE[head]
            source = (ROOT / file).read_text()
            if not covering_test_exists(file, test) or not all(f'"{w}"' in source for w in words[1:3]):
                problems.append(f"{command}: not run by {file}::{test}")
            continue
        problems.append(f"{command}: no test or CI step covers this command")
    assert not problems, "\n".join(problems)


def test_readme_python_examples_compile_and_name_real_models():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "README.md", "exec")
    from pipelines.registry import load_registry

    models = load_registry(ROOT / "weights.yaml").models
    for only in re.findall(r"--only (\S+)", README):
        assert only in models


def test_readme_quick_start_commands_run_as_written(tmp_path):
    """The CPU quick start, verbatim: build the tiny set, edit a picture without a server."""
    block = README.split("## Quick start", 1)[1].split("## The HTTP contracts", 1)[0]
    commands = [c for c in shell_commands(block) if c.startswith(".venv/bin/retouch")]
    assert [shlex.split(c)[1] for c in commands] == ["weights", "edit"]
    (tmp_path / "photo.jpg").write_bytes(encode(make_photo(64, 48), "JPEG"))
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    # The checkout's own entry point, reached by the path the README uses.
    (venv / "retouch").write_text(f'#!/bin/sh\nexec {sys.executable} -m server.cli "$@"\n')
    (venv / "retouch").chmod(0o755)
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for command in commands:
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    assert (tmp_path / "tiny-weights" / "weights.yaml").is_file()
    from PIL import Image

    assert Image.open(tmp_path / "out.png").size == (64, 48)


def test_make_demo_builds_the_tiny_set_and_serves_it():
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert any("retouch weights tiny ./tiny-weights" in line for line in lines)
    assert lines[-1].endswith("retouch serve --weights tiny-weights/weights.yaml")
