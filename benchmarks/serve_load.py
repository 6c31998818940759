"""Load on `medclf serve`: N concurrent uploads for a bounded time, against 127.0.0.1 only.

    python benchmarks/serve_load.py --run results/NAME [--image FILE] [--concurrency 8] [--seconds 20]
        [--bad-every 10] [--port 0]

Starts `medclf serve --run RUN` on a free 127.0.0.1 port in a child process, waits until it
answers, then runs `--concurrency` client threads, each posting the image to /api/predict again
and again until `--seconds` have passed (every `--bad-every`-th request sends a text file named
.jpg instead, which must get a 4xx). The server's resident memory (VmRSS from /proc) is sampled
every 0.2 s. Prints requests/s, p50/p95/max latency of the good requests, the count of each status
(2xx, 4xx, 5xx, connection errors) and the server's RSS before, at peak and after; the server is
stopped at the end. Goal: zero 5xx and connection errors, RSS bounded (the peak does not keep
growing with the run's length). Linux only (/proc).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_SECONDS = 600
MAX_CONCURRENCY = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder written by `medclf train` (with quality.json)")
    parser.add_argument("--image", help="image to upload (default: the first test image of the run's splits.csv)")
    parser.add_argument("--concurrency", type=int, default=8, help=f"client threads, at most {MAX_CONCURRENCY}")
    parser.add_argument("--seconds", type=float, default=20, help=f"how long to send requests, at most {MAX_SECONDS}")
    parser.add_argument("--bad-every", dest="bad_every", type=int, default=10,
                        help="every N-th request is a text file named .jpg (0: none)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= MAX_CONCURRENCY or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--concurrency must be 1-{MAX_CONCURRENCY} and --seconds 0-{MAX_SECONDS}")
    return args


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_test_image(run):
    sys.path.insert(0, str(REPO / "python"))
    from medclf.core.splits import read_splits

    table = read_splits(Path(run) / "splits.csv")
    return table.resolve(table.rows("test")["path"].iloc[0])


def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(run, port):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "python"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", "--run", str(run), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve_load: medclf serve exited: {proc.stderr.read()}")
        try:
            urllib.request.urlopen(url + "/api/model", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("serve_load: medclf serve did not answer within 180 s")


def multipart(name, data):
    boundary = "serveloadboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def one_request(url, body, kind):
    """(status or 'connection error', seconds)."""
    started = time.perf_counter()
    request = urllib.request.Request(url + "/api/predict", data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    except OSError:
        status = "connection error"
    return status, time.perf_counter() - started


def load(url, good, bad, concurrency, seconds, bad_every):
    deadline = time.monotonic() + seconds
    counter, lock, results = [0], threading.Lock(), []

    def client(_):
        while time.monotonic() < deadline:
            with lock:
                counter[0] += 1
                is_bad = bad_every > 0 and counter[0] % bad_every == 0
            status, latency = one_request(url, *(bad if is_bad else good))
            with lock:
                results.append((is_bad, status, latency))

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return results, time.monotonic() - started


def sample_rss(pid, samples, stop):
    while not stop.is_set():
        value = rss_mib(pid)
        if value is not None:
            samples.append(value)
        stop.wait(0.2)


def status_class(status):
    return status if isinstance(status, str) else f"{status // 100}xx"


def summary(results, elapsed, rss_before, samples, rss_after):
    good = sorted(latency for is_bad, status, latency in results if not is_bad and status == 200)
    counts = Counter(status_class(s) for _, s, _ in results)
    return {"requests": len(results), "seconds": round(elapsed, 2), "requests_per_s": round(len(results) / elapsed, 2),
            "good_ok": len(good), "bad_sent": sum(1 for b, _, _ in results if b),
            "bad_refused_4xx": sum(1 for b, s, _ in results if b and isinstance(s, int) and 400 <= s < 500),
            "latency_p50_s": round(statistics.median(good), 3) if good else None,
            "latency_p95_s": round(good[min(len(good) - 1, int(0.95 * len(good)))], 3) if good else None,
            "latency_max_s": round(good[-1], 3) if good else None,
            "status": dict(sorted(counts.items())),
            "rss_mib": {"before": rss_before, "peak": max(samples) if samples else None, "after": rss_after}}


def main(argv=None):
    args = parse_args(argv)
    image = Path(args.image) if args.image else first_test_image(args.run)
    good = multipart(image.name, image.read_bytes())
    bad = multipart("notes.jpg", b"this is a text file, not an image\n" * 4)
    proc, url = start_server(args.run, args.port or free_port())
    try:
        one_request(url, *good)  # warm-up: first Grad-CAM and allocations
        rss_before, samples, stop = rss_mib(proc.pid), [], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples, stop), daemon=True)
        sampler.start()
        results, elapsed = load(url, good, bad, args.concurrency, args.seconds, args.bad_every)
        stop.set()
        sampler.join()
        report = summary(results, elapsed, rss_before, samples, rss_mib(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report.update(image=str(image), concurrency=args.concurrency, cpus=os.cpu_count())
    print(json.dumps(report, indent=2))
    failures = report["status"].get("5xx", 0) + report["status"].get("connection error", 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
