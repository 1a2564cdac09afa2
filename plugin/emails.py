"""Email addresses: what one entered by a merchant or an operator may look like, and its one
normal form, under which shops are stored and found."""

import re

# RFC 5321's limits: 64 characters before the @, 254 in all (what a path of 256 leaves).
MAX_LOCAL = 64
MAX_ADDRESS = 254
# A plain address: the dot-atom of RFC 5322 before the @ (no quoted strings, no comments), a host
# name of letters, digits and hyphens after it, with at least one dot. What is refused is rare in
# a real mailbox and common in an injection (spaces, angle brackets, commas, line breaks).
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

PROBLEM = "Enter one email address, such as shop@example.com (at most 254 characters)."


def normalise(value: str) -> str | None:
    """`value` as an address in its normal form (trimmed, lower case: mail systems match
    mailboxes without regard to case, and so do we), or None when it is no plain address."""
    address = value.strip()
    if not address or len(address) > MAX_ADDRESS or not address.isascii():
        return None
    local, at, domain = address.rpartition("@")
    if not at or len(local) > MAX_LOCAL or not _LOCAL.fullmatch(local):
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return address.lower()
