#!/usr/bin/env bash
# Install every system package cnitrace and its tests use, idempotently.
# Used by `make setup` on a node and by the Vagrantfile's provisioner in lab VMs.
# Debian 12 (bookworm) and Ubuntu 22.04+; run as root.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "provision.sh: run as root (sudo make ...)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    python3 python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool
    iproute2 kmod ethtool iptables nftables ipset conntrack
    openvswitch-switch python3-openvswitch
    iperf3 sockperf apache2-utils nginx-light haproxy curl
    qemu-system-x86 busybox-static xz-utils zstd cpio
    chromium tshark
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# The microVM boots a stock Debian kernel that has kprobes, fentry and the OVS module; its
# headers double as bcc's stand-in headers on hosts that have none. Pick the newest
# 6.12 (else 6.1) Debian kernel the archive offers, unless one is already installed.
microvm_kernel() {
    local have
    have=$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -1 || true)
    if [[ -n "$have" && -d "/usr/src/linux-headers-$have" ]]; then echo "$have"; return; fi
    apt-cache search --names-only '^linux-image-6\.(12|1)\.[0-9.]+.*-amd64$' 2>/dev/null \
        | awk '{print $1}' | grep -v -- '-dbg$\|-unsigned$\|-rt-\|-cloud-' \
        | sed 's/^linux-image-//' | sort -V | tail -1
}

if ((${#missing[@]})) || [[ -z "$(microvm_kernel)" ]]; then
    apt-get update -qq
fi
KVER=$(microvm_kernel)
if [[ -z "$KVER" ]]; then
    echo "provision.sh: no Debian kernel image found for the microVM" >&2
    exit 1
fi
for p in "linux-image-$KVER" "linux-headers-$KVER"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "provision.sh: installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Package installs must not leave services running on the node.
for svc in nginx haproxy openvswitch-switch; do
    systemctl is-active --quiet "$svc" 2>/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

# bcc compiles against /lib/modules/$(uname -r)/build. Where the running kernel has no
# headers package, link the nearest Debian headers there: tracepoint programs are correct
# with them because bcc builds tracepoint structs from tracefs format files.
RUNNING=$(uname -r)
BUILD="/lib/modules/$RUNNING/build"
if [[ ! -e "$BUILD" ]]; then
    if apt-cache show "linux-headers-$RUNNING" >/dev/null 2>&1; then
        apt-get install -y -q --no-install-recommends "linux-headers-$RUNNING" >/dev/null
    else
        mkdir -p "/lib/modules/$RUNNING"
        ln -sfn "/usr/src/linux-headers-$KVER" "$BUILD"
        echo "provision.sh: no headers for kernel $RUNNING; linked stand-in linux-headers-$KVER at $BUILD"
    fi
fi
# Debian splits headers into -<arch> (generated) and -common (kconfig.h and the rest); bcc
# finds the -common half only through a `source` link next to `build` (also for the microVM's kernel).
for build in /lib/modules/*/build; do
    source="${build%/build}/source"
    build_dir=$(readlink -f "$build" || true)
    if [[ ! -e "$source" && "$build_dir" == *-amd64 && -d "${build_dir%-amd64}-common" ]]; then
        ln -sfn "${build_dir%-amd64}-common" "$source"
        echo "provision.sh: linked ${build_dir%-amd64}-common at $source (bcc needs both halves)"
    fi
done

echo "provision.sh: system packages ready (microVM kernel $KVER)"
