"""Fixtures of the fleet tests: redis-server and moto server subprocesses."""

from tests.fleet.servers import moto, redis_server

__all__ = ["moto", "redis_server"]
