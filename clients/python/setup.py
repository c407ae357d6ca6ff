"""Build hook: generate the gRPC stubs (vsearch_client/v1/*_pb2*.py) when they are missing.

They are not in git. In a checkout, `scripts/gen_proto.sh` writes them (install.sh runs it); a
plain `pip install clients/python` from a fresh clone gets them here, from the repository's
proto/ directory, with the grpcio-tools that pyproject.toml lists as a build requirement.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
STUB = HERE / "vsearch_client" / "v1" / "search_pb2.py"


class BuildWithStubs(build_py):
    def run(self) -> None:
        if not STUB.exists():
            gen = HERE.parent.parent / "scripts" / "gen_proto.sh"
            if not gen.exists():
                raise SystemExit(f"{STUB} is missing and {gen} is not here to generate it")
            env = {**os.environ, "PYTHON": sys.executable}
            subprocess.run(["bash", str(gen), "--client-only"], check=True, env=env)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
