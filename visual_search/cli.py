"""`vsearch` command line: a thin dispatcher over subcommand modules.

Each module named in COMMAND_MODULES (or BENCH_MODULES for `vsearch bench ...`) exposes
`register(subparsers)`, which adds its parser and sets `func=<callable(args) -> int>`. Modules
must keep heavy imports inside their run function so `vsearch --help` stays fast. To add a
command, write such a module and add its name here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: list[str] = [
    "visual_search.shard.cli",
    "visual_search.triton.cli",
    "visual_search.gateway.cli",
    "visual_search.client_cli",
    "visual_search.launcher",
    "visual_search.eval.cli",
    "visual_search.eval.canary_cli",
    "visual_search.eval.calibrate_cli",
    "visual_search.cutover.cli",
    "visual_search.adapt_cli",
    "visual_search.web.server",
]
BENCH_MODULES: list[str] = [
    "visual_search.triton.bench",
    "visual_search.bench.triton_grid",
    "visual_search.bench.triton_stages",
    "visual_search.bench.shard_bench",
    "visual_search.bench.crash",
    "visual_search.bench.e2e",
    "visual_search.bench.load",
    "visual_search.bench.detector_size",
    "visual_search.bench.update",
    "visual_search.bench.budget",
    "visual_search.bench.ingest",
    "visual_search.bench.memory",
    "visual_search.bench.gateway_loop",
    "visual_search.bench.supervision",
]


def _register_all(subparsers: argparse._SubParsersAction, modules: Sequence[str]) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # one broken command must not take the others down
            print(f"vsearch: skipping {name}: {exc}", file=sys.stderr)
            continue
        module.register(subparsers)


EXAMPLES = """\
a first session (from the repository root, after `bash scripts/demo.sh` installed .venv):
  vsearch up &                                  # Triton + 2 shards + gateway on 127.0.0.1:50051
  vsearch index ../shared/data/grocery_packages_dev/manifest.csv   # its catalog split
  vsearch detect tests/data/bus.jpg             # the objects a query could use
  vsearch search tests/data/bus.jpg             # default box = the most salient object
  vsearch search --item ITEM_ID                 # more like this
  vsearch web --catalog-root ../shared/data/grocery_packages_dev   # http://127.0.0.1:8080
`vsearch COMMAND --help` describes each command; the gateway address comes from --gateway or
VSEARCH_GATEWAY, the token from --token or VSEARCH_AUTH_TOKEN.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsearch",
        description="Visual search: index catalog photos, search by photo, run and measure the stack.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _register_all(sub, COMMAND_MODULES)
    bench = sub.add_parser("bench", help="benchmarks (results as JSON under benchmarks/)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    _register_all(bench_sub, BENCH_MODULES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vsearch_client.cli import run_command  # exit codes and `| head` handling, as vsearch-client

    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
