#!/usr/bin/python3
# A stand-in for cloudterm-agent used only when the real agent is not built (set
# CLOUDTERM_TEST_AGENT=fake): serves GET /v1/info and POST /v1/exec on inherited fd 3.
import base64, json, socket, socketserver, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply({"agent": "fake"})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        argv = req.get("argv") or ["/bin/sh", "-c", req["command"]]
        try:
            p = subprocess.run(argv, capture_output=True, cwd="/workspace",
                               timeout=req.get("timeout_ms", 60000) / 1000)
            code, sig = (p.returncode, None) if p.returncode >= 0 else (None, -p.returncode)
            out, err = p.stdout, p.stderr
        except Exception as e:
            code, sig, out, err = 127, None, b"", str(e).encode()
        self.reply({"exit_code": code, "signal": sig,
                    "stdout_base64": base64.b64encode(out).decode(),
                    "stderr_base64": base64.b64encode(err).decode()})
    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True

server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=3)
server.serve_forever()
