#!/usr/bin/env python3
"""A tablet in a few lines, for scripts/readme-smoke: signs in over STOMP 1.2
on WebSocket with a token, subscribes to its store, says "subscribed", and
prints the first popup that comes (or fails after a timeout). Standard
library only: readme-smoke runs before anything else is installed.

Usage: stomp_popup.py <host> <port> <token> <store> [timeout-seconds]
"""
import base64
import json
import os
import socket
import struct
import sys


def main():
    host, port, token, store = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 30
    s = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            sys.exit("the WebSocket upgrade got no answer")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        sys.exit("the WebSocket upgrade was refused: " + head.split(b"\r\n", 1)[0].decode())

    def send(text):
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        )
        s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                sys.exit("the server closed the connection")
            data += chunk
        return data

    def frame():
        while True:
            b0, b1 = exactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", exactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", exactly(8))[0]
            payload = exactly(n)
            if b0 & 0x0F == 0x8:
                sys.exit("the server closed the connection")
            text = payload.decode()
            if text.strip("\n") == "":
                continue  # a heart-beat
            command, _, rest = text.partition("\n")
            headers, _, body = rest.partition("\n\n")
            return command, headers, body.rstrip("\0")

    send(f"CONNECT\naccept-version:1.2\nhost:{host}\npasscode:{token}\nheart-beat:0,0\n\n\0")
    command, headers, body = frame()
    if command != "CONNECTED":
        sys.exit(f"CONNECT answered {command}: {headers} {body}")
    send(f"SUBSCRIBE\nid:0\ndestination:/topic/call-store/{store}\nack:auto\nreceipt:r\n\n\0")
    command, headers, body = frame()
    if command != "RECEIPT":
        sys.exit(f"SUBSCRIBE answered {command}: {headers} {body}")
    print("subscribed", flush=True)
    while True:
        command, headers, body = frame()
        if command == "MESSAGE":
            event = json.loads(body)
            if event.get("type") == "call":
                print("popup: " + json.dumps(event, ensure_ascii=False), flush=True)
                return


if __name__ == "__main__":
    try:
        main()
    except socket.timeout:
        sys.exit("no popup came in time")
