#!/usr/bin/env python3
"""A Courier client written from docs/PROTOCOL.md alone: the proof that a stranger can
implement the wire protocol from the document. It uses only the standard library and the
`msgpack` package, and none of Courier's code; every step names the section it follows.

    stranger_client.py SCHEDULER_URL WORKERS

Against a scheduler at SCHEDULER_URL (tcp://host:port) with WORKERS workers, it:

- refuses nothing and is refused once: a hello of another version gets the peer's hello and
  then the end of the stream (sections 1, 2.2);
- registers as a client and reads the worker list (7.2 Hello, Workers);
- submits one batch of tasks (7.2 Submit, TaskSpec, ArgSpec), one of them with an n-d array
  travelling as a frame (3, 5), with dependencies, and with failures of each kind;
- waits for each key's Done or Erred, fetches every result from a worker's data listener
  with Get (7.2 DataRequest, DataReply) and decodes it (5);
- releases its keys (7.2 Release) and closes.

Prints "ok" and exits 0 when every check holds; any failed check raises.
"""

import socket
import struct
import sys

import msgpack

# Section 2.1: the hello.
MAGIC = b"CRWR"
VERSION = 1
# What this side accepts (section 2.3: each side enforces its own limits). No compression
# bits: the peer must send raw frames only.
MAX_FRAME_SIZE = 1 << 30
MAX_FRAMES = 1024
COMPRESSIONS = 0
MAX_HEADER_SIZE = 16 << 20
MAX_MESSAGE_SIZE = 2 << 30


def read_exact(sock, n):
    """n bytes, or None at a clean end of stream before the first of them."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise EOFError(f"end of stream after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def hello(name, version=VERSION):
    """Section 2.1: magic, version, body_len, then the body (34 bytes + name + credential
    length + credential + flags)."""
    name = name.encode()
    body = struct.pack("<QIIQQH", MAX_FRAME_SIZE, MAX_FRAMES, COMPRESSIONS, MAX_HEADER_SIZE, MAX_MESSAGE_SIZE, len(name))
    body += name + struct.pack("<H", 0) + struct.pack("<I", 0)  # no credential, flags 0
    return MAGIC + struct.pack("<HH", version, len(body)) + body


def read_hello(sock):
    """Section 2.2: check the peer's hello; returns its limits and name."""
    head = read_exact(sock, 8)
    assert head is not None, "the peer closed before its hello"
    magic, version, body_len = head[:4], *struct.unpack("<HH", head[4:])
    assert magic == MAGIC, f"bad magic {magic!r}"
    assert 34 <= body_len <= 4096, f"body_len {body_len}"
    body = read_exact(sock, body_len)
    max_frame, max_frames, compressions, max_header, max_message, name_len = struct.unpack("<QIIQQH", body[:34])
    assert name_len <= 1024 and 34 + name_len <= body_len
    name = body[34 : 34 + name_len].decode()
    flags = 0
    rest = body[34 + name_len :]
    if len(rest) >= 2:
        (cred_len,) = struct.unpack("<H", rest[:2])
        rest = rest[2 + cred_len :]
        if len(rest) >= 4:
            (flags,) = struct.unpack("<I", rest[:4])
    assert flags & 1 == 0, "this listener checks credentials (2.4); the test cluster has none"
    limits = dict(max_frame=max_frame, max_frames=max_frames, max_header=max_header, max_message=max_message)
    return version, limits, name


def connect(url, name):
    """Sections 1 and 2: open the stream, send our hello at once, read and check theirs."""
    assert url.startswith("tcp://"), url
    host, port = url[len("tcp://") :].rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(hello(name))
    version, limits, _ = read_hello(sock)
    assert version == VERSION, f"peer speaks version {version}"
    return sock, limits


def send_message(sock, header, frames=()):
    """Section 3: head (16 bytes), frame table (16 bytes per frame), header, frames."""
    out = [struct.pack("<IIQ", len(frames), 0, len(header))]
    out += [struct.pack("<QB7x", len(f), 0) for f in frames]  # codec 0: raw
    out += [header, *frames]
    sock.sendall(b"".join(out))


def recv_message(sock):
    """Section 3 (3.4's checks on what this side announced); None at end of stream."""
    head = read_exact(sock, 16)
    if head is None:
        return None
    nframes, flags, header_len = struct.unpack("<IIQ", head)
    assert flags == 0 and nframes <= MAX_FRAMES and header_len <= MAX_HEADER_SIZE
    table = [struct.unpack("<QB7s", read_exact(sock, 16)) for _ in range(nframes)]
    for wire_len, codec, reserved in table:
        assert codec == 0, "a compressed frame, and this side announced no codec"
        assert reserved == bytes(7) and wire_len <= MAX_FRAME_SIZE
    header = read_exact(sock, header_len) if header_len else b""
    frames = [read_exact(sock, n) if n else b"" for n, _, _ in table]
    return header, frames


def send_batch(sock, messages, frames=()):
    """Section 7.1: a header is a MessagePack array of messages."""
    send_message(sock, msgpack.packb(messages, use_bin_type=True), frames)


def recv_batch(sock):
    """A batch as (messages, frames); None at end of stream."""
    got = recv_message(sock)
    if got is None:
        return None
    header, frames = got
    batch = msgpack.unpackb(header, raw=False)
    assert isinstance(batch, list), f"a batch that is not an array: {batch!r}"
    return batch, frames


