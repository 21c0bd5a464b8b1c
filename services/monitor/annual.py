"""The annual statistics a hotline publishes, as a pure function of rows read from the recorded
states (``services.monitor.queries.annual_rows``). Months and years are UTC.

- *reports per channel and month*: reports by ``submitted_at``;
- *items*: the URLs first reported in the year (``Item.first_seen``). An item is *known* when
  classify matched it in the bank (``classification.known``); it has an *analyst verdict*
  when an analyst assessed it (the latest assessment counts). *Decided* = known or assessed;
  *illegal* = known or verdict ``illegal``; *share illegal* = illegal / decided;
- *new vs known*: of the illegal items, *known* were matched in the bank, *new* were confirmed
  by an analyst without a bank match;
- *hosting countries*: the illegal items by ``Item.country`` (``unknown`` when not found);
- *forwards per partner*: forwards with status ``sent`` by ``sent_at``;
- *police escalations*: escalations by ``created_at``, per month;
- *time to removal*: ``services.monitor.figures`` over the items first noticed in the year.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.monitor.figures import NoticedItem, figures, human_duration, human_share

MONTHS = tuple(range(1, 13))


@dataclass(frozen=True)
class ReportRow:
    channel: str
    submitted_at: datetime


@dataclass(frozen=True)
class AssessedItem:
    country: str | None
    known: bool  # a bank match at classification
    analyst_verdict: str | None  # "illegal" | "not_illegal" | None

    @property
    def decided(self) -> bool:
        return self.known or self.analyst_verdict is not None

    @property
    def illegal(self) -> bool:
        return self.known or self.analyst_verdict == "illegal"


@dataclass(frozen=True)
class AnnualRows:
    year: int
    reports: list[ReportRow]
    items: list[AssessedItem]
    forwards: list[str]  # the partner of each sent forward
    escalations: list[datetime]
    noticed: list[NoticedItem]  # first noticed in the year


def annual(rows: AnnualRows, now: datetime, deadline_seconds: float) -> dict[str, Any]:
    """The year's publishable figures (no URL, no item id) as plain JSON-ready data."""
    per_channel: dict[str, list[int]] = {}
    for r in rows.reports:
        per_channel.setdefault(r.channel, [0] * 12)[r.submitted_at.month - 1] += 1
    per_month = [sum(counts[m - 1] for counts in per_channel.values()) for m in MONTHS]

    decided = [i for i in rows.items if i.decided]
    illegal = [i for i in decided if i.illegal]
    known = sum(1 for i in illegal if i.known)
    countries = Counter(i.country.upper() if i.country else "unknown" for i in illegal)
    escalations = [0] * 12
    for at in rows.escalations:
        escalations[at.month - 1] += 1
    removal = figures(rows.noticed, now, deadline_seconds)

    return {
        "year": rows.year,
        "reports": {
            "total": len(rows.reports),
            "per_month": per_month,
            "per_channel": {c: {"total": sum(v), "per_month": v} for c, v in sorted(per_channel.items())},
        },
        "items": {
            "reported": len(rows.items),
            "decided": len(decided),
            "illegal": len(illegal),
            "not_illegal": len(decided) - len(illegal),
            "share_illegal": len(illegal) / len(decided) if decided else None,
            "analyst_assessed": sum(1 for i in rows.items if i.analyst_verdict is not None),
        },
        "illegal_new_vs_known": {"known": known, "new": len(illegal) - known},
        "hosting_countries": dict(sorted(countries.items(), key=lambda kv: (-kv[1], kv[0]))),
        "forwards_per_partner": dict(sorted(Counter(rows.forwards).items(), key=lambda kv: (-kv[1], kv[0]))),
        "police_escalations": {"total": len(rows.escalations), "per_month": escalations},
        "time_to_removal": {"deadline_seconds": deadline_seconds, **removal.public()},
    }


def as_text(stats: dict[str, Any]) -> str:
    """The figures as a plain-text report (``hotline stats --format text``)."""
    lines = [f"Annual statistics {stats['year']}", ""]
    rep = stats["reports"]
    lines.append(f"Reports: {rep['total']}")
    lines.append("  month        " + " ".join(f"{m:>4}" for m in MONTHS))
    for channel, v in rep["per_channel"].items():
        lines.append(f"  {channel:<12} " + " ".join(f"{n:>4}" for n in v["per_month"]) + f"   total {v['total']}")
    lines.append("  all          " + " ".join(f"{n:>4}" for n in rep["per_month"]))
    it = stats["items"]
    lines += [
        "",
        f"URLs reported: {it['reported']}; decided {it['decided']} (bank match or analyst), "
        f"illegal {it['illegal']} ({human_share(it['share_illegal'])}), not illegal {it['not_illegal']}",
        f"Illegal: known (bank) {stats['illegal_new_vs_known']['known']}, "
        f"new (analyst-confirmed) {stats['illegal_new_vs_known']['new']}",
        "Hosting countries of illegal URLs: "
        + (", ".join(f"{c} {n}" for c, n in stats["hosting_countries"].items()) or "none"),
        "Forwards to partner hotlines: "
        + (", ".join(f"{p} {n}" for p, n in stats["forwards_per_partner"].items()) or "none"),
        f"Police escalations: {stats['police_escalations']['total']}",
    ]
    t = stats["time_to_removal"]
    lines += [
        "",
        f"Time to removal (notices first sent in {stats['year']}): {t['notices']} noticed, {t['removals']} removed, "
        f"{t['still_online']} still online, {t['open_past_deadline']} open past the deadline",
        f"  from first notice: median {human_duration(t['median_seconds'])}, "
        f"90th percentile {human_duration(t['p90_seconds'])}",
        f"  from first report: median {human_duration(t['median_from_report_seconds'])}, "
        f"90th percentile {human_duration(t['p90_from_report_seconds'])}",
        f"  removed within the deadline ({human_duration(t['deadline_seconds'])}): "
        f"{human_share(t['share_within_deadline'])}",
    ]
    return "\n".join(lines) + "\n"
