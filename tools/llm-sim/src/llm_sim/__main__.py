"""``python -m llm_sim`` / ``llm-sim``: parse the command line and serve."""

from __future__ import annotations

from collections.abc import Sequence

from llm_sim.config import parse_config
from llm_sim.server import serve


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``llm-sim`` console script."""
    serve(parse_config(argv))


if __name__ == "__main__":
    main()
