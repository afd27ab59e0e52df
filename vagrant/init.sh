#!/bin/busybox sh
# /init of the cnitrace microVM (run by the guest kernel as PID 1, busybox-static only).
#
# Why: the host kernel has no kprobes, fentry or OVS module, so those tiers run inside a
# stock Debian kernel booted under TCG. The guest sees the host's / read-only over 9p,
# with a tmpfs overlay on top so tests can write anywhere without touching the host.
#
# Inputs (written by cnitrace.vagrant.microvm into the initramfs):
#   /cnitrace/modules  module files to insmod, dependencies first (netfs 9pnet 9pnet_virtio 9p overlay)
#   /cnitrace/job.sh   the caller's cwd, environment and command, shell-quoted on the host
#   /cnitrace/nonce    random token; the exit marker carries it so command output cannot fake it
# Output on the console: "CNITRACE-MICROVM-START <nonce>", the command's output, then
# "CNITRACE-MICROVM-EXIT <nonce> <status>"; then the guest powers off.

if [ "$1" = stage2 ]; then
    S=/run/cnitrace-microvm
    nonce=$("$S/busybox" cat "$S/nonce")
    echo "CNITRACE-MICROVM-START $nonce"
    "$S/busybox" env -i /bin/sh "$S/job.sh" </dev/null
    rc=$?
    echo "CNITRACE-MICROVM-EXIT $nonce $rc"
    exec "$S/busybox" poweroff -f
fi

/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "cnitrace-microvm: guest setup failed: $*"
    poweroff -f
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"

for ko in $(cat /cnitrace/modules); do
    insmod "/lib/modules/$ko" || fail "insmod $ko"
done

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower \
    || fail "mount 9p hostroot"
mount -t tmpfs -o mode=0755 rw /rw || fail "mount tmpfs /rw"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "mount overlay"

for d in proc sys dev; do
    mount --move "/$d" "/newroot/$d" || fail "move /$d"
done

R=/newroot
mount -t tmpfs -o mode=0755 run "$R/run" || fail "mount /run"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o ptmxmode=0666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
mount -t tracefs tracefs "$R/sys/kernel/tracing" || fail "mount tracefs"
mount -t debugfs debugfs "$R/sys/kernel/debug" || fail "mount debugfs"
mount -t bpf bpf "$R/sys/fs/bpf" || fail "mount bpffs"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
hostname cnit-microvm
ip link set lo up || fail "lo up"

# Stage 2 runs as PID 1 inside the new root (switch_root), so that the kernel's usermode
# helpers (modprobe on `ip link add type veth`, `modprobe openvswitch`) see the host's
# /sbin/modprobe and /lib/modules. Our busybox comes along for the final poweroff.
S=/run/cnitrace-microvm
mkdir -p "$R$S"
cp /bin/busybox /init /cnitrace/job.sh /cnitrace/nonce "$R$S/" || fail "copy stage 2"
exec switch_root "$R" "$S/busybox" sh "$S/init" stage2
