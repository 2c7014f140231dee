"""Every rendered file passes the real tools: cfn-lint for CloudFormation, python-hcl2 and
checkov (in its own venv, .venv-checkov, made by `make test`) for Terraform."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
from cfnlint.api import lint

from fixedip.plan.render import write

from .cases import CLOUDFORMATION_CASES, TERRAFORM_CASES, case_id, render_case

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
CHECKOV_TIMEOUT_S = 300
SKIP = re.compile(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.*)")


@pytest.mark.parametrize("case", CLOUDFORMATION_CASES, ids=case_id)
def test_cloudformation_passes_cfn_lint(case: tuple[str, str, dict[str, Any]]) -> None:
    rendered = render_case(case)
    matches = lint(rendered.files[rendered.main].decode())
    assert [str(m) for m in matches] == []


@pytest.mark.parametrize("case", TERRAFORM_CASES, ids=case_id)
def test_terraform_parses_with_hcl2(case: tuple[str, str, dict[str, Any]]) -> None:
    rendered = render_case(case)
    doc = hcl2.loads(rendered.files["main.tf"].decode())
    assert doc["resource"], "a render with no resources"
    assert doc["terraform"][0]["required_providers"]


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One checkov run over every Terraform render (a directory each); results by case.

    Not `--quiet`: the JSON report then also lists the skipped checks."""
    assert CHECKOV.exists(), (
        f"{CHECKOV} missing: run `make .venv-checkov/.installed` (make test does)"
    )
    root = tmp_path_factory.mktemp("terraform")
    for case in TERRAFORM_CASES:
        write(render_case(case), root / case_id(case))
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--skip-download",
            "--framework",
            "terraform",
            "-d",
            str(root),
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_S,
        check=False,
    )
    report = json.loads(proc.stdout)
    results = report["results"] if isinstance(report, dict) else report[0]["results"]
    by_case: dict[str, dict[str, Any]] = {
        case_id(c): {"failed": [], "skipped": []} for c in TERRAFORM_CASES
    }
    for kind in ("failed", "skipped"):
        for check in results.get(f"{kind}_checks", []):
            directory = check["file_path"].strip("/").split("/")[0]
            by_case[directory][kind].append(f"{check['check_id']} {check['resource']}")
    return by_case


@pytest.mark.parametrize("case", TERRAFORM_CASES, ids=case_id)
def test_terraform_passes_checkov(
    case: tuple[str, str, dict[str, Any]], checkov_report: dict[str, dict[str, Any]]
) -> None:
    assert checkov_report[case_id(case)]["failed"] == []


@pytest.mark.parametrize("case", TERRAFORM_CASES, ids=case_id)
def test_every_checkov_skip_says_why_and_is_documented(
    case: tuple[str, str, dict[str, Any]], checkov_report: dict[str, dict[str, Any]]
) -> None:
    text = render_case(case).files["main.tf"].decode()
    skips = SKIP.findall(text)
    docs = (ROOT / "docs" / "render.md").read_text()
    for check_id, reason in skips:
        assert len(reason.strip()) > 20, f"{check_id}: the reason is too short to say why"
        assert check_id in docs, f"{check_id} is skipped but not listed in docs/render.md"
    skipped = {entry.split()[0] for entry in checkov_report[case_id(case)]["skipped"]}
    assert skipped == {check_id for check_id, _ in skips}
