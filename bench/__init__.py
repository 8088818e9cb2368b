"""TESSENGER benchmarks (SPEC §8): ``python3 -m bench`` / ``make bench [QUICK=1]``.

Modules: ``scenarios`` (the benchmarks), ``load`` (load-generating processes),
``bare_relay`` (the TCP relay ceiling), ``udp_ceiling`` (the UDP blast ceiling),
``p2pvideo`` (the transfer row), ``common`` (server process, accounts, wire helpers).
"""
