#!/usr/bin/env python3
"""A Courier worker written from docs/PROTOCOL.md alone, like stranger_client.py (whose
framing it reuses): Python's standard library and `msgpack`, none of Courier's code.

    stranger_worker.py SCHEDULER_URL NAME

It registers with the scheduler (7.2 Hello::Worker), serves its data listener (7.2
DataRequest: Get, Store, Stats), and runs `inc` and `add` (7.5) on the tasks the scheduler
sends it (Compute), fetching dependencies it lacks from their holders with Get (7.3
Fetching) and answering Finished, Erred or MissingData with the run's id. It answers Steal,
Replicate and ExpectScatter, drops what Release names, and sends Heartbeat every second. It
prints "worker serving data at URL" once registered and exits when the scheduler closes the
comm or sends Shutdown.
"""

import socket
import sys
import threading
import time

import msgpack

from stranger_client import connect, hello, read_hello, recv_batch, send_batch, value_payload, variant

FUNCTIONS = {
    "inc": lambda x: x + 1,
    "add": lambda *xs: sum(xs),
}


class Store:
    """Results held here: key -> (Payload, frames)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data = {}
        self.tickets = {}  # scattered keys announced by ExpectScatter: key -> ticket

    def get(self, key):
        with self.lock:
            return self.data.get(key)

    def put(self, key, value):
        with self.lock:
            self.data[key] = value

    def drop(self, key):
        with self.lock:
            self.data.pop(key, None)


def payload_value(payload):
    """Section 5: the value of a frameless Payload."""
    assert payload["f"] == [], "this worker's functions take scalars only"
    return msgpack.unpackb(payload["h"], raw=False)


def fetch(key, holders, own_address):
    """7.3 Fetching: Get from each listed holder in turn; None when every one failed."""
    for holder in holders:
        if holder == own_address:
            continue
        try:
            sock, _ = connect(holder, "stranger-worker")
            sock.settimeout(60)
            send_batch(sock, [{"Get": {"id": 1, "keys": [key]}}])
            batch, frames = recv_batch(sock)
            sock.close()
            name, fields = variant(batch[0])
            if name == "Data" and fields["id"] == 1 and fields["values"][0] is not None:
                payload = fields["values"][0]
                return payload, [b"".join(frames[i] for i in shards) for shards in payload["f"]]
        except (OSError, EOFError, AssertionError):
            continue
    return None


def serve_data(conn, store):
    """One connection to the data listener: our hello at once, theirs checked (section 2),
    then DataRequest batches answered by id (7.2)."""
    try:
        conn.sendall(hello("stranger-worker"))
        read_hello(conn)
        while True:
            got = recv_batch(conn)
            if got is None:
                return
            batch, frames = got
            replies, out_frames = [], []
            for message in batch:
                name, fields = variant(message)
                if name == "Get":
                    values = []
                    for key in fields["keys"]:
                        held = store.get(key)
                        if held is None:
                            values.append(None)
                            continue
                        payload, value_frames = held
                        shards = []
                        for f in value_frames:
                            shards.append([len(out_frames)])
                            out_frames.append(f)
                        values.append({"h": payload["h"], "f": shards})
                    replies.append({"Data": {"id": fields["id"], "values": values}})
                elif name == "Store":
                    key, ticket, value = fields["key"], fields["ticket"], fields["value"]
                    with store.lock:
                        ok = store.tickets.get(key) == ticket and key not in store.data
                        if ok:
                            del store.tickets[key]
                            value_frames = [b"".join(frames[i] for i in shards) for shards in value["f"]]
                            store.data[key] = (value, value_frames)
                    if ok:
                        replies.append({"Stored": {"id": fields["id"]}})
                        store.report([{"Stored": {"key": key, "nbytes": len(value["h"]) + sum(map(len, value_frames))}}])
                    else:
                        replies.append({"Refused": {"id": fields["id"], "reason": "no such ticket"}})
                elif name == "Stats":
                    replies.append({"Stats": {"id": fields["id"], "fetched": []}})
                else:
                    return  # not a DataRequest: close (section 1)
            send_batch(conn, replies, out_frames)
    except (OSError, EOFError, AssertionError):
        return
    finally:
        conn.close()


def main():
    url, name = sys.argv[1], sys.argv[2]
    store = Store()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"

    def accept_loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve_data, args=(conn, store), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()

    sched, _ = connect(url, name)
    send_lock = threading.Lock()

    def send(messages):
        with send_lock:
            send_batch(sched, messages)

    store.report = send
    send([{"Worker": {"name": name, "address": address, "nthreads": 1}}])
    print(f"worker serving data at {address}", flush=True)

    def heartbeat():
        while True:
            time.sleep(1)
            try:
                send(["Heartbeat"])
            except OSError:
                return

    threading.Thread(target=heartbeat, daemon=True).start()

    def compute(fields):
        key, run, func, args = fields["key"], fields["run"], fields["func"], fields["args"]
        who_has = {k: holders for k, holders in fields["who_has"]}
        started = time.monotonic()
        values = []
        for arg in args:
            kind, inner = variant(arg)
            if kind == "Value":
                values.append(payload_value(inner))
                continue
            held = store.get(inner)
            if held is None:
                tried = [h for h in who_has.get(inner, []) if h != address]
                held = fetch(inner, tried, address)
                if held is None:
                    return {"MissingData": {"key": key, "run": run, "dep": inner, "tried": tried}}
            values.append(payload_value(held[0]))
        f = FUNCTIONS.get(func)
        if f is None:
            return {"Erred": {"key": key, "run": run, "message": f"unknown function {func!r} on this worker"}}
        try:
            result = value_payload(f(*values))
        except Exception as e:  # the function's own error fails the run
            return {"Erred": {"key": key, "run": run, "message": str(e)}}
        store.put(key, (result, []))
        seconds = time.monotonic() - started
        return {"Finished": {"key": key, "run": run, "nbytes": len(result["h"]), "seconds": seconds}}

    while True:
        got = recv_batch(sched)
        if got is None:
            return
        replies = []
        for message in got[0]:
            kind, fields = variant(message)
            if kind == "Compute":
                replies.append(compute(fields))
            elif kind == "Release":
                for key in fields["keys"]:
                    store.drop(key)
            elif kind == "Steal":
                # Every run here has finished or is running by now: never given up.
                replies.append({"StealReply": {"key": fields["key"], "run": fields["run"], "stolen": False}})
            elif kind == "Replicate":
                held = fetch(fields["key"], fields["from"], address)
                if held is not None:
                    store.put(fields["key"], held)
                replies.append({"Replicated": {"key": fields["key"], "ok": held is not None}})
            elif kind == "ExpectScatter":
                with store.lock:
                    store.tickets.update({k: t for k, t in fields["keys"]})
                replies.append({"ScatterReady": {"id": fields["id"]}})
            elif kind == "Shutdown":
                return
            # PeerGone and LocalPeers need nothing here: fetches try every holder anyway.
        if replies:
            send(replies)


if __name__ == "__main__":
    main()
