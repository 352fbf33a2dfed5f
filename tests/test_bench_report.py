"""The benchmark report at its smallest size: every file is written, every figure finite."""

import json
import math
import os

import pytest

pytest.importorskip("matplotlib")

from anode_ext.bench.cli import DEFAULT_SECTIONS as SECTIONS  # noqa: E402
from anode_ext.bench.cli import main  # noqa: E402
from anode_ext.bench.timing import timing_summaries  # noqa: E402


def numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


def test_quick_report(tmp_path):
    out = str(tmp_path / "report")
    assert main(["--quick", "--device", "cpu", "--out", out]) == 0
    for name in ("results.json", "report.md", "blocks_memory.png", "blocks_time.png", "blocks_grad_error.png",
                 "reversibility.png"):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 100, name
    results = json.load(open(os.path.join(out, "results.json")))
    assert set(SECTIONS) <= set(results)
    assert all(math.isfinite(x) for x in numbers(results))
    env = results["environment"]
    for key in ("device_name", "torch_version", "build_info", "cpu_count", "date"):
        assert env[key] not in (None, "")
    solvers = {r["solver"] for r in results["blocks"]}
    assert {"direct", "anode", "revolve c=1", "adjoint"} <= solvers
    exact = [r["grad_error"] for r in results["blocks"] if r["solver"] in ("anode", "revolve c=1")]
    assert max(exact) < 1e-12
    report = open(os.path.join(out, "report.md")).read()
    for section in SECTIONS:
        assert results[section], section
    assert report.count("## ") == len(SECTIONS)
    # Every timed row carries its spread, and the summary counts them.
    summaries = list(timing_summaries(results))
    assert len(summaries) >= 40 and all(s["rounds"] >= 1 and s["spread"] >= 0 for s in summaries)
    flagged = sum(s["noisy"] for s in summaries)
    assert f"Timing: {len(summaries)} timed rows;" in report and f"{flagged} flagged †" in report
    # The blocks table shows one Nt; the other rows are in results.json and the plots.
    hidden = sum(f"Nt={r['steps']} shown" not in report for r in results["blocks"])
    assert report.count("(IQR ") == len(summaries) - hidden


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["--sections", "nonsense"])
    assert "unknown section(s) nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--quick", "--full"])
