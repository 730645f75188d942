"""abraxas_http: abraxas's scan as a local HTTP service on a Unix socket.

    python3 server.py [SOCKET]      (default: abraxas.sock beside this file)

POST /scan with the canonical JSON request; answers one JSON object.
/slow sleeps 30 s first and /fail answers 500 (for the tests of an http
overlay that is slow or broken).  aal-core reaches it at
entrypoints.http.base_url = "unix:abraxas.sock".
"""
import json
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n))
        if self.path == "/fail":
            self._send(500, b'{"error": "internal"}')
            return
        if self.path == "/slow":
            time.sleep(30)
        words = str((req.get("payload") or {}).get("text", "")).split()
        out = {"words": len(words), "distinct": len({w.lower() for w in words}), "phase": req["phase"],
               "served_by": "abraxas_http"}
        self._send(200, json.dumps(out, sort_keys=True).encode())

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "abraxas.sock")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    with Server(path, Handler) as srv:
        print("listening", path, flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
