"""A camera stand-in: MJPEG over HTTP on 127.0.0.1 (``multipart/x-mixed-replace``).

``python mjpeg_server.py PORT [--fps 30] [--size 320x240] [--epoch T] [--stall]``.
Frame ``n`` is the one due at ``epoch + n / fps`` (``time.time()`` seconds; default: when
the server starts), so a server restarted with the same epoch goes on numbering where real
time says it would. Each frame carries its number in its pixels: 16 vertical bars, bar
``b`` white when bit ``b`` of the number is set (see :func:`decode_index`). ``--stall``
answers the request and then sends no frame at all.
"""

from __future__ import annotations

import argparse
import http.server
import socketserver
import time

import cv2
import numpy as np

BITS = 16


def encode_index(index: int, width: int, height: int) -> np.ndarray:
    """A BGR image whose 16 bars spell ``index`` in binary (bar 0 on the left)."""
    image = np.full((height, width, 3), 40, np.uint8)
    bar = width // BITS
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[:, bit * bar : (bit + 1) * bar] = 255
    return image


def decode_index(image: np.ndarray) -> int:
    """The number :func:`encode_index` drew (robust to JPEG noise and resizing)."""
    height, width = image.shape[:2]
    bar = width / BITS
    row = image[height // 2]
    value = 0
    for bit in range(BITS):
        x = int((bit + 0.5) * bar)
        if int(row[x].mean()) > 150:
            value |= 1 << bit
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--epoch", type=float, default=None)
    parser.add_argument("--stall", action="store_true", help="answer, then send no frame")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    epoch = time.time() if args.epoch is None else args.epoch

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            if args.stall:  # a camera that answers but never delivers a frame
                time.sleep(3600)
                return
            index = max(0, int((time.time() - epoch) * args.fps) + 1)
            try:
                while True:
                    delay = epoch + index / args.fps - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    _ok, jpeg = cv2.imencode(".jpg", encode_index(index, width, height))
                    data = jpeg.tobytes()
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode()
                        + b"\r\n\r\n"
                        + data
                        + b"\r\n"
                    )
                    index += 1
            except (BrokenPipeError, ConnectionResetError):
                return

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", args.port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
