#!/usr/bin/env bash
# Installs the SIP peers the integration tests call:
#   sipp    - Debian package sip-tester (SIPp 3.6), which also ships the RFC 2833 pcaps
#             (/usr/share/sip-tester/dtmf_2833_*.pcap) that the DTMF test plays;
#   baresip - Debian package baresip-core (the softphone test).
# Idempotent: does nothing when everything is already there. Exits non-zero if the tools are
# still missing afterwards, so a test run never starts without its peers.
set -euo pipefail

PCAP=/usr/share/sip-tester/dtmf_2833_1.pcap

# Prints the Debian packages still needed, space-separated (empty when all is there).
missing_packages() {
    local pkgs=()
    if ! command -v sipp >/dev/null 2>&1 || [ ! -f "$PCAP" ]; then
        pkgs+=(sip-tester)
    fi
    if ! command -v baresip >/dev/null 2>&1; then
        pkgs+=(baresip-core)
    fi
    # systemd-analyze checks the unit file (tests/systemd.rs).
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        pkgs+=(systemd)
    fi
    echo "${pkgs[*]}"
}

need=$(missing_packages)
if [ -z "$need" ]; then
    echo "install-test-deps: sipp, baresip and systemd-analyze already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install by hand: $need (SIPp >= 3.6 with pcap play, baresip)" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "install-test-deps: need root or sudo to run: apt-get install $need" >&2
    exit 1
fi

# Another apt/dpkg run (unattended upgrades, a parallel session) may hold the lock for a
# while: apt waits for it up to Lock::Timeout, and we retry the whole step a few times.
apt() {
    local attempt
    for attempt in 1 2 3; do
        if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; then
            return 0
        fi
        echo "install-test-deps: apt-get $1 failed (attempt $attempt), retrying in 15 s" >&2
        sleep 15
    done
    return 1
}

echo "install-test-deps: installing $need"
apt update
# shellcheck disable=SC2086 # $need is a list of package names
apt install --no-install-recommends $need

still=$(missing_packages)
if [ -n "$still" ]; then
    echo "install-test-deps: still missing after install: $still" >&2
    exit 1
fi
echo "install-test-deps: sipp and baresip installed"
