"""A local HTTP server for the tests of videos given as URLs: files by name, errors and failures on purpose."""

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def serving(files: dict):
    """Serve ``files`` ({"/name.mp4": bytes}) on 127.0.0.1 in a thread; yields the base URL ("http://127.0.0.1:PORT").

    Any other path answers 404. ``/cut/NAME`` sends NAME's headers (its full Content-Length) and then half of
    its bytes, and closes the connection. ``/stall/NAME`` sends the headers and then nothing until the server
    stops (a server that hangs)."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            kind, _, name = self.path.partition("/")[2].partition("/")
            body = files.get("/" + name) if kind in ("cut", "stall") else files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if kind == "stall":
                self.wfile.flush()
                stop.wait(30)
                return
            self.wfile.write(body[: len(body) // 2] if kind == "cut" else body)
            if kind == "cut":
                self.close_connection = True

        def log_message(self, *args):  # no request log on the test's stderr
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-url-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
