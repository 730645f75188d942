"""A probe overlay: tries each thing a CLEAR overlay must not do, then forks
a child that tries them again, and prints one JSON object of outcomes
("ok" or the errno's name).  Standard library only: it runs under the
system's python3 as the overlay user.

argv[1] is JSON: {"dirs": {"parent": D1, "child": D2}, "port": P,
"probe_paths": [...], "signal_pid": N}.  Each of D1, D2 holds the files
prepared by tests/test_overlay_sandbox.py: make_victim().
"""
import errno
import json
import os
import socket
import sys


def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.close()


def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("127.0.0.1", port))
    finally:
        s.close()


def unix():
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()


def append(path):
    with open(path, "a") as fh:
        fh.write("changed\n")


def create(path):
    with open(path, "x") as fh:
        fh.write("new\n")


def scratch():
    with open(os.path.join(os.environ["TMPDIR"], "scratch.txt"), "w") as fh:
        fh.write("scratch is writable\n")


def ops(d, port):
    j = lambda name: os.path.join(d, name)  # noqa: E731
    return {
        "create": attempt(lambda: create(j("new.txt"))),
        "write": attempt(lambda: append(j("write.txt"))),
        "open_trunc": attempt(lambda: open(j("otrunc.txt"), "w").close()),
        "truncate": attempt(lambda: os.truncate(j("truncate.txt"), 0)),
        "delete": attempt(lambda: os.unlink(j("delete.txt"))),
        "rename": attempt(lambda: os.rename(j("rename.txt"), j("renamed.txt"))),
        "mkdir": attempt(lambda: os.mkdir(j("newdir"))),
        "rmdir": attempt(lambda: os.rmdir(j("emptydir"))),
        "symlink": attempt(lambda: os.symlink("write.txt", j("sym"))),
        "hardlink": attempt(lambda: os.link(j("write.txt"), j("hardlink"))),
        "chmod": attempt(lambda: os.chmod(j("chmod.txt"), 0o600)),
        "utime": attempt(lambda: os.utime(j("utime.txt"), (1, 1))),
        "tcp": attempt(lambda: tcp(port)),
        "udp": attempt(lambda: udp(port)),
        "unix_socket": attempt(unix),
        "scratch": attempt(scratch),
    }


def main():
    spec = json.loads(sys.argv[1])
    out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
           "cwd": os.getcwd()}
    out["reads"] = {p: attempt(lambda p=p: os.listdir(p) if os.path.isdir(p) else open(p, "rb").read(1))
                    for p in spec.get("probe_paths", [])}
    if spec.get("signal_pid"):
        out["signal"] = attempt(lambda: os.kill(spec["signal_pid"], 0))
    out["parent"] = ops(spec["dirs"]["parent"], spec["port"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps(ops(spec["dirs"]["child"], spec["port"])).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    out["child"] = json.loads(data)
    print(json.dumps(out))


main()
