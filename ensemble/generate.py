"""`python -m ensemble.generate ...`: kept for old scripts; the generator is visual_search.triton.repository.

Same flags as `vsearch triton generate`. Nothing in visual_search imports this package.
"""

from __future__ import annotations

import sys

from visual_search.triton.cli import generate_main
from visual_search.triton.repository import (
    BATCHING,
    ENSEMBLES,
    Options,
    build_configs,
    encoder_version,
    render,
    write_repository,
)

__all__ = ["BATCHING", "ENSEMBLES", "Options", "build_configs", "encoder_version", "main", "render",
           "write_repository"]


def main(argv: list[str] | None = None) -> int:
    return generate_main(argv, prog="python -m ensemble.generate")


if __name__ == "__main__":
    sys.exit(main())
