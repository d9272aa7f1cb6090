#!/usr/bin/env python3
"""A fake Kubernetes API server for scripts/soak.sh: pods only, plain HTTP.

Answers the agent's LIST (GET /api/v1/pods?...) with a PodList and its WATCH
(...&watch=1&resourceVersion=N) with a chunked stream of watch events newer
than N, then the ones added while it is open, until timeoutSeconds. A
resourceVersion older than the events kept gets a 410 ERROR event (the agent
re-lists), as the real server does.

The soak drives the pod churn through two extra routes:
  POST /soak/add?uid=U&name=N&cid=C   a pod on NODE, Running, one container C
  POST /soak/delete?uid=U             the pod deleted

  soak-k8s-api.py PORT_FILE NODE     (binds a free 127.0.0.1 port, writes it to PORT_FILE)
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

KEEP_EVENTS = 2000

lock = threading.Condition()
pods = {}    # uid -> pod object
events = []  # (rv, line)
rv = 1000
node = sys.argv[2] if len(sys.argv) > 2 else "soak"


def pod_object(uid, name, cid, version):
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "soak", "uid": uid,
                     "resourceVersion": str(version),
                     "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": "soak"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], "nodeName": node},
        "status": {"phase": "Running", "podIP": "10.244.1.30",
                   "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0,
                                          "image": "docker.io/library/busybox:1.36",
                                          "containerID": "containerd://" + cid, "started": True,
                                          "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]},
    }


def push(kind, obj):
    global rv
    rv += 1
    obj["metadata"]["resourceVersion"] = str(rv)
    events.append((rv, json.dumps({"type": kind, "object": obj}, separators=(",", ":"))))
    del events[:-KEEP_EVENTS]
    lock.notify_all()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def chunk(self, line):
        data = (line + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        with lock:
            if u.path == "/soak/add":
                pods[q["uid"]] = pod_object(q["uid"], q["name"], q["cid"], 0)
                push("ADDED", json.loads(json.dumps(pods[q["uid"]])))
            elif u.path == "/soak/delete" and q.get("uid") in pods:
                push("DELETED", pods.pop(q["uid"]))
            else:
                return self.reply(404, "{}")
        self.reply(200, "{}")

    def do_GET(self):
        u = urlparse(self.path)
        if u.path != "/api/v1/pods":
            return self.reply(404, '{"kind":"Status","code":404}')
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if q.get("watch") not in ("1", "true"):
            with lock:
                body = {"kind": "PodList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(rv)}, "items": list(pods.values())}
            return self.reply(200, json.dumps(body, separators=(",", ":")))
        since = int(q.get("resourceVersion") or 0)
        deadline = time.monotonic() + min(int(q.get("timeoutSeconds") or 300), 300)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            with lock:
                if events and since < events[0][0] - 1 and since < rv:
                    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                                                        "status": "Failure", "reason": "Expired",
                                                        "code": 410}}
                    self.chunk(json.dumps(gone))
                    self.wfile.write(b"0\r\n\r\n")
                    return
            while time.monotonic() < deadline:
                with lock:
                    new = [line for (v, line) in events if v > since]
                    if new:
                        since = events[-1][0]
                    else:
                        lock.wait(1.0)
                for line in new:
                    self.chunk(line)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
