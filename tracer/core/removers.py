"""How each kind of recorded object is removed. Every remover is idempotent."""

from __future__ import annotations

import shutil
from pathlib import Path

from cnitrace.core.runner import Runner
from cnitrace.core.records import PREFIX, Record, Remover, kill_process

# Paths cnitrace may delete: only its own, named with the prefix.
_SAFE_ROOTS = (Path("/sys/fs/bpf"), Path("/run/cnitrace"), Path("/run"), Path("/tmp"), Path("/var/tmp"))


def _netns_exists(name: str, runner: Runner) -> bool:
    out = runner.run(["ip", "netns", "list"], check=False).stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def remove_netns(rec: Record, runner: Runner) -> None:
    if not _netns_exists(rec.name, runner):
        return
    pids = runner.run(["ip", "netns", "pids", rec.name], check=False).stdout.split()
    for pid in pids:
        if pid.isdigit():
            kill_process(int(pid), None, grace=1.0)
    runner.run(["ip", "netns", "del", rec.name])


def remove_process(rec: Record, runner: Runner) -> None:
    kill_process(int(rec.data["pid"]), rec.data.get("start_time"))


def remove_path(rec: Record, runner: Runner) -> None:
    p = Path(rec.name)
    if not p.name.startswith(PREFIX) or not any(root in p.parents for root in _SAFE_ROOTS):
        raise ValueError(f"refusing to remove {p}: not a {PREFIX}-named path under a known root")
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=False)
    else:
        p.unlink(missing_ok=True)


def restore_sysctl(rec: Record, runner: Runner) -> None:
    """Put a sysctl back to the value it had before cnitrace changed it."""
    path = Path("/proc/sys") / rec.name.replace(".", "/")
    netns = rec.data.get("netns")
    if netns:
        if _netns_exists(netns, runner):
            runner.run(["sysctl", "-q", "-w", f"{rec.name}={rec.data['original']}"], netns=netns)
        return
    path.write_text(str(rec.data["original"]) + "\n")


def remove_link(rec: Record, runner: Runner) -> None:
    out = runner.run(["ip", "-o", "link", "show", "dev", rec.name], check=False)
    if out.ok:
        runner.run(["ip", "link", "del", "dev", rec.name])


def remove_nft_table(rec: Record, runner: Runner) -> None:
    """Delete a cnit-named nft table (in its namespace, when that still exists)."""
    if not rec.name.startswith(PREFIX):
        raise ValueError(f"refusing to delete nft table {rec.name}: not {PREFIX}-named")
    netns = rec.data.get("netns")
    if netns and not _netns_exists(netns, runner):
        return
    runner.run(["nft", "delete", "table", rec.data.get("family", "ip"), rec.name], netns=netns or None, check=False)


def remove_ovs_bridge(rec: Record, runner: Runner) -> None:
    argv = ["ovs-vsctl"]
    if rec.data.get("db"):
        argv.append(f"--db={rec.data['db']}")
    runner.run([*argv, "--if-exists", "del-br", rec.name], check=False)


def unmount_bpffs(rec: Record, runner: Runner) -> None:
    """Unmount a bpffs cnitrace mounted (the host had none), but only once it holds no pins."""
    p = Path(rec.name)
    if p != Path("/sys/fs/bpf"):
        raise ValueError(f"refusing to unmount {p}: not /sys/fs/bpf")
    mounted = any(line.split()[1:3] == [str(p), "bpf"] for line in Path("/proc/mounts").read_text().splitlines())
    preloaded = {"maps.debug", "progs.debug"}      # the kernel's own iterators, in every bpffs
    if mounted and not any(c.name not in preloaded for c in p.iterdir()):
        runner.run(["umount", str(p)])


# kind -> how to remove it: the one registry the state file consults.
REMOVERS: dict[str, Remover] = {
    "netns": remove_netns,
    "process": remove_process,
    "path": remove_path,
    "sysctl": restore_sysctl,
    "link": remove_link,
    "ovs-bridge": remove_ovs_bridge,
    "nft-table": remove_nft_table,
    "bpffs": unmount_bpffs,
}
