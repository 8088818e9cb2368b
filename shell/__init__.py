"""The I/O side of TESSENGER: sockets, files, terminals, TLS and Redis.

``core/`` decides and does no I/O; the modules here (and ``server.py``/``client.py``) only move
bytes between the outside world and the core.
"""
