#!/usr/bin/env python3
"""A daemon that does not link handoff: a few lines of Python serving HTTP on
the socket systemd-style socket activation hands it (fd 3), announcing
readiness with READY=1 on NOTIFY_SOCKET, and finishing its requests on
SIGTERM (or SIGQUIT) before it exits. A fixture of `handoffctl run
--protocol systemd` (supervisor/tests/cli/foreign.rs).

Probation, the nginx way (`--probation-signal WINCH --resume-signal HUP`):
SIGWINCH stops accepting (requests in flight finish) and the process stays;
SIGHUP accepts again (and wins over a SIGWINCH pending with it). Each
SIGHUP or switch is answered on stderr once it is done ("httpd PID:
quiesced" / "httpd PID: accepting"), so tests can wait for it.

Alone (`--listen HOST:PORT`), it binds the address itself instead: the
benchmark's naive-restart control.

GET /      -> 200 "pid=<pid>"
GET /slow  -> 200 after 300 ms (a request in flight during a stop)

The fd store (`--fd-store NAME`, systemd's FDSTORE=1): a counter in a
memfd, taken back at start from LISTEN_FDS/LISTEN_FDNAMES by NAME and
incremented (0 in a fresh memfd when the store has none), then stored
again with FDSTORE=1 and FDNAME=NAME (socket.send_fds to NOTIFY_SOCKET;
the store keeps one copy), before READY=1; announced as "httpd PID:
counter N". With it:
GET /counter                -> "counter=N"
GET /store?name=X           -> stores a new memfd under X; `kind=socket`:
                               one end of a socketpair, the other kept
                               here; `poll=0` adds FDPOLL=0; `nostore=1`
                               sends the fd without FDSTORE=1; `sender=child`
                               has another process send it
GET /hangup?name=X          -> closes the ends kept for X (their stored
                               peers hang up)
GET /remove?name=X          -> FDSTOREREMOVE=1 with FDNAME=X (no FDNAME=
                               without `name`)

Faults for tests: `--fault-file PATH` names a file read at start; its
content picks the behaviour of this generation: empty (normal),
`ready-from-child` (a child process sends READY=1, the daemon never does),
`no-ready` (never sends READY=1), `hold-ready` (sends READY=1 once the
fault file no longer says `hold-ready`; polled every 10 ms), `crash-after-ready` (exits 3 right after
READY=1), `fork-worker` (forks a worker that holds the listener, ignores
every signal it can and never exits; announced as "httpd PID: worker
WPID"), `ignore-resume` (a SIGHUP after a SIGWINCH is announced as
"httpd PID: ignoring the resume signal" and nothing else happens: the
process stays alive and never accepts again).
"""
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse


def listener():
    if "--listen" in sys.argv:
        # Alone, without a supervisor (the benchmark's naive-restart
        # control): it binds the address itself and closes it on exit.
        host, port = sys.argv[sys.argv.index("--listen") + 1].rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
        sock.setblocking(False)
        return sock
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("LISTEN_PID is not our pid: %r" % os.environ.get("LISTEN_PID"))
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("no LISTEN_FDS")
    sock = socket.socket(fileno=3)
    # socketserver polls, then accepts; the listener is shared with another
    # generation, which may take the connection first: a non-blocking accept
    # then fails with EAGAIN (socketserver ignores it) instead of blocking.
    sock.setblocking(False)
    return sock


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.sendto(message.encode(), path)


def say(what):
    sys.stderr.write("httpd %d: %s\n" % (os.getpid(), what))
    sys.stderr.flush()


def send_fds(message, fds):
    """One notification with `fds` attached (SCM_RIGHTS). Connected first:
    socket.send_fds ignores its address argument before Python 3.12."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
        out.connect(os.environ["NOTIFY_SOCKET"])
        socket.send_fds(out, [message.encode()], fds)


# Sent by another process (`sender=child`): its own memfd, FDSTORE=1.
CHILD_SENDER = """
import os, socket, sys
fd = os.memfd_create("from-child")
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
    out.connect(os.environ["NOTIFY_SOCKET"])
    socket.send_fds(out, [("FDSTORE=1\\nFDNAME=" + sys.argv[1]).encode()], [fd])
