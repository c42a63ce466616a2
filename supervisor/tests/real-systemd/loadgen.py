#!/usr/bin/env python3
"""Open-loop HTTP load against kvd, for supervisor/tests/cli/real_systemd.rs.

    loadgen.py --port 8080 [--host 127.0.0.1] [--rate 150] [--timeout 15]

Requests arrive at a fixed rate whatever the answers (open loop), one TCP
connection each. Every other request is a PUT of a new key with a unique
value; the rest GET a key whose write was acknowledged and expect its value.
A request's latency runs from its intended send time, so a stall shows up in
every request scheduled behind it (no coordinated omission).

Commands on stdin, one a line; each is answered on stdout once done:

    mark NAME  later arrivals belong to phase NAME   -> "marked NAME"
    pause      no more arrivals, in-flight finished  -> "paused"
    resume     arrivals again from now               -> "resumed"
    finish     pause, then read back every acknowledged write and print
               "report {JSON}", then exit

The report counts, per phase, the requests, the successes, the failures by
class (refused, reset, eof, timeout, truncated, status_NNN, lost, ...) with a
few samples, and the latency percentiles of the successes; then the
read-back: acknowledged writes, found intact, lost (404 or another value),
unreadable (transport errors after retries).

Standard library only.
"""

import argparse
import asyncio
import errno
import json
import os
import random
import sys
import threading
import time

SAMPLES = 5


class Phase:
    def __init__(self, name, started):
        self.name = name
        self.started = started
        self.sent = 0
        self.ok = 0
        self.failures = {}
        self.samples = []
        self.latencies = []

    def record(self, intended, outcome, detail):
        latency = time.monotonic() - intended
        if outcome == "ok":
            self.ok += 1
            self.latencies.append(latency)
            return
        self.failures[outcome] = self.failures.get(outcome, 0) + 1
        if len(self.samples) < SAMPLES:
            self.samples.append(
                {
                    "class": outcome,
                    "detail": detail,
                    "at_s": round(intended - self.started, 3),
                    "latency_ms": round(latency * 1000, 1),
                }
            )

    def report(self):
        latencies = sorted(self.latencies)

        def pct(p):
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": sum(self.failures.values()),
            "failures": self.failures,
            "samples": self.samples,
            "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        }


def classify(error):
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, OSError) and error.errno is not None:
        return "oserror_" + errno.errorcode.get(error.errno, str(error.errno))
    return type(error).__name__


async def http(host, port, method, path, body, timeout):
    """One request on its own connection: (status, body bytes)."""

    async def exchange():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        return data

    data = await asyncio.wait_for(exchange(), timeout)
    if not data:
        raise EOFError("closed without a response")
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and len(payload) < int(value):
            raise TruncatedError(f"{len(payload)} of {int(value)} body bytes")
    return status, payload


class TruncatedError(Exception):
    pass


class Load:
    def __init__(self, args):
        self.args = args
        self.token = os.urandom(4).hex()
        self.phase = Phase("initial", time.monotonic())
        self.phases = [self.phase]
        self.acked = {}
        self.acked_keys = []
        self.next_key = 0
        self.in_flight = set()
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()

    async def one(self, intended, phase, turn):
        if turn % 2 == 0 or not self.acked_keys:
            key = f"w{self.next_key}"
            self.next_key += 1
            value = f"{key}-{self.token}-{random.getrandbits(64):016x}".encode()
            method, body = "PUT", value
        else:
            key = random.choice(self.acked_keys)
            method, body, value = "GET", b"", self.acked[key]
        try:
            status, payload = await http(
                self.args.host, self.args.port, method, f"/kv/{key}", body, self.args.timeout
            )
        except Exception as error:  # every failure is counted, none ends the run
            if isinstance(error, TruncatedError):
                phase.record(intended, "truncated", f"{method} {key}: {error}")
            else:
                phase.record(intended, classify(error), f"{method} {key}: {error!r}")
            return
        if method == "PUT" and status == 200:
            self.acked[key] = value
            self.acked_keys.append(key)
            phase.record(intended, "ok", None)
        elif method == "GET" and status == 200 and payload == value:
            phase.record(intended, "ok", None)
        elif method == "GET" and status in (200, 404):
            phase.record(intended, "lost", f"GET {key}: {status} {payload[:60]!r}")
        else:
            phase.record(intended, f"status_{status}", f"{method} {key}: {payload[:80]!r}")

    async def arrivals(self):
        loop = asyncio.get_running_loop()
        turn = 0
        while True:
            await self.resumed.wait()
            base, index = time.monotonic(), 0
            while not self.paused:
                intended = base + index / self.args.rate
                delay = intended - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.paused:
                    break
                self.phase.sent += 1
                task = loop.create_task(self.one(intended, self.phase, turn))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
                index += 1
                turn += 1

    async def pause(self):
        self.paused = True
        self.resumed.clear()
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight), return_exceptions=True)

    def resume(self):
        self.paused = False
        self.resumed.set()

    async def read_back(self):
        result = {"acknowledged": len(self.acked), "intact": 0, "lost": 0, "unreadable": 0, "samples": []}
        gate = asyncio.Semaphore(16)

        async def check(key, value):
            async with gate:
                for attempt in range(3):
                    try:
                        status, payload = await http(
                            self.args.host, self.args.port, "GET", f"/kv/{key}", b"", self.args.timeout
                        )
                    except Exception as error:
                        if attempt == 2:
                            result["unreadable"] += 1
                            if len(result["samples"]) < SAMPLES:
                                result["samples"].append(f"GET {key}: {error!r}")
                        continue
                    if status == 200 and payload == value:
                        result["intact"] += 1
                    else:
                        result["lost"] += 1
                        if len(result["samples"]) < SAMPLES:
                            result["samples"].append(f"GET {key}: {status} {payload[:60]!r}")
                    return

        await asyncio.gather(*(check(key, value) for key, value in self.acked.items()))
        return result


def answer(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--timeout", type=float, default=15.0)
    load = Load(parser.parse_args())

    loop = asyncio.get_running_loop()
    commands = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "finish")

    threading.Thread(target=read_stdin, daemon=True).start()
    arrivals = loop.create_task(load.arrivals())
    while True:
        command = await commands.get()
        verb, _, argument = command.partition(" ")
        if verb == "mark":
            load.phase = Phase(argument, time.monotonic())
            load.phases.append(load.phase)
            answer(f"marked {argument}")
        elif verb == "pause":
            await load.pause()
            answer("paused")
        elif verb == "resume":
            load.resume()
            answer("resumed")
        elif verb == "finish":
            await load.pause()
            arrivals.cancel()
            report = {
                "rate": load.args.rate,
                "phases": [dict(name=phase.name, **phase.report()) for phase in load.phases],
                "read_back": await load.read_back(),
            }
            answer("report " + json.dumps(report))
            return
        else:
            answer(f"unknown command {command!r}")


if __name__ == "__main__":
    asyncio.run(main())
