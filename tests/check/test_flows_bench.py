"""The flows benchmark, run tiny: its generated logs must parse without a malformed line
(the benchmark refuses otherwise) and its results must be written where asked."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import flows as bench


def test_the_benchmark_runs_end_to_end_on_a_tiny_log(tmp_path: Path) -> None:
    results = tmp_path / "results"
    code = bench.main(
        ["--lines", "2000", "--rounds", "1", "--results", str(results), "--workdir", str(tmp_path)]
    )
    assert code == 0
    run = json.loads((results / "flows.json").read_text())
    by_name = {r["scenario"]: r for r in run["results"]}
    assert by_name["VPC Flow Logs v2"]["records"] == 2000
    assert by_name["fixedip flow log (JSON lines)"]["records"] == 2000
    for result in run["results"]:
        assert result["fixedip"]["records_s"] > 0
        # every log holds SSRF-looking lines, or (the scan) unexpected destinations
        assert result["cli"]["exit_code"] == 1, result["cli"]["stderr"]
    assert run["cli_empty_log"]["exit_code"] == 0  # the RSS floor: an empty log is fine
    text = (results / "flows.md").read_text()
    assert "| VPC Flow Logs v2, gzip |" in text and "on an empty log:" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # logs removed
