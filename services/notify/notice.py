"""The takedown notice e-mail, rendered from a ``TakedownNotice``. Pure: no sending here.

The Message-ID is derived from the notice id, so an operator can always tell
from the hoster's or the SMTP server's logs whether a notice went out.

The e-mail is ``multipart/mixed``: the text for people (Dutch for a hoster in NL, English
otherwise, or as ``HOTLINE_NOTICE_LANGUAGE`` forces), stating what EU DSA Article 16(2)
asks of a notice (the exact URLs, why the content is illegal, who notifies, a statement
of good faith), and the X-ARF v4 report (``services.notify.xarf_report``) as an
``application/json`` attachment. Never an image. A notice whose X-ARF report does not
validate raises ``XarfReportInvalid`` here, so it is never sent.
"""

from __future__ import annotations

from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy, default
from email.utils import format_datetime

from schemas.facts import ImageFacts
from schemas.notices import TakedownNotice
from services.notify.xarf_report import build_report, is_exact, reported_images, to_json

LANGUAGES = ("auto", "nl", "en")
DUTCH_COUNTRIES = frozenset({"NL"})  # BE: English (a Belgian abuse desk may well be French-speaking)
REMOVAL_NORM = "24"  # hours: the code of conduct's norm (README, notify stage)


class SharedHeaders(HeaderRegistry):
    """``email``'s header registry, keeping the headers it made for reuse: most of a notice
    e-mail's headers are the same in every one (From, To per hoster, MIME-Version, the parts'
    Content-Type and Content-Transfer-Encoding), and parsing them was most of the CPU that
    building an e-mail took (issue 13). A header object is never changed once made (the
    message replaces it), so messages can share one. Bounded: cleared when full."""

    def __init__(self, limit: int = 1024) -> None:
        super().__init__()
        self.limit = limit
        self._made: dict[tuple[str, str], BaseHeader] = {}

    def __call__(self, name: str, value: str) -> BaseHeader:
        key = (name, value)
        header = self._made.get(key)
        if header is None:
            if len(self._made) >= self.limit:
                self._made.clear()
            header = self._made[key] = super().__call__(name, value)
        return header


# email.policy.default with the shared headers: what EmailMessage() uses, otherwise unchanged.
POLICY: EmailPolicy[EmailMessage] = default.clone(header_factory=SharedHeaders())


def message_id(notice_id: str, domain: str) -> str:
    return f"<{notice_id}@{domain}>"


def notice_language(notice: TakedownNotice, setting: str = "auto") -> str:
    """``nl`` or ``en``: forced by the setting, else by the hoster's country."""
    if setting not in LANGUAGES:
        raise ValueError(f"notice language {setting!r}: choose one of {', '.join(LANGUAGES)}")
    if setting != "auto":
        return setting
    return "nl" if (notice.country or "").upper() in DUTCH_COUNTRIES else "en"


def attachment_name(notice: TakedownNotice) -> str:
    return f"xarf-{notice.notice_id}.json"


def render_notice(notice: TakedownNotice, sender: str, hotline_name: str, language: str = "auto") -> EmailMessage:
    domain = sender.rsplit("@", 1)[-1]
    return render_group([notice], sender, hotline_name, language, message_id(notice.notice_id, domain))


def group_message_id(notices: list[TakedownNotice], domain: str) -> str:
    """The Message-ID of one e-mail for ``notices``: a single notice's own, or one derived from
    the group's first notice (a notice is in one e-mail only, so it names the group)."""
    if len(notices) == 1:
        return message_id(notices[0].notice_id, domain)
    return message_id(f"group-{notices[0].notice_id}", domain)


