"""`premoe serve` processes on loopback for the end-to-end tests.

Each process's stdout and stderr go to TMP/NAME.log; serve() returns once its
port files are written (the server is serving), with the ports.
"""
import os
import subprocess
import time

START_TIMEOUT = 120


class Processes:
    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp
        self.procs = []

    def run(self, *args, timeout=300):
        """stdout of a premoe command that must succeed."""
        r = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"premoe {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout

    def log(self, name):
        return open(os.path.join(self.tmp, f"{name}.log")).read()

    def serve(self, name, *args, http=False, log_args=("--log-level", "info")):
        """Starts `premoe serve ARGS`; returns its port, or (port, HTTP API port) with http."""
        port_file = os.path.join(self.tmp, f"{name}.port")
        http_file = os.path.join(self.tmp, f"{name}.http")
        extra = ["--http-listen", "127.0.0.1:0", "--http-port-file", http_file] if http else \
            ["--http-listen", ""]
        with open(os.path.join(self.tmp, f"{name}.log"), "w") as log:
            proc = subprocess.Popen([self.binary, *log_args, "serve", "--listen", "127.0.0.1:0",
                                     "--port-file", port_file, *extra, *args],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        want = [port_file, http_file] if http else [port_file]
        while time.monotonic() < deadline:
            if all(os.path.exists(f) and open(f).read().strip() for f in want):
                ports = [int(open(f).read()) for f in want]
                return tuple(ports) if http else ports[0]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start in {START_TIMEOUT} s")

    def print_logs(self, *names):
        """The tail of each named process's log (for a failed test)."""
        for name in names:
            path = os.path.join(self.tmp, f"{name}.log")
            if os.path.exists(path):
                print(f"--- {name} log (tail)\n" + "".join(open(path).readlines()[-30:]))

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
