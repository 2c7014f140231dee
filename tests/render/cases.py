"""The render matrix every lint test walks: each option, format and a variant or two."""

from __future__ import annotations

from typing import Any

from fixedip.plan.render import OPTION_IDS, Rendered, RenderParams, render

AWS_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "nat-gateway": [{}, {"azs": 3, "ips": 2}],
    "fixedip-vm": [{}, {"ips": 3, "client_cidrs": ("198.18.0.0/15", "198.19.0.0/16")}],
    "fixedip-ha": [{}, {"ips": 2, "floating": 2, "azs": 3}],
    "global-accelerator": [{}],
    "eni-eips": [{"function_name": "billing"}],
}
GCP_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "cloud-nat": [{}, {"gcp_egress": "connector", "ips": 2}],
}


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for option, variants in AWS_VARIANTS.items():
        for fmt in ("terraform", "cloudformation"):
            cases += [(option, fmt, variant) for variant in variants]
    for option, variants in GCP_VARIANTS.items():
        cases += [(option, "terraform", variant) for variant in variants]
    assert {option for option, _, _ in cases} == set(OPTION_IDS)
    return cases


CASES = _cases()


def case_id(case: tuple[str, str, dict[str, Any]]) -> str:
    option, fmt, variant = case
    extra = "-".join(f"{k}={v if not isinstance(v, tuple) else len(v)}" for k, v in variant.items())
    return f"{option}-{fmt}" + (f"-{extra}" if extra else "")


def render_case(case: tuple[str, str, dict[str, Any]]) -> Rendered:
    option, fmt, variant = case
    return render(option, fmt, RenderParams(**variant))


TERRAFORM_CASES = [c for c in CASES if c[1] == "terraform"]
CLOUDFORMATION_CASES = [c for c in CASES if c[1] == "cloudformation"]