def render_group(
    notices: list[TakedownNotice], sender: str, hotline_name: str, language: str, mid: str
) -> EmailMessage:
    """One e-mail for the notices to one abuse contact (grouping, ``services.notify.stage``):
    the text names every URL, with one X-ARF report per notice, each validated (raises
    ``XarfReportInvalid`` before anything is sent). One notice renders as ``render_notice``."""
    if not notices:
        raise ValueError("a notice e-mail needs at least one notice")
    first = notices[0]
    reports = [build_report(n, sender, hotline_name) for n in notices]  # raises if one would not validate
    lang = notice_language(first, language)
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = first.abuse_email
    copies = list(dict.fromkeys(c for n in notices for c in n.copy_to if c.lower() != first.abuse_email.lower()))
    if copies:  # the CDN in front of the origin hoster (services.classify.hosting)
        msg["Cc"] = ", ".join(copies)
    subject = "Notice-and-takedown-verzoek" if lang == "nl" else "Notice and takedown request"
    if len(notices) == 1:
        msg["Subject"] = f"[{hotline_name}] {subject} {first.notice_id}"
    else:
        count = f"{len(notices)} URL's" if lang == "nl" else f"{len(notices)} URLs"
        msg["Subject"] = f"[{hotline_name}] {subject}: {count} ({first.notice_id} …)"
    msg["Message-ID"] = mid
    msg["Date"] = format_datetime(max(n.created_at for n in notices))
    msg["X-Hotline-Notice-Id"] = " ".join(n.notice_id for n in notices)
    lines = (_dutch if lang == "nl" else _english)(notices, hotline_name, sender, mid)
    msg.set_content("\n".join(lines))
    for notice, report in zip(notices, reports, strict=True):
        msg.add_attachment(to_json(report), maintype="application", subtype="json",
                           filename=attachment_name(notice))
    return msg


def _legal_basis(notice: TakedownNotice, lang: str) -> str:
    home = (notice.country or "").upper() == "NL"
    if lang == "nl":
        if home:
            return ("Het vervaardigen, verspreiden, aanbieden en beschikbaar stellen van dit materiaal is "
                    "strafbaar volgens artikel 252 van het Wetboek van Strafrecht (en artikel 5 van "
                    "EU-richtlijn 2011/93/EU).")
        return ("Het verspreiden en beschikbaar stellen van dit materiaal is strafbaar in elke EU-lidstaat "
                "(artikel 5 van EU-richtlijn 2011/93/EU) en volgens het recht van het land waar het "
                "gehost wordt.")
    if home:
        return ("Producing, distributing, offering and making available this material is a criminal "
                "offence under article 252 of the Dutch Criminal Code (Wetboek van Strafrecht) and "
                "article 5 of EU Directive 2011/93/EU.")
    return ("Distributing and making available this material is a criminal offence in every EU member "
            "state (article 5 of EU Directive 2011/93/EU) and under the law of the country where it is hosted.")


def _match_line(img: ImageFacts, lang: str, notice: TakedownNotice | None = None) -> str:
    m = img.match
    if m is None:  # analyst-confirmed material (reported_images): no bank match to name
        category = notice.category if notice is not None else None
        return (f"    beoordeeld door een analist, categorie {category}" if lang == "nl"
                else f"    assessed by an analyst, category {category}")
    if is_exact(m):
        how = (f"exacte {m.signal.upper()}-hash-overeenkomst" if lang == "nl"
               else f"exact {m.signal.upper()} hash match")
    else:
        how = (f"perceptuele {m.signal.upper()}-hash-overeenkomst, afstand {m.distance}" if lang == "nl"
               else f"perceptual {m.signal.upper()} hash match, distance {m.distance}")
    label = "categorie" if lang == "nl" else "category"
    return f"    match: {m.signal} distance {m.distance}, {label} {m.category} ({how})"


def _files(notices: list[TakedownNotice], lang: str) -> list[str]:
    lines: list[str] = []
    for notice, img in ((n, i) for n in notices for i in reported_images(n)):
        lines.append(f"  - {img.url}")
        lines.append(f"    sha256 {img.sha256}  md5 {img.md5}")
        if img.pdq:
            lines.append(f"    pdq {img.pdq}")
        lines.append(_match_line(img, lang, notice))
    return lines


def _urls(notices: list[TakedownNotice]) -> list[str]:
    urls = [u for n in notices for u in [n.url] + [i.url for i in reported_images(n) if i.url != n.url]]
    return [f"    {u}" for u in dict.fromkeys(urls)]


def _context(notices: list[TakedownNotice], lang: str) -> list[str]:
    """Where the files were shown (an image served for a page elsewhere) and who gets a copy."""
    lines: list[str] = []
    for page in dict.fromkeys(n.page_url for n in notices if n.page_url):
        lines.append(f"Deze bestanden werden getoond op {page} (elders gehost); verwijder de bestanden zelf."
                     if lang == "nl" else
                     f"These files were shown on {page} (hosted elsewhere); please remove the files themselves.")
    for cdn in dict.fromkeys(c for n in notices for c in n.copy_to):
        lines.append(f"Een kopie van deze melding gaat naar {cdn}, het CDN dat deze inhoud doorgeeft."
                     if lang == "nl" else
                     f"A copy of this notice goes to {cdn}, the CDN that serves this content.")
    return [*lines, ""] if lines else []


