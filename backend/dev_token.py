"""`make token USER=alice`: print an HS256 bearer token signed with the configured BETTER_AUTH_SECRET."""

import argparse
import time

import jwt

from backend.config import Settings, get_settings


def mint_dev_token(
    settings: Settings, user_id: str, *, email: str | None = None, name: str | None = None, ttl_seconds: int = 24 * 3600
) -> str:
    """An HS256 token signed with BETTER_AUTH_SECRET, as a frontend minting its own would send."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "email": email or f"{user_id}@example.com",
        "name": name or user_id.title(),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, settings.better_auth_secret, algorithm="HS256")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("user_id", nargs="?", default="alice", help="the token's subject (default: alice)")
    parser.add_argument("--email", help="e-mail claim (default: <user>@example.com)")
    parser.add_argument("--name", help="name claim (default: the user id, capitalised)")
    parser.add_argument("--hours", type=float, default=24, help="lifetime in hours (default: 24)")
    args = parser.parse_args()
    settings = get_settings()
    print(mint_dev_token(settings, args.user_id, email=args.email, name=args.name, ttl_seconds=int(args.hours * 3600)))


if __name__ == "__main__":
    main()