"""


class FdStore:
    """The counter in the fd store, and the requests that store more."""

    def __init__(self, name):
        self.name = name
        self.kept = {}  # name -> the ends kept of stored socketpairs
        fd = self.taken_back()
        if fd is None:
            fd = os.memfd_create(name)
            self.counter = 0
        else:
            self.counter = int(os.pread(fd, 32, 0).decode() or "0") + 1
        os.pwrite(fd, b"%020d" % self.counter, 0)
        send_fds("FDSTORE=1\nFDNAME=%s" % name, [fd])
        say("counter %d" % self.counter)

    def taken_back(self):
        count = int(os.environ.get("LISTEN_FDS", "0"))
        names = os.environ.get("LISTEN_FDNAMES", "").split(":")
        for index, name in enumerate(names[:count]):
            if name == self.name:
                return 3 + index
        return None

    def store(self, query):
        name = query.get("name", "stored")
        lines = [] if query.get("nostore") == "1" else ["FDSTORE=1"]
        lines.append("FDNAME=%s" % name)
        if query.get("poll") == "0":
            lines.append("FDPOLL=0")
        if query.get("sender") == "child":
            subprocess.run([sys.executable, "-c", CHILD_SENDER, name], check=True)
            return "sent by a child"
        if query.get("kind") == "socket":
            stored, kept = socket.socketpair()
            self.kept.setdefault(name, []).append(kept)
            send_fds("\n".join(lines), [stored.fileno()])
            stored.close()
        else:
            fd = os.memfd_create(name)
            send_fds("\n".join(lines), [fd])
            os.close(fd)
        return "sent %s" % name

    def hangup(self, query):
        for end in self.kept.pop(query.get("name", ""), []):
            end.close()
        return "hung up"

    def remove(self, query):
        lines = ["FDSTOREREMOVE=1"]
        if "name" in query:
            lines.append("FDNAME=%s" % query["name"])
        send_fds("\n".join(lines), [])
        return "removed"


STORE = None


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.3)
        path, _, query = self.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        actions = {}
        if STORE is not None:
            actions = {
                "/counter": lambda q: "counter=%d" % STORE.counter,
                "/store": STORE.store,
                "/hangup": STORE.hangup,
                "/remove": STORE.remove,
            }
        if path in actions:
            body = (actions[path](query) + "\n").encode()
        else:
            body = ("pid=%d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins requests in flight
    block_on_close = True


STOP_SIGNALS = {signal.SIGTERM, signal.SIGQUIT}
# SIGWINCH: stop accepting, finish requests in flight, stay alive (the
# quiesce of a probation); SIGHUP: accept again.
SIGNALS = STOP_SIGNALS | {signal.SIGWINCH, signal.SIGHUP}


USAGE = """\
usage: httpd.py [--listen HOST:PORT] [--fault-file PATH] [--fd-store NAME]
A foreign daemon: HTTP on the socket that socket activation passes on fd 3
(handoffctl run --protocol systemd), READY=1 on NOTIFY_SOCKET; SIGTERM or
SIGQUIT finish the requests and exit, SIGWINCH quiesces, SIGHUP resumes.
  --listen HOST:PORT   bind this address instead (run alone)
  --fault-file PATH    misbehave as the file says (see the module's docstring)
  --fd-store NAME      keep a start counter in a memfd in the fd store (FDSTORE=1)
"""


def main():
    global STORE
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        sys.stdout.write(USAGE)
        return
    # Every signal is taken with sigwait on the main thread, never by a
    # handler: a Python handler runs in the main thread between any two
    # bytecodes, and one that starts a thread can deadlock when it lands
    # inside the main thread's own Thread.start() (threading's limbo lock is
    # not reentrant); under load the server starts a thread per connection.
    # Blocked before any thread exists, so every thread inherits the block.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener()
    if "--fd-store" in sys.argv:
        STORE = FdStore(sys.argv[sys.argv.index("--fd-store") + 1])
    fault = ""
    if "--fault-file" in sys.argv:
        path = sys.argv[sys.argv.index("--fault-file") + 1]
        try:
            with open(path) as f:
                fault = f.read().strip()
        except FileNotFoundError:
            pass
    if fault == "ready-from-child":
        if os.fork() == 0:
            notify("READY=1")
            os._exit(0)
    elif fault == "crash-after-ready":
        notify("READY=1")
        os._exit(3)
    elif fault == "hold-ready":
        while True:
            try:
                with open(path) as f:
                    if f.read().strip() != "hold-ready":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)
        notify("READY=1\nSTATUS=serving")
    elif fault != "no-ready":
        notify("READY=1\nSTATUS=serving")
    if fault == "fork-worker":
        # Before any thread starts. The worker inherits the blocked
        # signals (SIGTERM, SIGQUIT...) and never waits for them: only
        # SIGKILL ends it.
        worker = os.fork()
        if worker == 0:
            while True:
                time.sleep(3600)
        say("worker %d" % worker)

    def serve():
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        thread.start()
        say("accepting")
        return thread

    def quiesce(thread):
        server.shutdown()  # returns once serve_forever has returned
        thread.join()

    serving = serve()
    while True:
        # Signals that are pending together are taken together: when a
        # quiesce and a resume both wait (the new generation died right
        # after the commit, before this process ran), sigwait hands out the
        # lower number first, SIGHUP, and taking them one by one would
        # resume first and quiesce last, the wrong way round. A resume always
        # follows a quiesce, so among signals taken together it wins.
        received = {signal.sigwait(SIGNALS)}
        while True:
            more = signal.sigtimedwait(SIGNALS, 0)
            if more is None:
                break
            received.add(more.si_signo)
        if received & STOP_SIGNALS:
            break
        if signal.SIGHUP in received:
            if serving is not None:
                say("accepting")
            elif fault == "ignore-resume":
                say("ignoring the resume signal")
            else:
                serving = serve()
        elif signal.SIGWINCH in received and serving is not None:
            # Requests in flight finish on their own threads.
            quiesce(serving)
            serving = None
            say("quiesced")
    if serving is not None:
        quiesce(serving)
    server.server_close()  # joins the requests in flight


if __name__ == "__main__":
    main()
