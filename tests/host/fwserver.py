"""A loopback HTTP server for firmware-update tests: serves what a test puts
in `routes` and records every request (and the bodies of PUT/POST).

    srv = FwServer()
    srv.routes["/fw.evfw"] = ("body", data)          # Content-Length
    srv.routes["/chunked"] = ("chunked", data)       # Transfer-Encoding: chunked
    srv.routes["/old"] = ("redirect", "/fw.evfw")    # 302
    srv.routes["/gone"] = ("status", 404)
    srv.routes["/cut"] = ("cut", data, n)            # says len(data), sends n bytes, closes
    srv.routes["/slow"] = ("slow", data)             # 1,000 bytes every 20 ms
    srv.url("/fw.evfw"); srv.requests; srv.uploads; srv.close()

and make_keys(dir): two key pairs ("good", "other") made by tools/sign.py.
"""

import http.server
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "tools"))

import sign  # noqa: E402


def make_keys(d):
    """{name: (private PEM path, public JSON path)} for "good" and "other" in folder d."""
    out = {}
    for name in ("good", "other"):
        pem, pub = d / (name + ".pem"), d / (name + ".json")
        sign.keygen(pem)
        sign.write_public(pem, pub)
        out[name] = (pem, pub)
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server.owner
        with srv.cond:
            srv.requests.append(("GET", self.path))
            srv.cond.notify_all()
        route = srv.routes.get(self.path)
        if route is None:
            route = ("status", 404)
        kind = route[0]
        if kind == "status":
            self.send_response(route[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", route[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "body":
            self.send_response(200)
            self.send_header("Content-Length", str(len(route[1])))
            self.end_headers()
            self.wfile.write(route[1])
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            data = route[1]
            step = 1000
            for i in range(0, len(data), step):
                part = data[i : i + step]
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "slow":  # 1,000 bytes every 20 ms
            self.send_response(200)
            self.send_header("Content-Length", str(len(route[1])))
            self.end_headers()
            for i in range(0, len(route[1]), 1000):
                try:
                    self.wfile.write(route[1][i : i + 1000])
                    self.wfile.flush()
                except OSError:
                    return  # the client went away
                time.sleep(0.02)
        elif kind == "cut":
            self.send_response(200)
            self.send_header("Content-Length", str(len(route[1])))
            self.end_headers()
            self.wfile.write(route[1][: route[2]])
            self.close_connection = True
        self.wfile.flush()

    def do_PUT(self):
        srv = self.server.owner
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        with srv.cond:
            srv.requests.append(("PUT", self.path))
            srv.uploads.append((self.path, body))
            srv.cond.notify_all()
        self.send_response(srv.put_status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FwServer:
    def __init__(self, ssl_ctx=None):
        """ssl_ctx: a server SSLContext for https://localhost (else http://127.0.0.1)."""
        self.routes = {}
        self.secure = ssl_ctx is not None
        self.requests = []
        self.uploads = []
        self.put_status = 201
        self.cond = threading.Condition()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        if ssl_ctx is not None:
            self.httpd.socket = ssl_ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        if self.secure:
            return "https://localhost:%d%s" % (self.port, path)
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
