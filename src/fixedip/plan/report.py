"""The planner's outputs as data: JSON documents and Markdown tables (rich lives in the CLI).

Markdown is what docs/choosing.md embeds verbatim, so it is deterministic: same inputs
and prices, same bytes.
"""

from __future__ import annotations

from typing import Any

from fixedip.plan.model import Inputs, Option
from fixedip.plan.prices import Price, PriceTable


def summary(inputs: Inputs) -> str:
    """One line that says what was planned for."""
    parts = [
        f"{inputs.cloud} {inputs.region}",
        inputs.env,
        f"{inputs.egress_gb:g} GB/month egress",
        f"{inputs.requests:,} requests/month",
        f"{inputs.ips} static IP{'s' if inputs.ips != 1 else ''}",
        f"{inputs.zones} AZ{'s' if inputs.zones != 1 else ''}",
    ]
    if inputs.ingress:
        parts.append("webhooks to a static IP")
    if inputs.nat_exists:
        parts.append("NAT already exists")
    if inputs.only_cloud_apis:
        parts.append("only cloud-provider APIs")
    if inputs.metrics:
        parts.append(f"{inputs.metrics} CloudWatch metric{'s' if inputs.metrics != 1 else ''}")
    return ", ".join(parts)


def plan_document(inputs: Inputs, options: list[Option], notes: list[str]) -> dict[str, Any]:
    """`fixedip plan --format json`: {"inputs", "options" (ranked), "notes"}."""
    return {
        "inputs": inputs.to_dict(),
        "options": [o.to_dict() for o in options],
        "notes": notes,
    }


def breakdown_text(option: Option, sep: str = "; ") -> str:
    return sep.join(f"{item} ${usd:,.2f}" for item, usd in option.breakdown.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def plan_markdown(inputs: Inputs, options: list[Option], notes: list[str]) -> str:
    """`fixedip plan --format markdown`: a ranked table, then the notes."""
    lines = [
        f"Planned for: {summary(inputs)}.",
        "",
        "| # | option | id | $/month | fits | breakdown | why |",
        "|---:|---|---|---:|---|---|---|",
    ]
    for rank, option in enumerate(options, 1):
        star = "*" if option.estimates else ""
        lines.append(
            f"| {rank} | {_cell(option.name)} | `{option.id}` | {option.monthly_usd:,.2f}{star} | "
            f"{'yes' if option.fits else 'no'} | {_cell(breakdown_text(option))} | "
            f"{_cell(option.why)} |"
        )
    lines.append("")
    if any(o.estimates for o in options):
        lines.append("\\* includes an estimated price.")
        lines.append("")
    lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"


def monthly(price: Price, hours: int) -> float | None:
    """An hourly price over a month of `hours`; None for prices that are not hourly."""
    return price.usd * hours if "hour" in price.unit.lower() else None


def price_rows(prices: PriceTable) -> list[dict[str, Any]]:
    """Every price with its month figure (730 h, and the source's own hours if other)."""
    rows = []
    for key, price in prices.prices.items():
        month = monthly(price, prices.hours_per_month)
        also = None
        if (
            month is not None
            and price.source_hours
            and price.source_hours != prices.hours_per_month
        ):
            also = {"hours": price.source_hours, "usd": round(price.usd * price.source_hours, 2)}
        rows.append(
            {
                "key": key,
                "item": price.item,
                "usd": price.usd,
                "unit": price.unit,
                "per_month_usd": None if month is None else round(month, 2),
                "per_month_at_source_hours": also,
                "region": price.region,
                "read": price.read,
                "status": price.status,
                "source": price.source,
                "url": price.url,
            }
        )
    return rows


def month_text(row: dict[str, Any], hours: int) -> str:
    if row["per_month_usd"] is None:
        return ""
    text = f"${row['per_month_usd']:,.2f} ({hours} h)"
    if row["per_month_at_source_hours"]:
        also = row["per_month_at_source_hours"]
        text += f"; ${also['usd']:,.2f} ({also['hours']} h)"
    return text


def prices_markdown(prices: PriceTable) -> str:
    lines = [
        f"Prices: {prices.origin}; {prices.hours_per_month} hours per month.",
        "",
        "| key | item | USD | unit | per month | region | read | status | source |",
        "|---|---|---:|---|---|---|---|---|---|",
    ]
    for row in price_rows(prices):
        source = f"[{_cell(row['source'])}]({row['url']})" if row["url"] else _cell(row["source"])
        lines.append(
            f"| `{row['key']}` | {_cell(row['item'])} | {row['usd']:g} | {_cell(row['unit'])} | "
            f"{month_text(row, prices.hours_per_month)} | {row['region']} | {row['read']} | "
            f"{row['status']} | {source} |"
        )
    return "\n".join(lines) + "\n"
