"""Older import path for the process helpers: they live in visual_search/shard/process.py
(ShardProcess) and visual_search/supervise.py (free_port, wait_healthy, stopping). Nothing in
the package imports this module; it re-exports the same objects for scripts written against it."""

from __future__ import annotations

from visual_search.shard.process import ShardProcess
from visual_search.supervise import free_port, wait_healthy

__all__ = ["ShardProcess", "free_port", "wait_healthy"]
