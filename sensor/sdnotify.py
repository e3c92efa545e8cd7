"""A small sd_notify(3): tell systemd we are ready, alive, and what we do.

With `Type=notify` systemd passes the path of a datagram socket in
$NOTIFY_SOCKET; each message is `KEY=value` lines in one datagram. Outside
systemd the variable is unset and every call does nothing, so the daemon
runs the same way from a terminal.
"""

import os
import socket

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends READY, WATCHDOG, STATUS and STOPPING messages to systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._sock is not None

    def send(self, **state: str) -> bool:
        """Send one message, e.g. `send(READY="1", STATUS="scoring")`.

        Returns:
            True if systemd got it; False outside systemd or on an error
            (logged once per call, never raised: telling systemd is not worth
            stopping the pipeline for).
        """
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in state.items())
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            log.warning("sdnotify.failed", error=str(exc), keys=list(state))
            return False

        return True

    def ready(self, status: str) -> bool:
        """Say start-up is done; systemd then counts the unit as started."""
        return self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def watchdog(self) -> bool:
        """Say the pipeline made progress since the last ping."""
        return self.send(WATCHDOG="1")

    def status(self, text: str) -> bool:
        """Set the line `systemctl status` shows."""
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        """Say shutdown has begun, so systemd does not count it as a hang."""
        return self.send(STOPPING="1", STATUS="draining and stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    # A leading "@" names a socket in the abstract namespace.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    log.warning("sdnotify.bad_socket", notify_socket=raw)
    return None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """The watchdog period in seconds, if systemd asked this process for one."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None

    return int(usec) / 1e6
