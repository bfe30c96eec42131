"""How to fix each failure class, in the words of the TWS / IB Gateway menus.

Kept apart from the probing logic so the texts can be reviewed (and translated) as a whole; every string here
ends up in front of a user, in a terminal, a Prefect artifact or an alert.
"""

from __future__ import annotations

from ibkr_flows.doctor.diagnosis import FailureClass
from ibkr_flows.ib.ports import LIVE_PORTS, WELL_KNOWN_PORTS, port_label

API_SETTINGS = "TWS: File (or Edit) -> Global Configuration -> API -> Settings"
GATEWAY_SETTINGS = "IB Gateway: Configure -> Settings -> API -> Settings"
PORT_TABLE = ", ".join(f"{port} = {what}" for port, what in WELL_KNOWN_PORTS.items())


def remediation(cls: FailureClass, *, host: str, port: int, client_id: int, open_ports: list[int] | None = None,
                suggested_client_id: int | None = None, http_server: bool = False) -> list[str]:
    """The ordered fix steps for one failure class, specialised with what the probe found (`http_server`: the
    program that is not TWS answered HTTP)."""
    env_port = "set IBKR_PORT (environment or .env)"
    match cls:
        case FailureClass.NOT_LISTENING:
            return [
                f"Start TWS or IB Gateway and log in; nothing accepts connections on {host}:{port} "
                f"({port_label(port)}).",
                f"Enable the API socket: {API_SETTINGS} -> tick 'Enable ActiveX and Socket Clients' "
                "(IB Gateway has it always on). With it off, TWS does not listen at all.",
                f"Check 'Socket port' on the same page matches IBKR_PORT={port}. Defaults: {PORT_TABLE}.",
                "Headless with IBC: in config.ini set `OverrideTwsApiPort=<port>` and make sure IBC started the "
                "gateway (`TradingMode=paper` for 4002/7497).",
            ]
        case FailureClass.WRONG_PORT:
            found = ", ".join(f"{p} ({port_label(p)})" for p in open_ports or [])
            steps = [
                f"Nothing listens on {port} ({port_label(port)}) but {found} is open on {host}: "
                f"{env_port} to the port of the session you want, e.g. `IBKR_PORT={(open_ports or [port])[0]}`.",
                f"Or change TWS to listen on {port}: {API_SETTINGS} -> 'Socket port'.",
            ]
            if any(p in LIVE_PORTS for p in open_ports or []):
                steps.append("Careful: a LIVE trading session is the one listening. This project only reads data "
                             "and connects read-only, but prefer a paper session for research.")
            return steps
        case FailureClass.HOST_UNREACHABLE:
            return [
                f"The host {host} cannot be reached (name lookup failed, or packets are dropped). Check IBKR_HOST.",
                "If TWS runs on another machine: allow TCP to its API port through firewalls, and add this "
                f"machine's IP under {API_SETTINGS} -> 'Trusted IPs'.",
                "Prefer running this tool on the TWS machine and keeping IBKR_HOST=127.0.0.1.",
            ]
        case FailureClass.NOT_TWS if http_server:
            return [
                f"An HTTP server answers on {host}:{port}, not TWS: check the port. Point IBKR_PORT (environment "
                f"or .env) at TWS's 'Socket port' ({API_SETTINGS}); defaults: {PORT_TABLE}.",
                "IBKR's Client Portal Web API gateway (https://localhost:5000 by default) speaks HTTP, not the TWS "
                "socket API this project uses: run TWS or IB Gateway instead.",
                f"To see which program owns the port: `lsof -i :{port}` (Linux/macOS) or `netstat -abno` (Windows).",
            ]
        case FailureClass.NOT_TWS:
            return [
                f"Something answered on {host}:{port}, but it does not speak the TWS API. Another program owns "
                f"that port, or IBKR_PORT points at the wrong service. Defaults: {PORT_TABLE}.",
                "If TWS is older than API version 157 (TWS 972), update TWS / IB Gateway.",
            ]
        case FailureClass.HANDSHAKE_SILENT:
            return [
                "TWS accepted the TCP connection but did not answer the API handshake. Look at the TWS window: "
                "an 'Accept incoming connection attempt?' dialog is waiting. Click 'OK'/'Accept'.",
                f"To stop the dialog from coming back, add this machine's IP to {API_SETTINGS} -> 'Trusted IPs' "
                "(127.0.0.1 is trusted when 'Allow connections from localhost only' is ticked).",
                "TWS may still be starting or stuck behind another modal dialog (login, 'Existing session "
                "detected', daily-restart notice): bring its window to the front and close it.",
                "A port forwarder (socat, docker-proxy) in front of a dead gateway also looks like this: check "
                "the gateway behind it.",
            ]
        case FailureClass.CONNECTION_REJECTED:
            return [
                f"TWS closed the connection right after accepting it. From a remote host this is the "
                f"'Allow connections from localhost only' setting: untick it in {API_SETTINGS}, or add this "
                "machine's IP to 'Trusted IPs'. Or run this tool on the TWS machine with IBKR_HOST=127.0.0.1.",
                "A denied 'Accept incoming connection' dialog closes the socket the same way.",
                "Through Docker or a port forwarder: the gateway behind it is down or rejects the forwarder's "
                "address; with IBC set `TrustedTwsApiClientIPs` / `AllowBlindTrading` as your setup needs.",
            ]
        case FailureClass.CONNECTION_DROPPED:
            return [
                f"TWS at {host}:{port} answered the API handshake, then closed the connection before the session "
                "was usable. TWS / IB Gateway is restarting (the daily auto-restart, an update) or shutting down: "
                "wait a minute and retry.",
                "If it happens every time: another login with the same user ('Existing session detected') may be "
                "taking the session over, or TWS is failing on the API request; check the TWS API log "
                f"({API_SETTINGS} -> tick 'Create API message log file') and restart TWS / IB Gateway.",
                "Through Docker or a port forwarder: the forwarder may be cutting connections (idle or connection "
                "limits); try the gateway's own port directly.",
            ]
        case FailureClass.API_NOT_READY:
            return [
                "TWS answered the version handshake but never sent the account list and next order id, so the "
                "API session is not initialised: TWS / IB Gateway is not logged in yet, or is waiting on a "
                "dialog (2-factor authentication, 'Existing session detected', license agreement).",
                "Log in (complete 2FA on the IBKR Mobile app) and wait for the main window; IB Gateway shows "
                "'API Server: connected' once ready.",
                "If it stays like this while logged in, restart TWS / IB Gateway. Headless with IBC: check the "
                "IBC log for login errors and `ReloginAfterSecondFactorAuthenticationTimeout=yes`.",
            ]
        case FailureClass.CLIENT_ID_IN_USE:
            alt = suggested_client_id if suggested_client_id is not None else client_id + 1
            return [
                f"Client id {client_id} is already connected to this TWS. Use a free id: `IBKR_CLIENT_ID={alt}`"
                + (" (probed: free)." if suggested_client_id is not None else "."),
                "Or stop the other program using it. After a crashed (SIGKILLed) client, TWS can keep the id "
                "blocked for a while: wait ~30 s or restart TWS.",
                f"Client id 0 is special (it also receives manually placed TWS orders); 'Master API client ID' "
                f"in {API_SETTINGS} gets all orders. Neither is needed for reading data.",
            ]
        case FailureClass.READ_ONLY_API:
            return [
                "Nothing to do for this project: it only reads data and always connects with readonly=True.",
                f"If another tool of yours must place orders through this TWS, untick {API_SETTINGS} -> "
                "'Read-Only API'.",
            ]
        case FailureClass.IB_CONNECTIVITY_LOST:
            return [
                "TWS is up but has lost its connection to IBKR's servers (error 1100). Check this machine's "
                "internet connection; TWS reconnects by itself and reports 1101/1102 when it is back.",
                "During IBKR's nightly maintenance window (around 23:45-00:45 US/Eastern, and longer on "
                "weekends) this is expected: retry after it.",
            ]
        case FailureClass.DATA_FARM_DOWN:
            return [
                "The historical data farm (HMDS) did not answer a tiny historical request. In TWS, look at the "
                "'Data' connection lights (or IB Gateway's 'Market Data Farm' / 'Historical Data Farm' lines): "
                "a red or yellow HMDS farm means IBKR's side is down or reconnecting.",
                "Wait a few minutes and retry; outside market hours farms go idle (2107/2108) and wake up on the "
                "first request.",
                "Check https://www.interactivebrokers.com/en/software/systemStatus.php for announced outages.",
            ]
        case FailureClass.NO_DATA_PERMISSIONS:
            return [
                "The account has no market data subscription for this instrument's exchange. In Client Portal: "
                "Settings -> Market Data Subscriptions -> subscribe (e.g. 'US Securities Snapshot and Futures "
                "Value Bundle' or the exchange's own package).",
                "Paper accounts share the live account's subscriptions: enable 'Share real-time market data "
                "subscriptions with paper trading account' under Settings -> Paper Trading Account.",
                "Subscriptions are per user: a second TWS session logged in with the same user may hold them.",
            ]
        case FailureClass.SLOW:
            return [
                f"TWS at {host}:{port} answers, but slowly: it is not down. Run `ibkr data connect --patient` to "
                "wait the configured timeouts (IBKR_PROBE_TIMEOUT, IBKR_CONNECT_TIMEOUT, IBKR_DATA_TIMEOUT) and "
                "measure the latency.",
                "A slow first historical request is usual when the farm is idle (notice 2107, outside market "
                "hours): it wakes on that request, and the next ones are fast.",
                "Persistently slow: check the network between this machine and TWS (a VPN, a saturated link), "
                "and TWS's own load (many API clients, large market data subscriptions, too little Java memory: "
                "TWS -> Global Configuration -> General -> memory allocation).",
            ]
        case FailureClass.LIVE_SESSION:
            return [
                f"This is a LIVE trading session (port {port}, or a non-paper account). This project never "
                "places orders and connects read-only, but research is safer against a paper session: "
                "port 7497 (TWS) or 4002 (IB Gateway).",
            ]
        case FailureClass.NONE:
            return []
