"""Container launcher: enter the pod, set up the container's view, become its process.

Run by the node agent as ``python3 -I -S launch.py SPEC_JSON`` (standard library only, so
it starts fast) with the container's environment already set. It joins the pod's network
namespace, unshares a private mount and UTS namespace, bind-mounts every volume at its
mountPath (creating an empty mount point on the host file system if the path is missing;
the host's own files are otherwise visible, as in a privileged container; the paths that
stand for the image, this checkout and the interpreter, stay visible under any volume),
sets the pod's hostname, drops to the container's uid/gid, changes to workingDir and execs
the command, so its pid is the container's pid.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, flags: int) -> None:
    check(
        libc.mount(source.encode() if source else None, target.encode(), None, flags, None),
        f"mount {source} on {target}",
    )


def resolve(program: str) -> str:
    """``program`` searched in the container's PATH, as execvp would."""
    if "/" in program:
        return program
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    print(f"pod agent: {program!r} not found in PATH", file=sys.stderr)
    sys.exit(127)


def main() -> None:
    spec = json.loads(sys.argv[1])
    fd = os.open(spec["netns"], os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), "setns")
    os.close(fd)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", MS_REC | MS_PRIVATE)
    hostname = spec["hostname"].encode()
    check(libc.sethostname(hostname, len(hostname)), "sethostname")
    mounts = sorted(spec["mounts"], key=lambda m: m["target"].count("/"))
    # Every source is opened before the first mount: a volume on /tmp (an emptyDir) would
    # otherwise hide the sources of later volumes that live under the host's /tmp.
    sources = [os.open(m["source"], os.O_PATH) for m in mounts]
    image = [(p, os.open(p, os.O_PATH)) for p in spec.get("image", ()) if os.path.isdir(p)]
    for m, fd in zip(mounts, sources, strict=True):
        target = m["target"]
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount(f"/proc/self/fd/{fd}", target, MS_BIND | MS_REC)
        os.close(fd)
        if m.get("readOnly"):
            mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)
    # The "image" (this checkout, the interpreter) stays visible under any volume.
    targets = [m["target"].rstrip("/") + "/" for m in mounts]
    for path, fd in image:
        if any(path.startswith(t) or path + "/" == t for t in targets):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
        os.close(fd)
    argv = spec["argv"]
    # Found while still root: after dropping to the container's user this interpreter may
    # no longer read its own standard library (root's home), which execvp needs.
    program = resolve(argv[0])
    if spec.get("gid") is not None:
        os.setgroups(spec.get("groups", []))
        os.setgid(spec["gid"])
    if spec.get("uid") is not None:
        os.setuid(spec["uid"])
    os.chdir(spec.get("workdir") or "/")
    try:
        os.execv(program, argv)
    except OSError as e:
        print(f"pod agent: cannot run {argv[0]!r}: {e}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
