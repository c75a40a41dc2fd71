#!/usr/bin/env python3
"""Exit-to-subscriber latency, measured the same way on berthd and on Debian's containerd.

A `ctr events` subscriber is read line by line; for each sample a container (`ctr run -d --rootfs`, busybox
`sleep`) is started, its init is SIGKILLed from the host, and the time until the subscriber prints its
`/tasks/exit` line is taken. The two daemons run from private dirs, interleaved sample by sample, with their
state dirs on a private tmpfs (`--state tmpfs`, like /run on a normal host) or on the disk under the work dir
(`--state disk`, like /run on this machine). Root dirs (metadata) are on disk either way.

Usage (root): tools/exit-latency.py [--samples 30] [--state tmpfs|disk] [--berthd target/release/berthd]
Needs containerd, ctr, runc and busybox (Debian packages). Cleans up everything it started; touches nothing else.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


NS = "bench-lat"
PREFIX = f"lat{os.getpid()}-"


def cleanup_ctr_leftovers():
    """ctr keeps its client-side stdio FIFOs under /run/containerd/fifo/, and runc its per-namespace root
    under /run/containerd/runc/, whichever daemon it talks to: remove ours (only ours)."""
    fifo = "/run/containerd/fifo"
    for d in os.listdir(fifo) if os.path.isdir(fifo) else []:
        p = os.path.join(fifo, d)
        names = os.listdir(p)
        if names and all(n.startswith(PREFIX) for n in names):
            shutil.rmtree(p, ignore_errors=True)
    try:
        os.rmdir(f"/run/containerd/runc/{NS}")
    except OSError:
        pass


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Daemon:
    def __init__(self, name, work, state_kind, berthd):
        self.name = name
        self.dir = os.path.join(work, name)
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.dir, "d.sock")
        os.makedirs(self.root)
        os.makedirs(self.state)
        self.tmpfs = state_kind == "tmpfs"
        self.late_deletes = 0
        if self.tmpfs:
            sh("mount", "-t", "tmpfs", "-o", "mode=0711", "tmpfs", self.state)
        log = open(os.path.join(self.dir, "daemon.log"), "w")
        if name == "berthd":
            cmd = [berthd, "--root", self.root, "--state", self.state, "--address", self.sock]
        else:
            cfg = os.path.join(self.dir, "config.toml")
            with open(cfg, "w") as f:
                f.write(
                    "version = 2\n"
                    f'root = "{self.root}"\nstate = "{self.state}"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\naddress = "{self.sock}"\n'
                    f'[ttrpc]\naddress = "{self.sock}.ttrpc"\n'
                )
            cmd = ["containerd", "--config", cfg]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited at start; see {self.dir}/daemon.log")
            if os.path.exists(self.sock) and self.ctr("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not answer within 30 s")
            time.sleep(0.05)
        self.events = subprocess.Popen(
            ["ctr", "-a", self.sock, "events"], stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def ctr(self, *args, check=True):
        r = subprocess.run(["ctr", "-a", self.sock, "-n", NS, *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit(f"{self.name}: ctr {' '.join(args)}: {r.stderr.strip()}")
        return r

    def sample(self, rootfs, cid):
        self.ctr("run", "-d", "--rootfs", rootfs, cid, "/bin/sleep", "1000")
        pid = None
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == cid:
                pid = int(f[1])
        if not pid:
            raise SystemExit(f"{self.name}: no pid for {cid}")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            line = self.events.stdout.readline()
            if not line:
                raise SystemExit(f"{self.name}: ctr events ended")
            if os.environ.get("EXITLAT_DEBUG"):
                print(self.name, f"{(time.monotonic() - t0) * 1000:.3f}", repr(line[:90]), file=sys.stderr)
            # The topic is a field of its own (a bundle path may contain "/tasks/exit...").
            if " /tasks/exit " in line and f'"{cid}"' in line:
                took = time.monotonic() - t0
                break
        for what in ("task", "container"):
            # berthd may still call a task running right after its /tasks/exit went out (see docs/TRAPS.md):
            # retry for a while rather than leave a shim behind.
            for _ in range(100):
                r = self.ctr(what, "rm", cid, check=False)
                if r.returncode == 0 or "running" not in r.stderr:
                    break
                self.late_deletes += 1
                time.sleep(0.01)
            if r.returncode != 0:
                print(f"{self.name}: ctr {what} rm {cid}: {r.stderr.strip()}", file=sys.stderr)
        return took * 1000

    def stop(self):
        if self.events.poll() is None:
            self.events.kill()
            self.events.wait()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.tmpfs:
            subprocess.run(["umount", "-l", self.state], check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--state", choices=["tmpfs", "disk"], default="tmpfs")
    ap.add_argument("--berthd", default="target/release/berthd")
    ap.add_argument("--only", choices=["berthd", "containerd"])
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    berthd = os.path.abspath(a.berthd)
    work = tempfile.mkdtemp(prefix="exit-latency-", dir="/var/tmp")
    rootfs = os.path.join(work, "rootfs")
    for d in ["bin", "proc", "dev", "sys", "tmp"]:
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for applet in ["sh", "sleep"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    names = [a.only] if a.only else ["berthd", "containerd"]
    daemons = []
    results = {n: [] for n in names}
    try:
        for n in names:
            daemons.append(Daemon(n, work, a.state, berthd))
        for i in range(a.samples):
            for d in daemons:
                results[d.name].append(d.sample(rootfs, f"{PREFIX}{i}"))
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
        cleanup_ctr_leftovers()
    print(f"exit-to-subscriber via `ctr events`, state dir {a.state}, {a.samples} samples (ms)")
    med = {}
    for n, v in results.items():
        v.sort()
        med[n] = statistics.median(v)
        p90 = v[int(len(v) * 0.9) - 1]
        late = next(d.late_deletes for d in daemons if d.name == n)
        print(
            f"  {n:10} median {med[n]:6.2f}  p90 {p90:6.2f}  min {v[0]:6.2f}  max {v[-1]:6.2f}"
            f"  (task rm refused as running after the exit event: {late})"
        )
    if len(med) == 2:
        print(f"  ratio berthd/containerd (medians): {med['berthd'] / med['containerd']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
