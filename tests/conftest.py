from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    process = ServerProcess(data_dir)
    yield process
    process.stop()
