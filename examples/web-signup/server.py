#!/usr/bin/env python3
"""The web sign-up of the use case, with ivrd's HTTP API behind it.

The page (index.html) posts the sign-up form here; this backend, which alone holds the API
key, starts a verification of the phone number at ivrd, remembers it in the visitor's
session (a random cookie, never the verification id in the page), checks the code the
second form posts, and marks the contact verified. Standard library only.

    IVRD_API_KEY=ivrd_... python3 server.py --port 8000 --api http://127.0.0.1:8080

GET /contacts lists the contacts and whether each is verified (what a CRM would store).
"""

import argparse
import http.server
import json
import os
import secrets
import threading
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_BODY = 4096


class State:
    def __init__(self, api, key):
        self.api = api.rstrip("/")
        self.key = key
        self.lock = threading.Lock()
        self.sessions = {}  # cookie -> {"verification": id, "contact": index}
        self.contacts = []  # {"firstName", "lastName", "phone", "email", "verified"}

    def ivrd(self, path, body=None):
        """(status, JSON) of one API request; a failure to connect is a 502."""
        data = json.dumps(body if body is not None else {}).encode()
        req = urllib.request.Request(
            self.api + path,
            data=data,
            method="POST" if body is not None else "GET",
            headers={"Authorization": "Bearer " + self.key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.load(e)
            except ValueError:
                return e.code, {"code": "error", "message": "ivrd answered %d" % e.code}
        except (urllib.error.URLError, OSError) as e:
            return 502, {"code": "unreachable", "message": "cannot reach ivrd: %s" % e}


def handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            pass

        def reply(self, status, body, cookie=None, content_type="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if cookie:
                self.send_header("Set-Cookie", "session=%s; HttpOnly; SameSite=Strict; Path=/" % cookie)
            self.end_headers()
            self.wfile.write(data)

        def session(self):
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "session":
                    with state.lock:
                        return value, state.sessions.get(value)
            return None, None

        def form(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return None
            try:
                return json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return None

        def do_GET(self):
            if self.path == "/":
                with open(os.path.join(HERE, "index.html"), "rb") as f:
                    self.reply(200, f.read(), content_type="text/html; charset=utf-8")
            elif self.path == "/contacts":
                with state.lock:
                    self.reply(200, state.contacts)
            else:
                self.reply(404, {"message": "not found"})

        def do_POST(self):
            body = self.form()
            if body is None:
                return self.reply(400, {"ok": False, "message": "bad request"})
            if self.path == "/signup":
                status, v = state.ivrd("/v1/verifications", {"to": body.get("phone", ""), "locale": "en"})
                if status not in (200, 201):
                    return self.reply(200, {"ok": False, "message": v.get("message", "error")})
                cookie = secrets.token_urlsafe(24)
                with state.lock:
                    state.contacts.append({
                        "firstName": body.get("firstName", ""),
                        "lastName": body.get("lastName", ""),
                        "phone": v["to"],
                        "email": body.get("email", ""),
                        "verified": False,
                    })
                    state.sessions[cookie] = {"verification": v["id"], "contact": len(state.contacts) - 1}
                return self.reply(200, {"ok": True, "to": v["to"]}, cookie=cookie)
            _, session = self.session()
            if session is None:
                return self.reply(200, {"ok": False, "message": "sign up first"})
            vid = session["verification"]
            if self.path == "/verify":
                status, v = state.ivrd("/v1/verifications/%s/check" % vid, {"code": body.get("code", "")})
                if status != 200:
                    return self.reply(200, {"message": v.get("message", "error")})
                if v["status"] == "approved":
                    with state.lock:
                        state.contacts[session["contact"]]["verified"] = True
                return self.reply(200, {"status": v["status"], "to": v["to"], "tries_left": v.get("tries_left")})
            if self.path == "/resend":
                status, v = state.ivrd("/v1/verifications/%s/resend" % vid, {})
                return self.reply(200, {"ok": status == 200, "message": v.get("message", "")})
            self.reply(404, {"message": "not found"})

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api", default="http://127.0.0.1:8080", help="ivrd's [api] listen URL")
    args = p.parse_args()
    key = os.environ.get("IVRD_API_KEY")
    if not key:
        raise SystemExit("set IVRD_API_KEY to a key from `ivrd api-keys create`")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler(State(args.api, key)))
    print("web sign-up on http://127.0.0.1:%d/" % args.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
