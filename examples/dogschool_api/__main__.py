"""Serve the Dog School API: ``python -m examples.dogschool_api [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import sys

try:
    import uvicorn
except ImportError as e:  # pragma: no cover
    raise ImportError(
        f"The Dog School API needs uvicorn and starlette ({e}); install the extra: "
        "pip install 'eventsourcing[asyncio-examples]'"
    ) from e

from examples.dogschool_api.web import create_app


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM stop it cleanly)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.dogschool_api",
        description="The Dog School over HTTP, with its trick tallies projection.",
        epilog=(
            "examples:\n"
            "  PERSISTENCE_MODULE=eventsourcing.sqlite DOGSCHOOL_SQLITE_DBNAME=dogs.sqlite \\\n"
            "    TRICKTALLIES_SQLITE_DBNAME=tallies.sqlite python -m examples.dogschool_api\n"
            '  curl -X POST localhost:8000/dogs -d \'{"name": "Fido"}\''
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
