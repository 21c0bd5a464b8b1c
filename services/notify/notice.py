"""The takedown notice e-mail, rendered from a ``TakedownNotice``. Pure: no sending here.

The Message-ID is derived from the notice id, so an operator can always tell
from the hoster's or the SMTP server's logs whether a notice went out.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime

from schemas.notices import TakedownNotice


def message_id(notice_id: str, domain: str) -> str:
    return f"<{notice_id}@{domain}>"


def render_notice(notice: TakedownNotice, sender: str, hotline_name: str) -> EmailMessage:
    domain = sender.rsplit("@", 1)[-1]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = notice.abuse_email
    msg["Subject"] = f"[{hotline_name}] Notice and takedown request {notice.notice_id}"
    msg["Message-ID"] = message_id(notice.notice_id, domain)
    msg["Date"] = format_datetime(notice.created_at)
    msg["X-Hotline-Notice-Id"] = notice.notice_id
    lines = [
        f"Dear {notice.hoster} abuse team,",
        "",
        f"{hotline_name} has established that the following URL, hosted on your network,",
        "shows child sexual abuse material that is known to us (a hash match against",
        "our database of previously assessed material):",
        "",
        f"    {notice.url}",
        "",
        "Please remove this content as soon as possible; the code of conduct asks for",
        "removal within 24 hours. We will check the URL again until it is gone.",
        "",
        "Matched files (hashes only):",
    ]
    for img in notice.images:
        match = img.match
        lines.append(f"  - {img.url}")
        lines.append(f"    sha256 {img.sha256}  md5 {img.md5}")
        if match is not None:
            lines.append(f"    match: {match.signal} distance {match.distance}, category {match.category}")
    lines += [
        "",
        "Do not download, view or forward the material. Preserve logs for law enforcement.",
        f"Reference: {notice.notice_id} (item {notice.item_id})",
        "",
        hotline_name,
    ]
    msg.set_content("\n".join(lines))
    return msg
