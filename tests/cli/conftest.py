"""Fixtures of the CLI tests."""

import ipaddress
import socket

import pytest


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host)
    if host in ("localhost", "", "localhost.localdomain") or host == socket.gethostname():
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def network_attempts(monkeypatch):
    """Block every connection and name lookup outside this machine; return the list of attempts.

    An attempt is recorded, then refused with an `OSError`. The test asserts on the list: libraries that swallow the
    error (as `datasets` does for its download counter) would otherwise hide the attempt.
    """
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            attempts.append(("connect", address))
            raise OSError(f"network blocked by the test: connect to {address}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(("getaddrinfo", host))
            raise socket.gaierror(f"network blocked by the test: lookup of {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return attempts


@pytest.fixture
def offline_hub(monkeypatch, network_attempts):
    """Hub lookups fail at once, as with `HF_HUB_OFFLINE=1` (set here on the already imported libraries, which read
    the variable at import), and any other connection is blocked."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return network_attempts
