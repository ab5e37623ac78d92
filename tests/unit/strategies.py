"""Hypothesis strategies and settings shared by the unit tests."""

from __future__ import annotations

import operator
import re
import string

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Modest example counts keep the suite fast; no deadline because idna and pkilint warm up lazily.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One LDH label as RFC 1123 allows it (lower-case form), and the whole-name rules hsmca promises.
LDH_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_ldh_host_name(name: str) -> bool:
    """The shape every name normalize_dns_name returns must have."""
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(LDH_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


# Labels with "--" in positions 3 and 4 are reserved by IDNA2008 (RFC 5891 4.2.3.1; only "xn--"
# A-labels may use them) and the idna package refuses them, so valid-name strategies avoid them.
_ALNUM = string.ascii_letters + string.digits


def _labels(max_inner: int):
    """1 to max_inner + 2 letters, digits and inner hyphens (built, not filtered, for speed)."""
    tail = st.builds(
        operator.add, st.text(_ALNUM + "-", max_size=max_inner), st.sampled_from(_ALNUM)
    )
    return st.builds(operator.add, st.sampled_from(_ALNUM), st.one_of(st.just(""), tail)).filter(
        lambda label: label[2:4] != "--"
    )


def _names(max_inner: int, max_length: int):
    labels = _labels(max_inner)
    return st.builds(
        lambda inner, top: ".".join([*inner, top]),
        st.lists(labels, max_size=3),
        labels.filter(lambda label: not label.isdigit()),
    ).filter(lambda name: len(name) <= max_length)


# Valid host names, in random case, possibly single-label (like the guide's "rec1"): any length
# up to the limits, and short ones that also fit in a CN.
ldh_names = _names(61, 253)
short_ldh_names = _names(12, 64)

# Text that wanders near the interesting branches of name and address validation.
_DNS_PIECES = [
    *"aZ09-._*%:/ \t",
    "\u3002",  # ideographic full stop, which UTS 46 maps to "."
    "\u00fc",
    "\u00df",
    "\u200d",
    "\u0301",
    "xn--",
    "ab--",
    "..",
    "1.2.3.4",
    "::1",
    "%eth0",
]
dns_like_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(_DNS_PIECES), max_size=20).map("".join),
    st.text(min_size=60, max_size=300),
)
ip_like_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(list("0123456789abcdefABCDEF:.%/ x")), max_size=45).map("".join),
)
