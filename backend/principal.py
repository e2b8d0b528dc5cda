"""The verified caller that every service call is scoped to. No web framework, no token library here."""

from dataclasses import dataclass

# RFC 2606's .invalid can never be a real mailbox. The API writes `<random>@users.invalid` into the user
# row of a caller whose token carries no usable e-mail; no token may claim an address there.
PLACEHOLDER_EMAIL_DOMAIN = "users.invalid"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. Every service call is scoped to `user_id`."""

    user_id: str
    email: str | None = None
    name: str | None = None


def is_reserved_email(email: str) -> bool:
    """An address under the reserved `.invalid` top-level domain (the placeholders live there)."""
    domain = email.rpartition("@")[2].rstrip(".").lower()
    return domain == "invalid" or domain.endswith(".invalid")
