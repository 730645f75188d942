"""The fleet's side of the Redis Streams `aal-core export` publishes (client side).

    consumer.py   FleetConsumer (XREADGROUP, XACK, XAUTOCLAIM), check_head

Imports redis only when a consumer talks to Redis; never imported by the daemon.
"""
from .consumer import Board, FleetConsumer, check_head, parse_stream

__all__ = ["Board", "FleetConsumer", "check_head", "parse_stream"]
