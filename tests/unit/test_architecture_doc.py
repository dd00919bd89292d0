"""docs/architecture.md names the code of each hop as ``path/module.py:Name`` (or ``Name.attr``):
every such name must exist, so the page follows the code when it is renamed or moved."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`((?:server|pipelines)/[\w/]+)\.py:(\w+(?:\.\w+)*)")


def test_every_module_and_name_the_architecture_page_cites_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    cited = REFERENCE.findall(text)
    assert len(cited) >= 25, "the page cites the code of each hop"
    missing = []
    for path, dotted in cited:
        target = importlib.import_module(path.replace("/", "."))
        for part in dotted.split("."):
            target = getattr(target, part, None)
            if target is None:
                missing.append(f"{path}.py:{dotted}")
                break
    assert not missing, missing
