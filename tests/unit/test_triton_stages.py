"""triton-stages attributes CPU to the processes of one group (what its JSON figures rest on)."""

from __future__ import annotations

import subprocess
import sys
import time

from visual_search.bench.triton_stages import by_model, process_cpu


def test_cpu_of_a_process_group_is_found_and_split_per_request() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(5)"
    p = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)  # its own group
    try:
        before = process_cpu(p.pid)
        assert p.pid in before  # found by group, named as the server (not a python stub)
        time.sleep(1.0)
        after = process_cpu(p.pid)
        per = by_model(before, after, 2)
        assert set(per) == {"tritonserver"} and 0.1 <= per["tritonserver"] / 1e3 * 2 <= 0.45
        assert process_cpu(p.pid + 10**7) == {}  # no such group
    finally:
        p.kill()
        p.wait()
