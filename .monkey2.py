import http.server, threading, sys, time as _t
class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
from greenhub import monkey
if sys.argv[1:] == ["patch"]: monkey.patch_all()
import greenhub, requests, time
T0 = _t.monotonic()
def fetch(i):
    time.sleep(0.1)
    t = _t.monotonic()
    r = requests.get(f"http://127.0.0.1:8000/{i}").status_code
    d = _t.monotonic() - t
    if d > 0.5: print(f"req {i} took {d:.2f}s at {t-T0:.2f}", flush=True)
    return r
def main():
    tasks = [greenhub.spawn(fetch, i) for i in range(100)]
    return [greenhub.await_(t) for t in tasks]
if sys.argv[1:] == ["threads"]:
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(100) as ex: list(ex.map(fetch, range(100)))
else:
    greenhub.run(main)
print(f"total {_t.monotonic()-T0:.2f}")
