"""Presence cost against the number of users online (issue 10, item 9): bench/presence.py."""

from bench import presence
from bench.registry import scenario

scenario("presence")(presence.rows)
