"""`vsearch adapt` refuses contradictory or incomplete serving flags before any training starts."""

from __future__ import annotations

import pytest

from visual_search import cli


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--serve", "--cutover", "--admin", "127.0.0.1:1", "--probes", "p.json"], "not both"),
        (["--cutover", "--probes", "p.json"], "needs --admin"),
        (["--cutover", "--admin", "127.0.0.1:1"], "and --probes"),
    ],
)
def test_bad_serving_flags_fail_with_a_clear_message(
    extra: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VSEARCH_ADMIN", raising=False)
    with pytest.raises(SystemExit, match=message):
        cli.main(["adapt", "--manifest", "no-such/manifest.csv", *extra])
