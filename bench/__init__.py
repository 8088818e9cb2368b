"""TESSENGER benchmarks (SPEC §8): ``python3 -m bench`` / ``make bench [QUICK=1]``.

Modules: ``registry`` (the rows, ``Sizes``; add a row as a file in ``rows/``), ``scenarios``
(the built-in rows), ``load`` (load-generating processes), ``wire`` (TESSENGER's and Redis's
protocols for them), ``redis_anchor`` (the redis-server anchors), ``reference`` (the
reference step), ``udp_ceiling`` (the UDP blast), ``p2pvideo`` (the transfer row),
``common`` (server process, accounts, CPU accounting, statistics).
"""