def _why(notices: list[TakedownNotice], analyst_line: str, known_line: str) -> list[str]:
    by_analyst = [n.basis != "known_material" for n in notices]
    return ([analyst_line] if any(by_analyst) else []) + ([known_line] if not all(by_analyst) else [])


def _attached(notices: list[TakedownNotice], one: str, many: str) -> list[str]:
    names = [attachment_name(n) for n in notices]
    if len(names) == 1:
        return [one, f"{names[0]} (application/json)."]
    return [many, *(f"    {n}" for n in names)]


def _reference(notices: list[TakedownNotice], label: str, mid: str) -> list[str]:
    if len(notices) == 1:
        n = notices[0]
        return [f"{label}: {n.notice_id} (item {n.item_id}), Message-ID {mid}"]
    return [f"{label}: Message-ID {mid}", *(f"    {n.notice_id} (item {n.item_id}): {n.url}" for n in notices)]


def _dutch(notices: list[TakedownNotice], hotline_name: str, sender: str, mid: str) -> list[str]:
    notice = notices[0]
    return [
        f"Geachte abuse-afdeling van {notice.hoster},",
        "",
        f"{hotline_name} heeft vastgesteld dat op de volgende URL('s), gehost op uw netwerk,",
        "materiaal van seksueel misbruik van kinderen staat:",
        "",
        *_urls(notices),
        "",
        *_context(notices, "nl"),
        "Waarom dit illegaal is:",
        *_why(notices,
              "Een analist van ons meldpunt heeft het materiaal beoordeeld en als illegaal bevestigd.",
              "Het gaat om bekend materiaal: de bestanden komen overeen (hash-match) met onze database van"
              " eerder door analisten als illegaal bevestigd materiaal."),
        _legal_basis(notice, "nl"),
        "",
        "Gevonden bestanden (alleen hashes, nooit het beeldmateriaal zelf):",
        *_files(notices, "nl"),
        "",
        f"Wij verzoeken u deze inhoud te verwijderen, volgens de gedragscode binnen {REMOVAL_NORM} uur.",
        "Wij controleren de URL opnieuw totdat de inhoud verwijderd is.",
        "Download, bekijk of verspreid het materiaal niet. Bewaar logbestanden voor de politie.",
        "",
        "Verklaring te goeder trouw: wij verklaren te goeder trouw dat de informatie en beweringen",
        "in deze melding naar ons beste weten juist en volledig zijn (art. 16, lid 2, onder d,",
        "Digitaledienstenverordening (EU) 2022/2065).",
        "",
        *_attached(notices, "Een machineleesbaar X-ARF v4-rapport (content/csam) is bijgevoegd als",
                   "Per URL is een machineleesbaar X-ARF v4-rapport (content/csam) bijgevoegd (application/json):"),
        f"Contact: {hotline_name} <{sender}>",
        *_reference(notices, "Referentie", mid),
        "",
        hotline_name,
    ]


def _english(notices: list[TakedownNotice], hotline_name: str, sender: str, mid: str) -> list[str]:
    notice = notices[0]
    return [
        f"Dear {notice.hoster} abuse team,",
        "",
        f"{hotline_name} has established that the following URL(s), hosted on your network,",
        "show child sexual abuse material:",
        "",
        *_urls(notices),
        "",
        *_context(notices, "en"),
        "Why this content is illegal:",
        *_why(notices,
              "An analyst of our hotline has assessed the material and confirmed it as illegal.",
              "It is known material: the files match (a hash match against) our database of material"
              " previously confirmed as illegal by analysts."),
        _legal_basis(notice, "en"),
        "",
        "Matched files (hashes only, never the images themselves):",
        *_files(notices, "en"),
        "",
        f"Please remove this content as soon as possible; the code of conduct asks for removal within {REMOVAL_NORM} hours.",
        "We will check the URL again until it is gone.",
        "Do not download, view or forward the material. Preserve logs for law enforcement.",
        "",
        "Statement of good faith: we declare in good faith that the information and allegations",
        "in this notice are, to the best of our knowledge, accurate and complete (Article 16(2)(d)",
        "of the EU Digital Services Act, Regulation (EU) 2022/2065).",
        "",
        *_attached(notices, "A machine-readable X-ARF v4 report (content/csam) is attached as",
                   "A machine-readable X-ARF v4 report (content/csam) is attached for each URL (application/json):"),
        f"Contact: {hotline_name} <{sender}>",
        *_reference(notices, "Reference", mid),
        "",
        hotline_name,
    ]
