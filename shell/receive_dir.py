"""Where received files go: ``--receive-dir``, where ``{username}`` stands for the user
logged in (``make run-client`` uses ``received/{username}``, so that two clients started in
one checkout never write into each other's directory)."""

from __future__ import annotations

import os
from typing import Callable

USERNAME = "{username}"


class ReceiveDirectory:
    """A path (``os.PathLike``) named when used: files arrive only after login, so the
    username is known; the directory is made if missing."""

    def __init__(self, template: str, username: Callable[[], str]) -> None:
        self.template = template
        self.username = username

    def __fspath__(self) -> str:
        path = self.template.replace(USERNAME, self.username())
        os.makedirs(path, exist_ok=True)
        return path
