"""The public report form's words, in English and Dutch, and how a page picks its language.

A plain catalogue rather than gettext: two languages, some forty strings, all in one page
and its errors; a dict keeps each sentence next to its translation, needs no compile step,
and a unit test checks that both languages have every key and the same placeholders.

URL problems are translated by ``UrlRejected.code`` (the machine-readable reason from
``services.ingest.urls`` and ``hosts``), never by parsing the English sentence, and every
sentence names the URL the reporter typed.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Literal, cast

Language = Literal["en", "nl"]
LANGUAGES: tuple[Language, ...] = ("en", "nl")
LANGUAGE_NAMES: Mapping[Language, str] = {"en": "English", "nl": "Nederlands"}
COOKIE = "hotline_lang"

MESSAGES: Mapping[str, Mapping[Language, str]] = {
    "title": {"en": "Report child sexual abuse material", "nl": "Seksueel kindermisbruikmateriaal melden"},
    "intro": {
        "en": "Report web addresses (URLs) where you saw child sexual abuse material. You can report "
              "anonymously.",
        "nl": "Meld webadressen (URL's) waar u seksueel kindermisbruikmateriaal hebt gezien. U kunt "
              "anoniem melden.",
    },
    "do_not_send": {
        "en": "Do not download, copy or send us the material itself: the address is enough.",
        "nl": "Download, kopieer of stuur ons het materiaal zelf niet: het adres is genoeg.",
    },
    "switch_label": {"en": "Language", "nl": "Taal"},
    "legend_where": {"en": "Where did you see it?", "nl": "Waar hebt u het gezien?"},
    "urls_label": {"en": "Web address(es), one per line", "nl": "Webadres(sen), één per regel"},
    "urls_hint": {
        "en": "At most {max_urls} addresses, each at most {max_length} characters long.",
        "nl": "Maximaal {max_urls} adressen, elk maximaal {max_length} tekens lang.",
    },
    "description_label": {"en": "What did you see? (optional)", "nl": "Wat hebt u gezien? (optioneel)"},
    "description_hint": {
        "en": "At most {max_chars} characters. Please do not describe yourself.",
        "nl": "Maximaal {max_chars} tekens. Beschrijf uzelf liever niet.",
    },
    "legend_contact": {"en": "Do you want to hear back? (optional)", "nl": "Wilt u iets van ons horen? (optioneel)"},
    "email_label": {"en": "Your e-mail address (optional)", "nl": "Uw e-mailadres (optioneel)"},
    "email_hint": {
        "en": "Leave this empty to stay anonymous. If you fill it in, we use it only to reply to you "
              "about this report; it is stored encrypted and never shown to anyone outside the hotline. "
              "At most {max_chars} characters.",
        "nl": "Laat dit leeg om anoniem te blijven. Vult u het in, dan gebruiken we het alleen om u over "
              "deze melding te antwoorden; het wordt versleuteld bewaard en nooit aan iemand buiten het "
              "meldpunt getoond. Maximaal {max_chars} tekens.",
    },
    "anonymous_note": {
        "en": "We do not ask who you are: this report is anonymous.",
        "nl": "We vragen niet wie u bent: deze melding is anoniem.",
    },
    "honeypot_label": {"en": "Leave this field empty", "nl": "Laat dit veld leeg"},
    "submit": {"en": "Send report", "nl": "Melding versturen"},
    "errors_heading": {"en": "The report was not sent:", "nl": "De melding is niet verstuurd:"},
    "thanks_title": {"en": "Thank you", "nl": "Dank u wel"},
    "thanks": {"en": "Thank you. Your report was received.", "nl": "Dank u wel. Uw melding is ontvangen."},
    "reference": {"en": "Reference:", "nl": "Kenmerk:"},
    "follow": {"en": "You can follow its progress at", "nl": "U kunt de voortgang volgen op"},
    "another": {"en": "Report another address", "nl": "Nog een adres melden"},
    # field errors
    "no_urls": {"en": "please enter at least one web address", "nl": "vul ten minste één webadres in"},
    "too_many_urls": {
        "en": "a report may name at most {max_urls} web addresses, this one has {count}",
        "nl": "een melding mag hoogstens {max_urls} webadressen bevatten, deze bevat er {count}",
    },
    "description_too_long": {
        "en": "the description is longer than {max_chars} characters ({count})",
        "nl": "de beschrijving is langer dan {max_chars} tekens ({count})",
    },
    "email_invalid": {"en": "not a valid e-mail address", "nl": "geen geldig e-mailadres"},
    "email_too_long": {
        "en": "the e-mail address is longer than {max_chars} characters",
        "nl": "het e-mailadres is langer dan {max_chars} tekens",
    },
    "rate_limited": {
        "en": "Too many reports from your network in a short time. Please try again in {seconds} seconds; "
              "what you typed is kept below.",
        "nl": "Te veel meldingen vanaf uw netwerk in korte tijd. Probeer het over {seconds} seconden "
              "opnieuw; wat u hebt ingevuld staat hieronder nog.",
    },
    # URL problems, by UrlRejected.code
    "url.unsupported_scheme": {
        "en": "{url}: only http and https addresses can be processed, not {scheme}:",
        "nl": "{url}: alleen http- en https-adressen kunnen worden verwerkt, geen {scheme}:",
    },
    "url.url_too_long": {
        "en": "{url}: the address is longer than {max_length} characters",
        "nl": "{url}: het adres is langer dan {max_length} tekens",
    },
    "url.invalid_characters": {
        "en": "{url}: the address contains control characters",
        "nl": "{url}: het adres bevat stuurtekens",
    },
    "url.missing_host": {"en": "{url}: the address has no host name", "nl": "{url}: het adres heeft geen hostnaam"},
    "url.invalid_host": {
        "en": "{url}: the host name is not a valid domain name",
        "nl": "{url}: de hostnaam is geen geldige domeinnaam",
    },
    "url.invalid_port": {
        "en": "{url}: the port is not a number between 0 and 65535",
        "nl": "{url}: de poort is geen getal tussen 0 en 65535",
    },
    "url.invalid_onion": {
        "en": "{url}: the host is not a valid Tor onion address (version 3: 56 characters)",
        "nl": "{url}: de host is geen geldig Tor-onionadres (versie 3: 56 tekens)",
    },
    "url.not_on_internet": {
        "en": "{url}: the host {host} cannot be on the internet: it is not an IP address, a .onion name or "
              "a name under a public domain suffix (local network names such as 'intranet' or "
              "'printer.local' cannot be reported)",
        "nl": "{url}: de host {host} kan niet op internet staan: het is geen IP-adres, geen .onion-naam en "
              "geen naam onder een openbaar domeinachtervoegsel (namen uit een lokaal netwerk, zoals "
              "'intranet' of 'printer.local', kunnen niet worden gemeld)",
    },
    "url.other": {"en": "{url}: this is not a web address we can process", "nl": "{url}: dit is geen webadres dat we kunnen verwerken"},
}


def text(lang: Language, key: str, **values: object) -> str:
    return MESSAGES[key][lang].format(**values)


def catalogue(lang: Language) -> dict[str, str]:
    """Every plain string of the page (no placeholders filled) for the template."""
    return {key: forms[lang] for key, forms in MESSAGES.items()}


def placeholders(sentence: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(sentence) if name}


def as_language(value: str | None) -> Language | None:
    """``nl``, ``nl-BE``, ``EN`` → a language the form speaks; anything else → None."""
    if not value:
        return None
    primary = value.strip().split("-", 1)[0].split("_", 1)[0].lower()
    return cast(Language, primary) if primary in LANGUAGES else None


def negotiate(accept_language: str | None, default: Language = "en") -> Language:
    """The first language the browser prefers (RFC 9110 ``Accept-Language``, by q-value, ties
    in the order given) that the form speaks; ``default`` when it names neither."""
    ranked: list[tuple[float, int, Language]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = as_language(tag)
        if lang is not None and q > 0:
            ranked.append((-q, position, lang))
    return min(ranked)[2] if ranked else default


def choose(query: str | None, form: str | None, cookie: str | None, accept_language: str | None,
           default: Language = "en") -> Language:
    """The page's language: an explicit choice (the switch's ``?lang=``, the form's hidden
    field) wins, then the remembered one (cookie), then the browser's preference."""
    return as_language(query) or as_language(form) or as_language(cookie) or negotiate(accept_language, default)


def url_problem(lang: Language, code: str, url: str, host: str | None = None, **limits: object) -> str:
    """One refused URL in the reporter's language, naming it."""
    key = f"url.{code}" if f"url.{code}" in MESSAGES else "url.other"
    scheme = url.strip().split(":", 1)[0].lower() if ":" in url else ""
    return text(lang, key, url=url, host=host or "", scheme=scheme, **limits)