def variant(message):
    """Section 7.1's external tagging: "Name" or {"Name": fields}."""
    if isinstance(message, str):
        return message, None
    assert isinstance(message, dict) and len(message) == 1, message
    return next(iter(message.items()))


def value_payload(value):
    """Section 5: a Payload of a value without frames: its own MessagePack, no shards."""
    return {"h": msgpack.packb(value, use_bin_type=True), "f": []}


def array_payload(doubles, frame_index):
    """Section 5: an f64 vector as an Array inside a Payload. The value's own header names its
    frame 0; the Payload maps that frame to frame `frame_index` of the Courier message."""
    header = {"dtype": "<f8", "shape": [len(doubles)], "strides": [1], "data": [0]}
    return {"h": msgpack.packb(header, use_bin_type=True), "f": [[frame_index]]}, struct.pack(
        f"<{len(doubles)}d", *doubles
    )


def decode_payload(payload, frames):
    """Section 5: a Payload's value (frames joined from their shards, unused here for
    scalars)."""
    assert set(payload) == {"h", "f"}, payload
    value_frames = [b"".join(frames[i] for i in shards) for shards in payload["f"]]
    return msgpack.unpackb(payload["h"], raw=False), value_frames


def refused_version(url):
    """Sections 1 and 2.2: both sides send their hello first, so a peer of another version
    still gets the listener's hello, and then the end of the stream without a reason."""
    host, port = url[len("tcp://") :].rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)))
    sock.sendall(hello("stranger-from-the-future", version=VERSION + 1))
    version, _, _ = read_hello(sock)
    assert version == VERSION
    sock.settimeout(30)
    assert sock.recv(1) == b"", "the listener must close a connection of another version"
    sock.close()


def main():
    url, workers = sys.argv[1], int(sys.argv[2])
    refused_version(url)

    sched, _ = connect(url, "stranger")
    sched.settimeout(60)
    # 7.2 Hello: alone in the first batch; answered with Workers listing every worker.
    send_batch(sched, [{"Client": {"name": "stranger"}}])
    batch, _ = recv_batch(sched)
    name, fields = variant(batch[0])
    assert name == "Workers", batch
    addresses = list(fields["added"])
    assert len(addresses) == workers, f"{addresses} for {workers} workers"

    # 7.2 Submit: TaskSpec maps; ArgSpec {"Value": Payload} or {"Key": key}.
    def task(key, func, *args):
        return {"key": key, "func": func, "args": list(args), "retries": 0, "wanted": True}

    vector = [1.5, 2.5, 3.0, 4.0]
    array, array_frame = array_payload(vector, 0)
    tasks = [
        task("stranger-a", "inc", {"Value": value_payload(41)}),
        task("stranger-b", "inc", {"Key": "stranger-a"}),
        task("stranger-c", "add", {"Key": "stranger-a"}, {"Key": "stranger-b"}, {"Value": value_payload(100)}),
        task("stranger-sum", "array_sum", {"Value": array}),
        task("stranger-fail", "fail", {"Value": value_payload("boom")}),
        task("stranger-after-fail", "inc", {"Key": "stranger-fail"}),
        task("stranger-unknown-dep", "inc", {"Key": "stranger-never-submitted"}),
    ]
    send_batch(sched, [{"Submit": {"tasks": tasks}}], [array_frame])

    # Each wanted key gets Done (holders) or Erred (failure).
    done, erred = {}, {}
    while len(done) + len(erred) < len(tasks):
        got = recv_batch(sched)
        assert got is not None, "the scheduler closed the comm"
        for message in got[0]:
            name, fields = variant(message)
            if name == "Done":
                done[fields["key"]] = fields["holders"]
            elif name == "Erred":
                erred[fields["key"]] = fields["failure"]
            else:
                assert name in ("Workers", "Lost"), message

    assert set(done) == {"stranger-a", "stranger-b", "stranger-c", "stranger-sum"}, (done, erred)
    assert variant(erred["stranger-fail"]) == ("Error", {"message": "boom"}), erred
    name, fields = variant(erred["stranger-after-fail"])
    assert name == "Dependency" and fields["root"] == "stranger-fail", erred
    assert variant(fields["cause"]) == ("Error", {"message": "boom"}), erred
    assert variant(erred["stranger-unknown-dep"])[0] == "Rejected", erred

    # 7.3 Fetching: results never pass through the scheduler; ask a holder with Get on its
    # data listener (no Hello there). Replies are matched by id.
    results = {}
    for request_id, (key, holders) in enumerate(sorted(done.items()), start=1):
        assert holders and all(h in addresses for h in holders), (key, holders, addresses)
        data, _ = connect(holders[0], "stranger")
        data.settimeout(60)
        send_batch(data, [{"Get": {"id": request_id, "keys": [key]}}])
        batch, frames = recv_batch(data)
        name, fields = variant(batch[0])
        assert name == "Data" and fields["id"] == request_id, batch
        (payload,) = fields["values"]
        assert payload is not None, f"{holders[0]} does not hold {key}"
        results[key], _ = decode_payload(payload, frames)
        data.close()
    assert results == {"stranger-a": 42, "stranger-b": 43, "stranger-c": 185, "stranger-sum": sum(vector)}, results

    # 7.2 Release: the client holds no more futures for its keys. Then close (section 1).
    send_batch(sched, [{"Release": {"keys": [t["key"] for t in tasks]}}])
    sched.shutdown(socket.SHUT_WR)
    while recv_message(sched) is not None:
        pass
    sched.close()
    print("ok")


if __name__ == "__main__":
    main()
