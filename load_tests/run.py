#!/usr/bin/env python
"""Load test runner: same as `vsearch bench load` (see visual_search/bench/load.py for the options).

    python load_tests/run.py --profiles search --steps 1,2,4 --duration 30
"""

from __future__ import annotations

import sys

from visual_search.bench.load import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
