#!/usr/bin/env python3
"""Write the layer seeds of fuzz/corpus/unpack: the attacks of tests/src/hostile.rs, aimed at the
fixed layout of fuzz_targets/unpack.rs (/tmp/berth-fuzz-unpack/{target,outside/sentinel}), plus
ordinary layers in each tar format. Each seed is a mode byte (see unpack.rs) and a tar."""
import io, os, sys, tarfile

tarfile.RECORDSIZE = 1024  # no 10 KiB padding: small seeds
BASE = "/tmp/berth-fuzz-unpack"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "unpack")


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link="", dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname, ti.size = kind, mode, link, len(data) if kind == tarfile.REGTYPE else 0
    ti.devmajor, ti.devminor = dev
    ti.uid = ti.gid = 0
    ti.mtime = 1700000000
    return ti, data


def tar(entries, fmt=tarfile.USTAR_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


D, S, H, C = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE
seeds = {
    "plain": [entry("bin", D, mode=0o755), entry("bin/sh", data=b"#!x\n", mode=0o755),
              entry("etc", D, mode=0o755), entry("etc/passwd", data=b"root:x:0:0::/:/bin/sh\n"),
              entry("bin/ash", H, link="bin/sh"), entry("bin/ln", S, link="sh")],
    "whiteouts": [entry("etc", D, mode=0o755), entry("etc/.wh.passwd"), entry("etc/.wh..wh..opq"),
                  entry("etc/new", data=b"n")],
    "dotdot-file": [entry("../escape", data=b"x")],
    "inner-dotdot-file": [entry("a", D, mode=0o755), entry("a/../../escape", data=b"x")],
    "absolute-file": [entry(f"{BASE}/outside/escape", data=b"x")],
    "absolute-sentinel": [entry(f"{BASE}/outside/sentinel", data=b"overwritten")],
    "symlink-absolute-escape": [entry("evil", S, link=f"{BASE}/outside"), entry("evil/escape", data=b"x")],
    "symlink-relative-escape": [entry("up", S, link="../../../../../.." + BASE + "/outside"),
                                entry("up/sentinel", data=b"x")],
    "symlink-parent": [entry("p", S, link=".."), entry("p/outside/sentinel", data=b"x"), entry("p/escape", data=b"x")],
    "symlink-then-dir": [entry("d", S, link=f"{BASE}/outside"), entry("d", D, mode=0o777), entry("d/escape", data=b"x")],
    "symlink-file-overwrite": [entry("f", S, link=f"{BASE}/outside/sentinel"), entry("f", data=b"x")],
    "hardlink-escape": [entry("h", H, link=f"{BASE}/outside/sentinel"), entry("h2", H, link="../outside/sentinel"),
                        entry("h", data=b"through the link")],
    "hardlink-via-symlink": [entry("s", S, link="../outside"), entry("h", H, link="s/sentinel")],
    "whiteout-escape": [entry("../.wh.outside"), entry("../.wh..wh..opq"), entry("../outside/.wh.sentinel")],
    "whiteout-via-symlink": [entry("s", S, link=f"{BASE}/outside"), entry("s/.wh.sentinel"), entry("s/.wh..wh..opq")],
    "chmod-via-symlink": [entry("s", S, link=f"{BASE}/outside"), entry("s", D, mode=0o777), entry("s/", D, mode=0o700)],
    "char-device": [entry("mem", C, mode=0o666, dev=(1, 1)), entry("mem", data=b"x")],
    "root-entry": [entry("./", D, mode=0o700), entry(".", D, mode=0o777), entry("/", D, mode=0o755)],
    "fifo": [entry("p", tarfile.FIFOTYPE), entry("p", data=b"x")],
}
long = "d" * 120
seeds_fmt = {
    "gnu-longname": ([entry(long, D, mode=0o755), entry(long + "/" + "f" * 150, data=b"x"),
                      entry("l", S, link="../" * 40 + "outside")], tarfile.GNU_FORMAT),
    "pax-escape": ([entry("p" * 110 + "/../../escape", data=b"x"), entry("x", S, link=BASE + "/outside/" + "y" * 120)],
                   tarfile.PAX_FORMAT),
}
os.makedirs(OUT, exist_ok=True)
for name, es in seeds.items():
    body = tar(es)
    for mode in (0, 2):
        open(os.path.join(OUT, f"{name}-{mode}"), "wb").write(bytes([mode]) + body)
for name, (es, fmt) in seeds_fmt.items():
    open(os.path.join(OUT, f"{name}-0"), "wb").write(b"\0" + tar(es, fmt))
# Gzip-mode seeds: the same tar, applied through the gzip path.
open(os.path.join(OUT, "plain-gzip-1"), "wb").write(b"\1" + tar(seeds["plain"]))
print(len(os.listdir(OUT)), "seeds in", OUT, file=sys.stderr)


# --- Text and JSON seeds for the other targets (from the shapes the tests and peers use). ---
import json


def put(target, name, data):
    d = os.path.join(os.path.dirname(OUT), target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, indent=1)
    if isinstance(data, str):
        data = data.encode()
    open(os.path.join(d, name), "wb").write(data)


CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
spec = {  # tests/src/bundle.rs default_spec, runc 1.1's `runc spec`
    "ociVersion": "1.0.2-dev",
    "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/",
                "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted", "ambient")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True, "apparmorProfile": "berth-default"},
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "berth",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
               {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]}],
    "linux": {"cgroupsPath": "/berth/c1",
              "resources": {"devices": [{"allow": False, "access": "rwm"}],
                            "memory": {"limit": 67108864}, "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                            "pids": {"limit": 64}},
              "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user", "cgroup")],
              "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
              "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
              "maskedPaths": ["/proc/kcore", "/sys/firmware"], "readonlyPaths": ["/proc/sys"],
              "rootfsPropagation": "rprivate",
              "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
                          "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                                       {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                                        "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]},
              "sysctl": {"net.ipv4.ip_forward": "1"}},
    "hooks": {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]},
    "annotations": {"a": "b"},
}
put("oci_spec", "runc-default.json", spec)
minimal = {"ociVersion": "1.0.2", "root": {"path": "/"}, "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}}
put("oci_spec", "minimal.json", minimal)
put("oci_spec", "relative-cwd.json", {**minimal, "process": {**minimal["process"], "cwd": "tmp"}})
put("oci_spec", "no-mntns-masked.json", {**minimal, "linux": {"maskedPaths": ["/proc/kcore"], "namespaces": [{"type": "pid"}, {"type": "pid"}]}})

d = lambda n: "sha256:" + (n * 64)[:64]
cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("c"), "size": 1234}
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("a"), "size": 99}
put("manifest", "oci-manifest.json", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                      "config": cfg_desc, "layers": [layer, {**layer, "digest": d("b"), "urls": ["http://x"]}],
                                      "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
                                      "subject": {**cfg_desc, "artifactType": "x"}})
