"""Raw HTTP/2 on a socket, for the tests that send what no h2 library would: frames built
by hand, pushed without reading, read back without a state machine."""

import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream_id, payload=b""):
    """One HTTP/2 frame, as bytes."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream_id) + payload


def send_for(sock, data, seconds):
    """Push as much of ``data`` as the server takes within ``seconds``; never read."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    view = memoryview(data)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
    return sent


def read_frames(sock, until_type, timeout=10.0):
    """Frames (type, flags, stream, payload) until one of ``until_type`` or EOF."""
    sock.settimeout(timeout)
    buf, frames = b"", []
    while True:
        while len(buf) >= 9:
            length = struct.unpack(">I", b"\0" + buf[:3])[0]
            if len(buf) < 9 + length:
                break
            frame = (buf[3], buf[4], struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF,
                     buf[9:9 + length])
            buf = buf[9 + length:]
            frames.append(frame)
            if frame[0] == until_type:
                return frames
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return frames
        buf += chunk
