"""A libzmq (pyzmq) client speaking Courier's zmq:// protocol from docs/PROTOCOL.md alone.

Usage: python interop_pyzmq.py tcp://127.0.0.1:PORT
Connects a DEALER, performs the handshake, sends a message with a 1 MiB frame, expects the
echo intact, closes, and prints "ok".
"""
import os
import struct
import sys

import zmq

url = sys.argv[1]
name = b"pyzmq-interop"
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.IDENTITY, b"pyzmq-" + str(os.getpid()).encode())
sock.setsockopt(zmq.RCVTIMEO, 10_000)
sock.setsockopt(zmq.LINGER, 1000)
sock.connect(url)

# Hello: magic, version, body_len, then the body (PROTOCOL.md section 2.1).
body = struct.pack("<QIIQQH", 1 << 32, 65536, 0, 64 << 20, 64 << 30, len(name)) + name
hello = b"CRWR" + struct.pack("<HH", 1, len(body)) + body
window = struct.pack("<I", 16)  # how many unconsumed messages our inbox holds
sock.send_multipart([b"H", hello, window])

kind, theirs, their_window = sock.recv_multipart()
assert struct.unpack("<I", their_window)[0] > 0
assert kind == b"H", kind
assert theirs[:4] == b"CRWR", theirs[:4]
version, body_len = struct.unpack("<HH", theirs[4:8])
assert version == 1 and body_len == len(theirs) - 8, (version, body_len)

frame = os.urandom(1 << 20)
sock.send_multipart([b"M", b"from python", frame])

while True:
    parts = sock.recv_multipart()
    if parts[0] == b"M":
        break
    assert parts[0] in (b"P", b"C"), parts[0]  # heartbeats and credit may come first
assert parts[1] == b"from python", parts[1]
assert len(parts) == 3 and parts[2] == frame, "echoed frame differs"

sock.send_multipart([b"X", b"done"])
sock.close()
ctx.term()
print("ok")
