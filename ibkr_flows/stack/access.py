"""Who can reach the Prefect server `ibkr up` starts: loopback only (the default), or the network (server mode,
so workers on other machines can join), which requires Prefect's basic auth.

Prefect 3 names the two sides of basic auth differently: the server checks PREFECT_SERVER_API_AUTH_STRING,
every client (worker, `prefect deploy`, flow runs, the CLI) sends PREFECT_API_AUTH_STRING. An open Prefect API
runs code: anyone who can create a deployment runs commands on the workers, hence no network server without it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ibkr_flows.stack.processes import StackError

SERVER_AUTH_VARIABLE = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH_VARIABLE = "PREFECT_API_AUTH_STRING"
LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class AuthRequiredError(StackError):
    """A server reachable from the network was asked for without an API auth string."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it resolves to whatever the network says
        return False


@dataclass(frozen=True)
class ServerAccess:
    host: str = LOOPBACK
    """The address the server binds."""
    auth_string: str | None = None
    """`user:password` for Prefect's basic auth; None = no auth (loopback only)."""

    def require_auth(self) -> None:
        if not is_loopback(self.host) and not self.auth_string:
            raise AuthRequiredError(
                f"a Prefect server on {self.host} is reachable from the network and anyone reaching it can run "
                f"code on the workers; give an API auth string: --auth-string 'user:password' (or "
                f"{SERVER_AUTH_VARIABLE}), or keep the default --host {LOOPBACK}")

    def local_host(self) -> str:
        """How processes on this machine reach the server: loopback when it binds every interface."""
        return LOOPBACK if self.host in WILDCARD_HOSTS else self.host

    def advertised_host(self) -> str:
        """How other machines (and their browsers, for the UI) reach it: this machine's name for a wildcard."""
        return socket.gethostname() if self.host in WILDCARD_HOSTS else self.host

    def server_env(self) -> dict[str, str]:
        return {SERVER_AUTH_VARIABLE: self.auth_string} if self.auth_string else {}

    def client_env(self) -> dict[str, str]:
        return {CLIENT_AUTH_VARIABLE: self.auth_string} if self.auth_string else {}
