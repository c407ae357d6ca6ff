"""The typed client (sync `Client`, asyncio `AsyncClient`) lives in the light client package
`vsearch_client` (clients/python/); this module re-exports it so `visual_search.client` imports
keep working inside the serving code, its tests and benchmarks."""

from vsearch_client.client import *  # noqa: F403
from vsearch_client.errors import *  # noqa: F403
