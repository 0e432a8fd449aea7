"""`edge serve --uds PATH`: the same app on a Unix domain socket (robots and kiosks on the device).

The socket file gets mode 0660: the service user and its group (e.g. a `robot` group added with
SupplementaryGroups or `usermod -aG`) may connect, nobody else. A stale socket file left by a
killed server is replaced; a live one (another server answers) is an error, as a busy port is.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from edge.errors import BadRequestError, UnavailableError

SOCKET_MODE = 0o660


def bind_unix(path: Path) -> socket.socket:
    path = Path(path)
    if not path.parent.is_dir():
        raise BadRequestError(
            f"cannot listen on {path}: folder {path.parent} does not exist; create it "
            "(systemd: RuntimeDirectory=edge gives /run/edge)",
            param="uds",
        )
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)  # the file is created 0660 from the start, never briefly world-writable
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise BadRequestError(f"cannot listen on {path}: {exc.strerror}; check --uds", param="uds") from None
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BadRequestError(f"{path} exists and is not a socket; choose another --uds path", param="uds")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:  # nobody listens: a leftover of a killed server
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise UnavailableError(f"another server is listening on {path}; stop it or choose another --uds path")
