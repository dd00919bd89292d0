"""Load over several pods: 200+ jobs through 2 API pods and 3 worker pods on one Redis (fast fake
engine, so this measures the queue): none lost, none doubled. benchmarks/queue_load.py is the
script that records the figures in benchmarks/RESULTS.md; here it writes to a temporary file."""

from __future__ import annotations

from benchmarks.queue_load import main
from tests.support.redis_server import redis_url  # noqa: F401 (fixture)


def test_redis_load_200_jobs_none_lost_or_doubled(redis_url, tiny_weights, tmp_path):  # noqa: F811
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    argv = ["--weights", str(tiny_weights), "--redis-url", redis_url, "--jobs", "200", "--idle-jobs", "5"]
    rows = main([*argv, "--work-dir", str(tmp_path / "pods"), "--append-results", str(results)])
    burst = rows["burst"]
    assert (burst["jobs"], burst["completed"], burst["lost"]) == (200, 200, 0)
    assert burst["duplicated"] == 0 and burst["rerun"] == 0
    assert set(burst["by_pod"]) == {"gpu-1", "gpu-2", "gpu-3"} and sum(burst["by_pod"].values()) == 200
    assert burst["jobs_per_s"] > 0 and 0 <= burst["overhead_p50_s"] <= burst["overhead_p95_s"]
    assert rows["one-at-a-time"]["completed"] == 5
    text = results.read_text()
    assert "queue_load (Redis, several pods)" in text and "burst" in text and "command:" in text