put("manifest", "docker-manifest.json", {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                         "config": {**cfg_desc, "mediaType": "application/vnd.docker.container.image.v1+json"},
                                         "layers": [{**layer, "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}]})
plat = lambda o, a, v=None: {"os": o, "architecture": a, **({"variant": v} if v else {})}
put("manifest", "oci-index.json", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                   "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(x), "size": 500,
                                                  "platform": p} for x, p in
                                                 (("1", plat("linux", "amd64")), ("2", plat("linux", "arm64", "v8")),
                                                  ("3", plat("linux", "arm", "v7")), ("4", {**plat("windows", "amd64"), "os.version": "10.0"}))]})
put("manifest", "docker-list.json", {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                                     "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                                    "digest": d("5"), "size": 1, "platform": plat("linux", "386")}]})
put("manifest", "index-no-platform.json", {"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": d("6"), "size": -1}]})
put("manifest", "config.json", {"created": "2026-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
                                "config": {"User": "1000:1000", "Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
                                           "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}}, "WorkingDir": "/w",
                                           "Labels": {"a": "b"}, "StopSignal": "SIGTERM"},
                                "rootfs": {"type": "layers", "diff_ids": [d("a"), d("b"), "sha512:" + "0" * 128]}})
put("manifest", "platform.txt", "linux/arm64/v8")

refs = ["busybox", "busybox:1.36", "docker.io/library/busybox:latest", "index.docker.io/foo/bar",
        "localhost:5000/a/b-c__d.e:tag", "127.0.0.1:5000/x@" + d("e"), "[::1]:5000/x:y@" + d("f"),
        "Registry.Example.COM/ns/img:v1.2.3", "a" * 64, "x/" * 20 + "y", "quay.io/a/b:" + "t" * 128]
for i, r in enumerate(refs):
    put("reference", f"ref-{i}", r)

filters = ["topic==\"/tasks/exit\"", "namespace==default,topic~=/tasks/.*/",
           "labels.\"a.b\"==x", "event.container_id!=c1\ntopic", "labels.a~='^x,y$'", "",
           "name==foo,labels.\"io.berth/x\"~=\"(a|b)+\"", "topic~=/\\/tasks\\/(start|exit)/"]
for i, f in enumerate(filters):
    put("filter", f"filter-{i}", f)

bridge = {"cniVersion": "1.0.0",
          "interfaces": [{"name": "berth0", "mac": "aa:bb:cc:dd:ee:ff"}, {"name": "veth1", "mac": "aa:bb:cc:dd:ee:00"},
                         {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/run/netns/x", "mtu": 1500}],
          "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                  {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2}],
          "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0"}],
          "dns": {"nameservers": ["10.88.0.1"], "domain": "x", "search": ["a"], "options": ["ndots:2"]}}
put("cni_result", "bridge.json", bridge)
put("cni_result", "ipam.json", {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "192.168.1.2/32"}], "dns": {}})
put("cni_result", "bad-index.json", {"cniVersion": "1.1.0", "interfaces": [], "ips": [{"address": "10.0.0.1/0", "interface": 3}]})

put("decompress", "gzip", b"\0" + __import__("gzip").compress(tar(seeds["plain"])))
put("decompress", "gzip-two-members", b"\0" + __import__("gzip").compress(b"a") + __import__("gzip").compress(b"b" * 1000))
import subprocess
zstd = lambda b, *a: subprocess.run(["zstd", "-q", "-c", *a], input=b, stdout=subprocess.PIPE, check=True).stdout
put("decompress", "zstd", b"\1" + zstd(tar(seeds["plain"])))
put("decompress", "zstd-two-frames-checksum", b"\1" + zstd(b"a" * 5000, "--check") + zstd(b"", "--no-check"))
