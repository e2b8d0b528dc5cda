"""`make token USER=alice`: print an HS256 bearer token signed with the configured BETTER_AUTH_SECRET."""

import argparse

from backend.auth import mint_dev_token
from backend.config import get_settings


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
