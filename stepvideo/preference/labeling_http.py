"""The labeling server's HTTP layer: the threaded server and the checks every request passes.

The checks (like Jupyter's) defend the labels against a web page open in the annotator's own browser
(a cross-site request to 127.0.0.1) and against DNS rebinding (a hostile name re-pointed at 127.0.0.1,
which makes the hostile page same-origin with the server):
- Host: the Host header must name the address served: 127.0.0.1:PORT, localhost:PORT or the --host
  value. Bound to every interface (0.0.0.0), also any IP literal and this machine's hostname: a
  rebinding attack needs a DNS name of its own. Anything else: 403.
- Token: a random token per server (secrets.token_urlsafe). The page is served only at the URL the
  server prints, /?token=TOKEN, and embeds the token; its script sends it as the X-Stepvideo-Token
  header on every /api/ call (a custom header: another origin cannot send it without a CORS
  preflight, which this server never grants), and loads the videos as /media/...?token=TOKEN (a
  <video> cannot send headers; a query parameter also works for its Range requests, where a cookie
  would be shared by every server on 127.0.0.1, whatever the port). A wrong or missing token: 403.
- Origin: a POST whose Origin header is present and is not http://HOST: 403.
- Content-Type: a POST must say application/json, which an HTML form cannot send: 415.

Threads: one daemon thread per connection, a listen backlog of 128, and a socket timeout on every
connection (10 s by default): a client that stops sending holds its thread at most that long per read.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import urllib.parse
from http.server import ThreadingHTTPServer

TOKEN_HEADER = "X-Stepvideo-Token"
TOKEN_PARAM = "token"
TOKEN_PLACEHOLDER = b"__STEPVIDEO_TOKEN__"  # in label_page.html, replaced by the server's token
REQUEST_TIMEOUT = 10.0  # seconds one read or write on a connection may wait
BACKLOG = 128


class LabelHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer (daemon threads) with a listen backlog of BACKLOG connections."""

    daemon_threads = True
    request_queue_size = BACKLOG


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server reachable from this machine only."""
    ip = _ip(host)
    return host.lower() == "localhost" or (ip is not None and ip.is_loopback)


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


class Guard:
    """The checks of the module docstring for one server: listening on `host`, port `port`."""

    def __init__(self, host: str, port: int, token: str | None = None):
        self.host, self.port = host, port
        if token is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,200}", token):
            raise ValueError("a token is 16 to 200 characters of A-Z, a-z, 0-9, '_' and '-'")  # it goes in the page
        self.token = token if token is not None else secrets.token_urlsafe(32)
        ip = _ip(host)
        self.wildcard = host == "" or (ip is not None and ip.is_unspecified)
        self.names = {"127.0.0.1", "localhost", host.lower()} - {""}
        if self.wildcard:
            self.names.add(socket.gethostname().lower())

    def url(self, host: str | None = None) -> str:
        """The page's address, token included (`host`: default the address served, 127.0.0.1 for 0.0.0.0)."""
        host = host or ("127.0.0.1" if self.wildcard else self.host)
        return f"http://{host}:{self.port}/?{TOKEN_PARAM}={self.token}"

    def host_ok(self, header: str | None) -> bool:
        value = (header or "").strip().lower()
        name, sep, port = value.rpartition(":")
        if not sep or "]" in port:  # no port ("name", "[::1]"): the default port 80
            name, port = value, "80"
        if not name or port != str(self.port):
            return False
        return name in self.names or (self.wildcard and _ip(name) is not None)

    def token_ok(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    def refusal(self, method: str, headers, url: urllib.parse.SplitResult) -> tuple[int, str] | None:
        """(status, reason) when this request must be refused, None when it may be served. Paths other
        than the page, /api/ and /media/ need no token (they answer 404)."""
        host = headers.get("Host")
        if not self.host_ok(host):
            return 403, (f"Host {host!r} is not this server's address: open {self.url()} (a page of another "
                         "site that points its own name at this server is refused)")
        if url.path in ("/", "/index.html") or url.path.startswith(("/api/", "/media/")):
            given = (headers.get(TOKEN_HEADER) if url.path.startswith("/api/")
                     else urllib.parse.parse_qs(url.query).get(TOKEN_PARAM, [None])[0])
            if not self.token_ok(given):
                return 403, ("missing or wrong token: open the URL that `stepvideo label serve` printed, with its "
                             "?token= (each start of the server makes a new one)")
        if method == "POST":
            origin = headers.get("Origin")
            if origin is not None and origin.strip().lower() != f"http://{host.strip().lower()}":
                return 403, f"Origin {origin!r} is not this server's page: answers come from the labeling page only"
            if not is_json(headers.get("Content-Type")):
                return 415, f"Content-Type must be application/json, got {headers.get('Content-Type')!r}"
        return None
