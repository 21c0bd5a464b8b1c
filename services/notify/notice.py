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

from email.message import EmailMessage
from email.utils import format_datetime

from schemas.facts import ImageFacts
from schemas.notices import TakedownNotice
from services.notify.xarf_report import build_report, is_exact, matched_images, to_json

LANGUAGES = ("auto", "nl", "en")
DUTCH_COUNTRIES = frozenset({"NL"})  # BE: English (a Belgian abuse desk may well be French-speaking)
REMOVAL_NORM = "24"  # hours: the code of conduct's norm (README, notify stage)


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
    report = build_report(notice, sender, hotline_name)  # raises if it would not validate
    lang = notice_language(notice, language)
    mid = message_id(notice.notice_id, domain)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = notice.abuse_email
    subject = "Notice-and-takedown-verzoek" if lang == "nl" else "Notice and takedown request"
    msg["Subject"] = f"[{hotline_name}] {subject} {notice.notice_id}"
    msg["Message-ID"] = mid
    msg["Date"] = format_datetime(notice.created_at)
    msg["X-Hotline-Notice-Id"] = notice.notice_id
    lines = (_dutch if lang == "nl" else _english)(notice, hotline_name, sender, mid)
    msg.set_content("\n".join(lines))
    msg.add_attachment(to_json(report), maintype="application", subtype="json", filename=attachment_name(notice))
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


def _match_line(img: ImageFacts, lang: str) -> str:
    m = img.match
    assert m is not None
    if is_exact(m):
        how = (f"exacte {m.signal.upper()}-hash-overeenkomst" if lang == "nl"
               else f"exact {m.signal.upper()} hash match")
    else:
        how = (f"perceptuele {m.signal.upper()}-hash-overeenkomst, afstand {m.distance}" if lang == "nl"
               else f"perceptual {m.signal.upper()} hash match, distance {m.distance}")
    label = "categorie" if lang == "nl" else "category"
    return f"    match: {m.signal} distance {m.distance}, {label} {m.category} ({how})"


def _files(notice: TakedownNotice, lang: str) -> list[str]:
    lines: list[str] = []
    for img in matched_images(notice):
        lines.append(f"  - {img.url}")
        lines.append(f"    sha256 {img.sha256}  md5 {img.md5}")
        if img.pdq:
            lines.append(f"    pdq {img.pdq}")
        lines.append(_match_line(img, lang))
    return lines


def _urls(notice: TakedownNotice) -> list[str]:
    urls = [notice.url] + [i.url for i in matched_images(notice) if i.url != notice.url]
    return [f"    {u}" for u in dict.fromkeys(urls)]


def _dutch(notice: TakedownNotice, hotline_name: str, sender: str, mid: str) -> list[str]:
    analyst = notice.basis != "known_material"
    return [
        f"Geachte abuse-afdeling van {notice.hoster},",
        "",
        f"{hotline_name} heeft vastgesteld dat op de volgende URL('s), gehost op uw netwerk,",
        "materiaal van seksueel misbruik van kinderen staat:",
        "",
        *_urls(notice),
        "",
        "Waarom dit illegaal is:",
        ("Een analist van ons meldpunt heeft het materiaal beoordeeld en als illegaal bevestigd."
         if analyst else
         "Het gaat om bekend materiaal: de bestanden komen overeen (hash-match) met onze database van"
         " eerder door analisten als illegaal bevestigd materiaal."),
        _legal_basis(notice, "nl"),
        "",
        "Gevonden bestanden (alleen hashes, nooit het beeldmateriaal zelf):",
        *_files(notice, "nl"),
        "",
        f"Wij verzoeken u deze inhoud te verwijderen, volgens de gedragscode binnen {REMOVAL_NORM} uur.",
        "Wij controleren de URL opnieuw totdat de inhoud verwijderd is.",
        "Download, bekijk of verspreid het materiaal niet. Bewaar logbestanden voor de politie.",
        "",
        "Verklaring te goeder trouw: wij verklaren te goeder trouw dat de informatie en beweringen",
        "in deze melding naar ons beste weten juist en volledig zijn (art. 16, lid 2, onder d,",
        "Digitaledienstenverordening (EU) 2022/2065).",
        "",
        "Een machineleesbaar X-ARF v4-rapport (content/csam) is bijgevoegd als",
        f"{attachment_name(notice)} (application/json).",
        f"Contact: {hotline_name} <{sender}>",
        f"Referentie: {notice.notice_id} (item {notice.item_id}), Message-ID {mid}",
        "",
        hotline_name,
    ]


def _english(notice: TakedownNotice, hotline_name: str, sender: str, mid: str) -> list[str]:
    analyst = notice.basis != "known_material"
    return [
        f"Dear {notice.hoster} abuse team,",
        "",
        f"{hotline_name} has established that the following URL(s), hosted on your network,",
        "show child sexual abuse material:",
        "",
        *_urls(notice),
        "",
        "Why this content is illegal:",
        ("An analyst of our hotline has assessed the material and confirmed it as illegal."
         if analyst else
         "It is known material: the files match (a hash match against) our database of material"
         " previously confirmed as illegal by analysts."),
        _legal_basis(notice, "en"),
        "",
        "Matched files (hashes only, never the images themselves):",
        *_files(notice, "en"),
        "",
        f"Please remove this content as soon as possible; the code of conduct asks for removal within {REMOVAL_NORM} hours.",
        "We will check the URL again until it is gone.",
        "Do not download, view or forward the material. Preserve logs for law enforcement.",
        "",
        "Statement of good faith: we declare in good faith that the information and allegations",
        "in this notice are, to the best of our knowledge, accurate and complete (Article 16(2)(d)",
        "of the EU Digital Services Act, Regulation (EU) 2022/2065).",
        "",
        "A machine-readable X-ARF v4 report (content/csam) is attached as",
        f"{attachment_name(notice)} (application/json).",
        f"Contact: {hotline_name} <{sender}>",
        f"Reference: {notice.notice_id} (item {notice.item_id}), Message-ID {mid}",
        "",
        hotline_name,
    ]
