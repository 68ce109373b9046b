"""PII and secret redaction, applied to everything written to a dataset topic.

Exports `Redactor` (`redact_text`, `redact_json`, `redact_messages`, `redact_sft`, `redact_pair`,
`redact_candidate`), the module-level `redact_text` / `redact_messages` / `redact_sft` /
`redact_pair` (a shared default `Redactor`), `KINDS`, `PLACEHOLDERS` and the validators
`luhn_ok`, `iban_ok`, `card_iin_ok`.

What is found and replaced (typed placeholders; counts per kind are returned):
- `[SECRET]` — API keys and tokens (AWS `AKIA…`, OpenAI/Anthropic `sk-…`, Stripe `sk_live_…`,
  GitHub `ghp_…`/`github_pat_…`, Slack `xox[bp]-…`, Google `AIza…`, GitLab, Hugging Face, npm),
  JWTs, PEM private keys, `Bearer`/`Basic` credentials, passwords in URLs, values of
  `password=` / `api_key:` / `secret=` / `token=` style assignments (the key is kept), JSON values
  under such keys, and long high-entropy hex/base64 strings shortly after a key word;
- `[EMAIL]`; `[IBAN]` (mod-97 and country length validated); `[CARD]` (Luhn and issuer-prefix
  validated, spaces or dashes allowed); `[IP]` (IPv4, and IPv6 validated by `ipaddress`);
- `[PHONE]` — international `+…` numbers, North-American `(415) 555-0132` / `415-555-0132`,
  European domestic `020 7946 0958` / `06 12 34 56 78`, and numbers after `phone:`/`tel:`.
Ordinary numbers, dates, times, prices, versions, order ids and hashes are left alone.

JSON strings (tool-call `arguments`) are parsed, redacted value by value and re-serialised, so
they stay valid JSON; text that is not JSON is redacted as text.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from stillflow.contracts import AgentTrace, PreferencePair, SFTExample, render_tool_result

__all__ = [
    "KINDS",
    "PLACEHOLDERS",
    "Redactor",
    "luhn_ok",
    "card_iin_ok",
    "iban_ok",
    "redact_text",
    "redact_messages",
    "redact_sft",
    "redact_pair",
    "default_redactor",
]

KINDS: tuple[str, ...] = ("secret", "email", "iban", "card", "ip", "phone")
PLACEHOLDERS: dict[str, str] = {k: f"[{k.upper()}]" for k in KINDS}
_PLACEHOLDER_RX = r"\[(?:SECRET|EMAIL|IBAN|CARD|IP|PHONE)\]"

# --------------------------------------------------------------------------- validators


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_iin_ok(digits: str) -> bool:
    """Issuer prefix and length of a payment card number (Visa, Mastercard, Amex, Discover, Diners,
    JCB, UnionPay, Maestro)."""
    n = len(digits)
    if n < 13 or n > 19:  # 12-digit Maestro numbers exist but look like any other 12-digit number
        return False
    p2, p3, p4, p6 = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if 300 <= p3 <= 305 or p2 in (36, 38, 39) or p4 == 3095:
        return 14 <= n <= 19
    if p4 == 6011 or p2 == 65 or 644 <= p3 <= 649 or 622126 <= p6 <= 622925:
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19
    if p2 == 62 or p2 == 81:
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58, 63, 67) or p4 in (6304, 6759, 6761, 6762, 6763):
        return 13 <= n <= 19
    return False


_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(iban: str) -> bool:
    """Country length and the ISO 13616 mod-97 check of an IBAN (spaces allowed)."""
    s = iban.replace(" ", "").upper()
    if len(s) < 15 or _IBAN_LENGTHS.get(s[:2]) != len(s) or not s.isalnum() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(ch, 36)) for ch in moved)
    return int(num) % 97 == 1


def _entropy(s: str) -> float:
    counts = Counter(s)
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_random(s: str, *, min_len: int = 16) -> bool:
    """Mixed character classes, a digit unless long, and no long runs of one character."""
    if len(s) < min_len:
        return False
    has_digit = any(c.isdigit() for c in s)
    has_upper = any(c.isupper() for c in s)
    has_lower = any(c.islower() for c in s)
    classes = has_digit + has_upper + has_lower
    if classes < 2 or (not has_digit and len(s) < 20):
        return False
    return _entropy(s) >= 3.0


# --------------------------------------------------------------------------- patterns

_TOKENS = re.compile(
    r"(?P<pem>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?P<aws>\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9]))"
    r"|(?P<openai>\bsk-(?:proj-|ant-(?:api\d\d-|admin\d\d-)?|live-|test-|svcacct-|admin-)?[A-Za-z0-9_-]{20,})"
    r"|(?P<stripe>\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,})"
    r"|(?P<github>\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{40,})"
    r"|(?P<slack>\bxox[abposr]-[A-Za-z0-9-]{10,})"
    r"|(?P<google>\bAIza[0-9A-Za-z_-]{35})"
    r"|(?P<gitlab>\bglpat-[A-Za-z0-9_-]{20,})"
    r"|(?P<hf>\bhf_[A-Za-z0-9]{30,})"
    r"|(?P<npm>\bnpm_[A-Za-z0-9]{36,})"
)
# cheap substring probes that gate the costly regular expressions
_TOKEN_HINTS = ("-----BEGIN", "eyJ", "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "ABIA", "ACCA",
                "sk-", "k_live_", "k_test_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza",
                "glpat-", "hf_", "npm_")  # fmt: skip

_PASSWORD_WORDS = r"password|passwd|passphrase|pwd"  # noqa: S105 - key words to look for, not a password
_STRONG_WORDS = (
    r"secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|secret[_-]?(?:access[_-]?)?key|"
    r"access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|session[_-]?token|bearer[_-]?token|"
    r"private[_-]?key|signing[_-]?key|encryption[_-]?key|master[_-]?key"
)
_WEAK_WORDS = r"token|auth|credentials?|signature|sig"
_PREFIX = r"(?:[A-Za-z0-9]+[_-])*"
# a key word (`db_password`, `X-Api-Key` match on their last part), a separator, the value (quoted or bare)
_ASSIGN = re.compile(
    rf"(?i)(?<![A-Za-z0-9])(?P<key>{_PASSWORD_WORDS}|{_STRONG_WORDS}|{_WEAK_WORDS})"
    rf"(?P<sep>[\"']?\s*(?::=|=>|[:=])\s*)"
    rf"(?:(?P<q>[\"'])(?!{_PLACEHOLDER_RX}(?P=q))(?P<qv>[^\"'\n]{{1,256}})(?P=q)"
    rf"|(?!{_PLACEHOLDER_RX})(?P<v>[^\s\"',;&<>)\]}}]+))"
)
_PASSWORD_KEY = re.compile(rf"(?i)(?:^|[_-])(?:{_PASSWORD_WORDS})$")
_STRONG_KEY = re.compile(rf"(?i)(?:^|[_-])(?:{_STRONG_WORDS})$")
# a JSON key whose string value is a secret (camelCase too: apiKey, accessToken)
_SECRET_KEY = re.compile(rf"(?i)^{_PREFIX}(?:{_PASSWORD_WORDS}|{_STRONG_WORDS}|{_WEAK_WORDS}|authorization)$")
_JSON_STRONG_KEY = re.compile(rf"(?i)(?:^|[_-])(?:{_PASSWORD_WORDS}|{_STRONG_WORDS}|authorization)$")


def _secret_value_ok(key: str, value: str) -> bool:
    """Is `value` under `key` worth redacting? Passwords always; keys/secrets from 4 characters;
    weak words (`token`, `auth`, `sig`) only for random-looking values (`token: 512` is not one)."""
    if _PASSWORD_KEY.search(key):
        return bool(value)
    if _STRONG_KEY.search(key):
        return len(value) >= 4
    if len(value) < 8:
        return False
    return any(ch.isdigit() for ch in value) or (
        any(ch.isupper() for ch in value) and any(ch.islower() for ch in value)
    )


_ENTROPY = re.compile(
    r"(?i)\b(?:key|secret|token|password|passwd|credential|signature|auth\w*|bearer|apikey)\w*\b[^\n]{0,30}?"
    r"(?<![A-Za-z0-9+/_=-])([A-Za-z0-9+/_-]{24,}={0,2})(?![A-Za-z0-9+/_=-])"
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token)(\s+)(?!" + _PLACEHOLDER_RX + r")([A-Za-z0-9._~+/-]{8,}=*)")
_URL_CRED = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:)([^\s@/]{1,128})(@)")
_KEYWORD_HINTS = ("pass", "pwd", "secret", "key", "token", "credential", "auth", "sig", "bearer", "basic")
# the hint lists as one search each (one pass in C instead of a Python loop of `in` tests)
_TOKEN_HINT_RX = re.compile("|".join(re.escape(h) for h in _TOKEN_HINTS))
_KEYWORD_HINT_RX = re.compile("|".join(re.escape(h) for h in _KEYWORD_HINTS))
_PHONE_WORDS = ("phone", "tel", "mobile", "cell", "fax", "whatsapp")

_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]{1,64}@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})([0-9]{2})(?=[ ]?[A-Za-z0-9])")
# a run of digit groups joined by single spaces or dashes; card numbers are searched inside it
_DIGIT_RUN = re.compile(r"(?<![0-9.,])[0-9]+(?:[ -][0-9]+)*(?![0-9]|[.,][0-9])")
_GROUP = re.compile(r"[0-9]+")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.[0-9])")
_VERSION_BEFORE = re.compile(r"(?i)(?:version|ver\.?|release|build|firmware|v)\s*$")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![\w:])")
_PHONE = re.compile(
    r"(?P<intl>(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}(?!\w|[.,]\d))"
    r"|(?P<nanp>(?<![\w+.-])(?<!\d[ ])(?:\([2-9]\d{2}\)[ ]?|[2-9]\d{2}(?P<sep>[-. ]))"
    r"[2-9]\d{2}(?(sep)(?P=sep)|[-. ])\d{4}(?!\w|[-.,]\d|[ ]\d))"
    r"|(?P<eu>(?<![\w+.-])(?<!\d[ ])(?:0\d{1,4}(?:[ ]\d{2}){4}|0\d{2,4}[ ]\d{3,4}[ ]\d{3,4})(?!\w|[-.,]\d|[ ]\d))"
    r"|(?P<kw>(?i:\b(?:phone|tel|telephone|mobile|cell|fax|whatsapp)\b)\s*(?:no\.?|number|#)?\s*[:.]?\s*)"
    r"(?P<num>\+?\d[\d ().-]{5,18}\d)"
)
_NO_DIGITS = str.maketrans("", "", "0123456789")
# fast pre-checks (they start with a character class, so the regex engine skips ahead quickly)
_CARD_HINT = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
_NANP_HINT = re.compile(r"[0-9]{3}\)?[ .-]{1,2}[0-9]{3}[ .-][0-9]{4}")
_EU_HINT = re.compile(r"0[0-9]{1,4} [0-9]{2}")
_IPV4_HINT = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


# --------------------------------------------------------------------------- the redactor


class _Probe:
    """Cheap facts about a text, computed once, that let passes skip their regular expressions.
    They may over-estimate after earlier passes replaced something, which only costs a search."""

    __slots__ = ("_lower", "n_digits", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._lower: str | None = None
        self.n_digits = len(text) - len(text.translate(_NO_DIGITS))

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower


Counts = Counter  # kind -> number of replacements


class Redactor:
    """Finds and replaces PII and secrets. Share one per process: besides its settings it keeps only a
    bounded memo of recent short texts (system prompts, tool descriptions and canned tool results
    recur in every trace of an agent; a quarter of the texts of a sim fleet's traces are repeats)."""

    MEMO_SIZE = 4096  # texts remembered (oldest forgotten first)
    MEMO_MAX_CHARS = 4096  # longer texts are not remembered

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self._memo: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.kinds = frozenset(kinds)
        passes: list[Callable[[str, Counter[str], _Probe], str]] = []
        if "secret" in self.kinds:
            passes.append(self._secrets)
        if "email" in self.kinds:
            passes.append(self._emails)
        if "iban" in self.kinds:
            passes.append(self._ibans)
        if "card" in self.kinds:
            passes.append(self._cards)
        if "ip" in self.kinds:
            passes.append(self._ips)
        if "phone" in self.kinds:
            passes.append(self._phones)
        self._passes = passes

    # ---- text

    def redact_text(self, text: str, counts: Counter[str] | None = None) -> str:
        """`text` with every finding replaced by its placeholder; adds to `counts` when given."""
        if not text:
            return text
        c = counts if counts is not None else Counter()
        memo = self._memo.get(text) if len(text) <= self.MEMO_MAX_CHARS else None
        if memo is not None:
            for kind, n in memo[1]:
                c[kind] += n
            return memo[0]
        original = text
        found: Counter[str] = Counter()
        probe = _Probe(text)
        for p in self._passes:
            text = p(text, found, probe)
        c.update(found)
        if len(original) <= self.MEMO_MAX_CHARS:
            if len(self._memo) >= self.MEMO_SIZE:
                del self._memo[next(iter(self._memo))]
            self._memo[original] = (text, tuple(found.items()))
        return text

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """(redacted text, counts per kind)."""
        c: Counter[str] = Counter()
        out = self.redact_text(text, c)
        return out, dict(c)

    def _secrets(self, text: str, c: Counter[str], probe: _Probe) -> str:
        ph = PLACEHOLDERS["secret"]
        if _TOKEN_HINT_RX.search(text) is not None:

            def tok(m: re.Match[str]) -> str:
                if m.lastgroup == "openai" and not _looks_random(m.group(0)[3:], min_len=20):
                    return m.group(0)
                c["secret"] += 1
                return ph

            text = _TOKENS.sub(tok, text)
        lower = probe.lower
        if "://" in text:

            def url(m: re.Match[str]) -> str:
                if m.group(2).startswith("[") and re.fullmatch(_PLACEHOLDER_RX, m.group(2)):
                    return m.group(0)
                c["secret"] += 1
                return m.group(1) + ph + m.group(3)

            text = _URL_CRED.sub(url, text)
        if _KEYWORD_HINT_RX.search(lower) is None:
            return text

        def scheme(m: re.Match[str]) -> str:
            if not _looks_random(m.group(3), min_len=8):
                return m.group(0)
            c["secret"] += 1
            return m.group(1) + m.group(2) + ph

        if "bearer" in lower or "basic" in lower or "token" in lower:
            text = _AUTH_SCHEME.sub(scheme, text)

        def assign(m: re.Match[str]) -> str:
            key = m.group("key")
            quote = m.group("q")
            value = m.group("qv") if quote else m.group("v")
            if not _secret_value_ok(key, value):
                return m.group(0)
            c["secret"] += 1
            return key + m.group("sep") + (quote + ph + quote if quote else ph)

        if ":" in text or "=" in text:
            text = _ASSIGN.sub(assign, text)

        def entropy(m: re.Match[str]) -> str:
            value = m.group(1)
            if not _looks_random(value.rstrip("="), min_len=24):
                return m.group(0)
            c["secret"] += 1
            start = m.start(1) - m.start(0)
            return m.group(0)[:start] + ph

        return _ENTROPY.sub(entropy, text)

    def _emails(self, text: str, c: Counter[str], probe: _Probe) -> str:
        if "@" not in text:
            return text
        ph = PLACEHOLDERS["email"]

        def f(m: re.Match[str]) -> str:
            c["email"] += 1
            return ph

        return _EMAIL.sub(f, text)

    def _ibans(self, text: str, c: Counter[str], probe: _Probe) -> str:
        if probe.n_digits < 8:  # the fewest digits of any IBAN (2 check digits + a short BBAN)
            return text
        spans: list[tuple[int, int]] = []
        for m in _IBAN_START.finditer(text):
            if spans and m.start() < spans[-1][1]:
                continue
            want = _IBAN_LENGTHS.get(m.group(1).upper())
            if want is None:
                continue
            # take `want` alphanumerics from the start, single spaces allowed between them
            i, n, got = m.start(), len(text), 0
            end = i
            while i < n and got < want:
                ch = text[i]
                if ch.isascii() and ch.isalnum():
                    got += 1
                    i += 1
                    end = i
                elif ch == " " and got > 0 and i + 1 < n and text[i + 1].isascii() and text[i + 1].isalnum():
                    i += 1
                else:
                    break
            if got != want or (end < n and text[end].isascii() and text[end].isalnum()):
                continue
            if iban_ok(text[m.start() : end]):
                spans.append((m.start(), end))
        if not spans:
            return text
        c["iban"] += len(spans)
        return _splice(text, spans, PLACEHOLDERS["iban"])

    def _cards(self, text: str, c: Counter[str], probe: _Probe) -> str:
        if probe.n_digits < 13 or not _CARD_HINT.search(text):
            return text
        ph = PLACEHOLDERS["card"]

        def f(m: re.Match[str]) -> str:
            run = m.group(0)
            groups = [(g.start(), g.end()) for g in _GROUP.finditer(run)]
            total = sum(e - s for s, e in groups)
            if total < 13:
                return run
            spans: list[tuple[int, int]] = []
            i = 0
            while i < len(groups):
                # the longest valid card number made of whole groups starting at group i
                best = None
                digits = ""
                for j in range(i, len(groups)):
                    glen = groups[j][1] - groups[j][0]
                    # written in groups, a card number starts with 4 digits and has groups of 3 to 6
                    if j > i and ((j == i + 1 and len(digits) != 4) or not 3 <= glen <= 6):
                        break
                    digits += run[groups[j][0] : groups[j][1]]
                    if len(digits) > 19:
                        break
                    if len(digits) >= 13 and card_iin_ok(digits) and luhn_ok(digits):
                        best = j
                if best is None:
                    i += 1
                    continue
                spans.append((groups[i][0], groups[best][1]))
                i = best + 1
            if not spans:
                return run
            c["card"] += len(spans)
            return _splice(run, spans, ph)

        return _DIGIT_RUN.sub(f, text)

    def _ips(self, text: str, c: Counter[str], probe: _Probe) -> str:
        ph = PLACEHOLDERS["ip"]
        if "::" in text or text.count(":") >= 7:

            def v6(m: re.Match[str]) -> str:
                cand = m.group(0)
                groups = [g for g in re.split(r"[:.]", cand) if g]
                if not (len(groups) >= 4 or (len(groups) >= 2 and any(len(g) >= 3 for g in groups))):
                    return cand
                try:
                    ipaddress.IPv6Address(cand)
                except ValueError:
                    return cand
                c["ip"] += 1
                return ph

            text = _IPV6.sub(v6, text)
        if probe.n_digits < 4 or text.count(".") < 3 or not _IPV4_HINT.search(text):
            return text

        def v4(m: re.Match[str]) -> str:
            if _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
                return m.group(0)
            c["ip"] += 1
            return ph

        return _IPV4.sub(v4, text)

    def _phones(self, text: str, c: Counter[str], probe: _Probe) -> str:
        if probe.n_digits < 7:
            return text
        if not (
            "+" in text
            or _NANP_HINT.search(text)
            or _EU_HINT.search(text)
            or any(w in probe.lower for w in _PHONE_WORDS)
        ):
            return text
        ph = PLACEHOLDERS["phone"]

        def f(m: re.Match[str]) -> str:
            if m.group("num") is not None:
                n = len(_digits(m.group("num")))
                if 7 <= n <= 15:
                    c["phone"] += 1
                    return m.group("kw") + ph
                return m.group(0)
            n = len(_digits(m.group(0)))
            if m.group("intl") is not None and not 8 <= n <= 15:
                return m.group(0)
            c["phone"] += 1
            return ph

        return _PHONE.sub(f, text)

    # ---- structures

    def redact_json(self, value: Any, counts: Counter[str] | None = None) -> Any:
        """A copy of a JSON value with every string redacted; string values under secret-looking
        keys (`password`, `api_key`, `token`, ...) become `[SECRET]`; long integers that are card
        numbers become `"[CARD]"`."""
        c = counts if counts is not None else Counter()
        return self._json(value, c)

    def _json(self, value: Any, c: Counter[str]) -> Any:
        if isinstance(value, str):
            return self.redact_text(value, c)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if (
                    "secret" in self.kinds
                    and isinstance(k, str)
                    and isinstance(v, str)
                    and v
                    and not re.fullmatch(_PLACEHOLDER_RX, v)
                    and _SECRET_KEY.match(k)
                    and (_secret_value_ok(k, v) or (_JSON_STRONG_KEY.search(k) is not None and len(v) >= 4))
                ):
                    c["secret"] += 1
                    out[k] = PLACEHOLDERS["secret"]
                else:
                    out[k] = self._json(v, c)
            return out
        if isinstance(value, list):
            return [self._json(v, c) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and "card" in self.kinds and value > 10**11:
            d = str(value)
            if card_iin_ok(d) and luhn_ok(d):
                c["card"] += 1
                return PLACEHOLDERS["card"]
        return value

    def redact_json_string(self, raw: str, counts: Counter[str] | None = None) -> str:
        """Redact a JSON document given as a string, keeping it valid JSON (text if it is not JSON)."""
        c = counts if counts is not None else Counter()
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            return self.redact_text(raw, c)
        before = sum(c.values())
        red = self._json(obj, c)
        if sum(c.values()) == before:
            return raw
        return json.dumps(red, ensure_ascii=False)

    _SKIP_KEYS = frozenset({"role", "name", "tool_call_id", "id", "type"})

    def _message_value(self, key: str | None, value: Any, c: Counter[str]) -> Any:
        if isinstance(value, str):
            if key == "arguments":
                return self.redact_json_string(value, c)
            if key in self._SKIP_KEYS:
                return value
            return self.redact_text(value, c)
        if isinstance(value, dict):
            return {k: self._message_value(k, v, c) for k, v in value.items()}
        if isinstance(value, list):
            return [self._message_value(None, v, c) for v in value]
        return value

    def redact_messages(
        self, messages: list[dict[str, Any]], counts: Counter[str] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Redacted copies of OpenAI-format messages: every content (text or parts), every tool
        call's arguments (as JSON), every tool result. Returns (messages, counts of this call)."""
        c: Counter[str] = Counter()
        out = [self._message_value(None, m, c) for m in messages]
        if counts is not None:
            counts.update(c)
        return out, dict(c)

    def redact_sft(self, example: SFTExample) -> tuple[SFTExample, dict[str, int]]:
        msgs, counts = self.redact_messages(example.messages)
        return example.model_copy(update={"messages": msgs}), counts

    def redact_pair(self, pair: PreferencePair) -> tuple[PreferencePair, dict[str, int]]:
        c: Counter[str] = Counter()
        prompt, _ = self.redact_messages(pair.prompt, c)
        chosen, _ = self.redact_messages(pair.chosen, c)
        rejected, _ = self.redact_messages(pair.rejected, c)
        return pair.model_copy(update={"prompt": prompt, "chosen": chosen, "rejected": rejected}), dict(c)

    def _tool_result(self, value: Any, c: Counter[str]) -> Any:
        """A tool result redacted: a string as text; any other JSON value leaf by leaf (it stays JSON, and
        secrets under secret-looking keys are caught), then its rendered text is searched too (what the
        student reads): anything still found there turns the result into that redacted text."""
        if value is None or isinstance(value, str):
            return value if value is None else self.redact_text(value, c)
        red = self._json(value, c)
        text = render_tool_result(red)
        found: Counter[str] = Counter()
        again = self.redact_text(text, found)
        if found:
            c.update(found)
            return again
        return red

    def redact_trace(self, trace: AgentTrace) -> tuple[AgentTrace, dict[str, int]]:
        """A copy of a trace with its texts redacted: input, system prompt, every step's content, tool
        arguments and result, the final output, the error and the ground truth. (After `redact_messages`
        on the same trace most texts are memo hits.)"""
        c: Counter[str] = Counter()
        t = self.redact_text
        steps = []
        for s in trace.steps:
            content = t(s.content, c)
            args = self._json(s.tool_args, c) if s.tool_args is not None else None
            result = self._tool_result(s.tool_result, c)
            if content == s.content and args == s.tool_args and result == s.tool_result:
                steps.append(s)  # nothing found: the step itself (a copy per step was a fifth of the cost)
            else:
                steps.append(s.model_copy(update={"content": content, "tool_args": args, "tool_result": result}))
        update: dict[str, Any] = {
            "input_text": t(trace.input_text, c),
            "system_prompt": t(trace.system_prompt, c),
            "final_output": t(trace.final_output, c),
            "steps": steps,
        }
        if trace.error is not None:
            update["error"] = t(trace.error, c)
        if trace.ground_truth is not None:
            update["ground_truth"] = t(trace.ground_truth, c)
        return trace.model_copy(update=update), dict(c)


def _splice(text: str, spans: list[tuple[int, int]], placeholder: str) -> str:
    parts: list[str] = []
    last = 0
    for s, e in spans:
        parts.append(text[last:s])
        parts.append(placeholder)
        last = e
    parts.append(text[last:])
    return "".join(parts)


default_redactor = Redactor()


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """(redacted text, counts per kind) with the default redactor."""
    return default_redactor.redact(text)


def redact_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    return default_redactor.redact_messages(messages)


def redact_sft(example: SFTExample) -> tuple[SFTExample, dict[str, int]]:
    return default_redactor.redact_sft(example)


def redact_pair(pair: PreferencePair) -> tuple[PreferencePair, dict[str, int]]:
    return default_redactor.redact_pair(pair)
