from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from tests.harness import ServerProcess

if TYPE_CHECKING:
    from tests.cluster_harness import RedisServer

# the behaviour tests of one server that also run against a 3-node cluster (clients spread over
# the nodes), as the "cluster" parameter of their ``server`` fixture
CLUSTER_MODULES = {"test_server", "test_client_e2e"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames and metafunc.module.__name__.rpartition(".")[2] in CLUSTER_MODULES:
        metafunc.parametrize("server", ["one", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["RedisServer"]:
    """One redis-server for the session's clusters (each cluster flushes it first)."""
    from tests.cluster_harness import RedisServer, require_redis

    require_redis()
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    yield redis
    redis.stop()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    if getattr(request, "param", "one") == "cluster":
        from tests.cluster_harness import Cluster

        process = Cluster(request.getfixturevalue("redis_server"), data_dir)
    else:
        process = ServerProcess(data_dir)
    yield process
    process.stop()
