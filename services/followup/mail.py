"""Reminder and ladder e-mails, and the evidence package they carry. Pure: no sending here.

The evidence is the follow-up's timeline so far, hashes only (never an image): the
notice, its delivery, the re-check results, the steps taken. It is in the text and, as
JSON, in an ``evidence.json`` attachment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from hotline.storage.models import Followup, FollowupStep, ItemEvent
from services.followup.logic import Policy, moves, words

WHO = {
    "reminder": "abuse team",
    "upstream": "upstream provider",
    "registrar": "domain registrar",
    "authority": "authority",
}


@dataclass(frozen=True)
class Contacts:
    """Where each step goes. The upstream provider's and the registrar's abuse contacts come
    from the notice's hosting facts (RDAP: the parent network, the domain's registrar; the
    hosting file's ``upstream``), kept on the follow-up; a rung without one is skipped with
    the reason."""

    authority_email: str | None = None

    def address(self, kind: str, followup: Followup) -> tuple[str | None, str]:
        """(address, why there is none)."""
        if kind == "reminder":
            return followup.abuse_email, ""
        if kind == "authority":
            if self.authority_email:
                return self.authority_email, ""
            return None, "no authority is configured (HOTLINE_AUTHORITY_EMAIL is unset)"
        if kind == "upstream":
            if followup.upstream_abuse:
                return followup.upstream_abuse, ""
            return None, f"no upstream provider contact is known for {followup.hoster}"
        if kind == "registrar":
            if followup.registrar_abuse:
                return followup.registrar_abuse, ""
            return None, "no registrar contact is known for the domain"
        return None, f"unknown step {kind}"


def step_id(item_id: str, position: int, notice_id: str = "") -> str:
    """``<item>:<position>`` for the first notice's steps; a follow-up of the notice to the
    hoster the content moved to (``ntd-<item>-moved-<n>``) has steps of its own, ``<item>:m<n>:<position>``."""
    n = moves(notice_id)
    return f"{item_id}:{position}" if n == 0 else f"{item_id}:m{n}:{position}"


def step_message_id(item_id: str, position: int, domain: str, notice_id: str = "") -> str:
    n = moves(notice_id)
    return f"<followup-{item_id}-{position}@{domain}>" if n == 0 else f"<followup-{item_id}-m{n}-{position}@{domain}>"


def evidence(
    followup: Followup, events: Sequence[ItemEvent], steps: Sequence[FollowupStep], policy: Policy, at: datetime,
) -> dict[str, Any]:
    """The evidence package: JSON-able, hashes only."""
    return {
        "item_id": followup.item_id,
        "url": followup.url,
        "hoster": followup.hoster,
        "country": followup.country,
        "notice_id": followup.notice_id,
        "abuse_email": followup.abuse_email,
        "first_report_at": followup.first_report_at.isoformat(),
        "first_notice_at": followup.first_notice_at.isoformat(),
        "removal_deadline_at": (followup.first_notice_at + timedelta(seconds=policy.deadline_seconds)).isoformat(),
        "online_for": words(at - followup.first_notice_at),
        "matched_images": [
            {k: m.get(k) for k in ("url", "sha256", "md5", "pdq") if m.get(k)} for m in followup.matched
        ],
        "rechecks": {
            "count": followup.checks,
            "last_result": followup.last_result,
            "last_checked_at": followup.last_checked_at.isoformat() if followup.last_checked_at else None,
        },
        "timeline": [{"at": e.at.isoformat(), "kind": e.kind, "detail": e.detail} for e in events],
        "steps": [
            {"position": s.position, "kind": s.kind, "recipient": s.recipient, "status": s.status,
             "at": (s.sent_at or s.created_at).isoformat(), "reason": s.reason}
            for s in steps
        ],
    }


def render_step(
    kind: str, position: int, recipient: str, followup: Followup, package: dict[str, Any],
    sender: str, hotline_name: str, at: datetime,
) -> EmailMessage:
    domain = sender.rsplit("@", 1)[-1]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    what = "Reminder" if kind == "reminder" else "Escalation"
    msg["Subject"] = f"[{hotline_name}] {what}: content still online after notice {followup.notice_id}"
    msg["Message-ID"] = step_message_id(followup.item_id, position, domain, followup.notice_id)
    msg["References"] = f"<{followup.notice_id}@{domain}>"
    msg["Date"] = format_datetime(at)
    msg["X-Hotline-Followup-Step"] = kind
    msg["X-Hotline-Followup-Id"] = step_id(followup.item_id, position, followup.notice_id)
    online_for = words(at - followup.first_notice_at)
    if kind == "reminder":
        opening = [
            f"Dear {followup.hoster} {WHO[kind]},",
            "",
            f"on {followup.first_notice_at:%Y-%m-%d %H:%M} UTC {hotline_name} sent you takedown notice",
            f"{followup.notice_id} about child sexual abuse material at the URL below. Our last check",
            f"found it still online, {online_for} after the notice; the code of conduct asks for",
            "removal within 24 hours. Please remove it now.",
        ]
    else:
        opening = [
            f"Dear {WHO.get(kind, 'colleague')},",
            "",
            f"{hotline_name} notified {followup.hoster} ({followup.abuse_email}) on",
            f"{followup.first_notice_at:%Y-%m-%d %H:%M} UTC about child sexual abuse material at the URL",
            f"below, hosted on their network, and reminded them since. It is still online {online_for}",
            "after the first notice. We ask you to act within your remit to have it removed.",
        ]
    lines = [*opening, "", f"    {followup.url}", "", "Matched files (hashes only):"]
    for m in package["matched_images"]:
        lines.append(f"  - {m.get('url', '')}")
        lines.append(f"    sha256 {m.get('sha256', '-')}  md5 {m.get('md5', '-')}")
    lines += ["", "What happened so far (UTC):"]
    for e in package["timeline"]:
        lines.append(f"  {e['at'][:19]}  {e['kind']}: {e['detail']}")
    lines += [
        "",
        f"Re-checks: {package['rechecks']['count']}, last result {package['rechecks']['last_result']}.",
        "The same evidence is attached as evidence.json. Do not download, view or forward the material.",
        f"Reference: {followup.notice_id} (item {followup.item_id}), step {position} ({kind})",
        "",
        hotline_name,
    ]
    msg.set_content("\n".join(lines))
    msg.add_attachment(
        json.dumps(package, indent=2, sort_keys=True).encode(), maintype="application", subtype="json",
        filename="evidence.json",
    )
    return msg
