"""One writer per zoo folder: an exclusive `flock` on `<zoo>/.build.lock`, held for a whole build (or import).

The kernel drops an flock when its holder exits, however it exits (kill -9 included), so a lock left by a
dead process never blocks anyone: the lock file's presence means nothing, only a live holder does. The file
holds the holder's pid and host, for the message a second process prints while it waits. POSIX only.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Self

from ..errors import UserError

LOCK = ".build.lock"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ZooLock:
    """`with ZooLock(root):` holds the zoo's build lock. Another holder makes it wait (printing one line through
    `notify`), or, with `timeout` seconds given and spent (0: do not wait), raise a one-line UserError."""

    def __init__(self, root: str | Path, timeout: float | None = None, notify=_say, poll: float = 0.2):
        self.root, self.timeout, self.notify, self.poll = Path(root), timeout, notify, poll
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            text = (self.root / LOCK).read_text().strip()
        except OSError:
            text = ""
        return f"another process ({text})" if text else "another process"

    def __enter__(self) -> Self:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"zoo folder {self.root} is a file; give a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise UserError(f"zoo {self.root} is being built by {self._holder()}; "
                                        "try again when it has finished") from None
                    if not told:
                        self.notify(f"zoo {self.root} is being built by {self._holder()}; waiting for it to finish")
                        told = True
                    time.sleep(self.poll)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
