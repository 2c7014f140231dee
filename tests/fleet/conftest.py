"""Fixtures of the fleet tests: redis-server, moto server, fleet members, a vendor."""

from tests.fleet.gateways import both_vendor, fleet_members
from tests.fleet.servers import moto, redis_server

__all__ = ["both_vendor", "fleet_members", "moto", "redis_server"]
