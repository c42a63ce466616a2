"""Idle kept-alive connections across kvd upgrades, release build.

    cargo build --release --workspace --examples --bins
    python3 bench/idle_connections.py [N]      # default 10000

Opens N connections to kvd under `handoffctl run`, one request each, then
upgrades three times; after each upgrade every connection sends one more
request, which must be answered by the new generation on the same socket
without `Connection: close`. Prints, per upgrade, the connections that
moved and the handoff's drain phase and total (`handoffctl upgrade --json`).
"""
import json, os, resource, socket, subprocess, sys, tempfile, time
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
work = tempfile.mkdtemp(prefix="tenk-")
sock = os.path.join(work, "admin.sock")
port = 18990
sup = subprocess.Popen([f"{ROOT}/handoffctl", "run", "--socket", sock, "--listen", f"http=127.0.0.1:{port}",
                        "--data-dir", os.path.join(work, "data"), "--", f"{ROOT}/examples/kvd"],
                       stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sup.log"), "w"))
def ctl(*args):
    return subprocess.run([f"{ROOT}/handoffctl", *args, "--socket", sock], capture_output=True, text=True)
for _ in range(200):
    if ctl("status").returncode == 0: break
    time.sleep(0.05)
REQ = b"GET /info HTTP/1.1\r\nhost: x\r\n\r\n"
def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk: raise EOFError("closed")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(4096)
    return json.loads(body)["pid"], b"connection: close" in head.lower()
try:
    conns = []
    for i in range(N):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(REQ)
        conns.append(s)
    old = {read_response(s)[0] for s in conns}
    for round in range(3):
        out = ctl("upgrade", "--json")
        report = json.loads(out.stdout)
        new = report["new_pid"]
        for s in conns: s.sendall(REQ)
        answers = [read_response(s) for s in conns]
        moved = sum(1 for pid, closes in answers if pid == new and not closes)
        print(json.dumps({"connections": N, "committed": report["committed"], "moved": moved,
                          "drain_ms": report["phases_ms"].get("drain"), "total_ms": report["total_ms"]}))
finally:
    ctl("stop")
    sup.wait(timeout=30)
