#!/usr/bin/env bash
# Installs the SIP peers the integration tests call:
#   sipp    - Debian package sip-tester (SIPp 3.6), which also ships the RFC 2833 pcaps
#             (/usr/share/sip-tester/dtmf_2833_*.pcap) that the DTMF test plays;
#   baresip - Debian package baresip-core (the softphone tests);
#   linphonec - Debian package linphone-cli (tests/linphone.rs);
#   kamailio - Debian package kamailio (tests/kamailio.rs: a proxy in front of ivrd). The tests
#             run their own Kamailio; the packaged service, which would listen on port 5060
#             of every address, is stopped and disabled when this script installs it;
#   kamailio tls.so - Debian package kamailio-tls-modules (the Kamailio tests over TLS);
#   tcpdump - Debian package tcpdump (tests/baresip_srtp.rs captures loopback to check that an
#             SRTP call shows none of a plain call's payload bytes; the tests run as root);
#   groff - Debian package groff-base (tests/man_pages.rs renders every man page with warnings
#             on, as man(1) would);
#   chromium - Debian package chromium (tests/live_page.rs loads the admin listener's live
#             page in headless Chromium: a screenshot and the rendered DOM);
#   tzdata - the time zone database (hours steps, Europe/Berlin in the tests);
#   python3 - Debian package python3-minimal (tests/web_signup.rs runs the web sign-up
#             example's backend, examples/web-signup/server.py, standard library only).
#   postgresql - Debian package postgresql (the store tests against PostgreSQL start a
#             throw-away cluster of their own with initdb and pg_ctl, tests/common/postgres.rs,
#             and talk to it with psql). Debian keeps the server binaries in
#             /usr/lib/postgresql/<version>/bin, off PATH; the package's own cluster (main, port
#             5432) is stopped and disabled when this script installs it.
# Idempotent: does nothing when everything is already there. Exits non-zero if the tools are
# still missing afterwards, so a test run never starts without its peers.
set -euo pipefail

PCAP=/usr/share/sip-tester/dtmf_2833_1.pcap

# True if one directory holds a PostgreSQL server's initdb, pg_ctl and postgres, with psql
# beside them or on PATH (the places tests/common/postgres.rs looks). initdb on PATH may be a
# symlink into /usr/lib/postgresql/<version>/bin, so it is resolved first.
have_postgres_server() {
    local initdb dir
    initdb=$(command -v initdb 2>/dev/null || true)
    for dir in ${initdb:+"$(dirname "$(readlink -f "$initdb")")"} /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ] &&
            { [ -x "$dir/psql" ] || command -v psql >/dev/null 2>&1; }; then
            return 0
        fi
    done
    return 1
}

# Prints the Debian packages still needed, space-separated (empty when all is there).
missing_packages() {
    local pkgs=()
    if ! command -v sipp >/dev/null 2>&1 || [ ! -f "$PCAP" ]; then
        pkgs+=(sip-tester)
    fi
    if ! command -v baresip >/dev/null 2>&1; then
        pkgs+=(baresip-core)
    fi
    if ! command -v linphonec >/dev/null 2>&1; then
        pkgs+=(linphone-cli)
    fi
    # /usr/sbin is not on a normal user's PATH.
    if ! command -v kamailio >/dev/null 2>&1 && [ ! -x /usr/sbin/kamailio ]; then
        pkgs+=(kamailio)
    fi
    # The base package has no tls module; it lives in /usr/lib/<multiarch>/kamailio/modules.
    if ! compgen -G "/usr/lib/*/kamailio/modules/tls.so" >/dev/null &&
        [ ! -f /usr/lib/kamailio/modules/tls.so ]; then
        pkgs+=(kamailio-tls-modules)
    fi
    # /usr/sbin is not on a normal user's PATH either (Debian puts tcpdump in /usr/bin today).
    if ! command -v tcpdump >/dev/null 2>&1 && [ ! -x /usr/sbin/tcpdump ]; then
        pkgs+=(tcpdump)
    fi
    # The system's time zone database: `hours` steps read it through jiff (tests use
    # Europe/Berlin); minimal images leave it out.
    if [ ! -f /usr/share/zoneinfo/Europe/Berlin ]; then
        pkgs+=(tzdata)
    fi
    if ! command -v groff >/dev/null 2>&1; then
        pkgs+=(groff-base)
    fi
    # Headless Chromium renders the live page (tests/live_page.rs).
    if ! command -v chromium >/dev/null 2>&1; then
        pkgs+=(chromium)
    fi
    # The web sign-up example's backend (tests/web_signup.rs).
    if ! command -v python3 >/dev/null 2>&1; then
        pkgs+=(python3-minimal)
    fi
    # initdb, pg_ctl, postgres and psql of one PostgreSQL (tests/common/postgres.rs): on PATH
    # or in Debian's /usr/lib/postgresql/<version>/bin, which is not on PATH.
    if ! have_postgres_server; then
        pkgs+=(postgresql)
    fi
    # systemd-analyze checks the unit file (tests/systemd.rs).
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        pkgs+=(systemd)
    fi
    echo "${pkgs[*]}"
}

need=$(missing_packages)
if [ -z "$need" ]; then
    echo "install-test-deps: sipp, baresip, linphonec, kamailio (with tls.so), tcpdump, groff, tzdata, systemd-analyze, chromium, python3 and postgresql already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install by hand: $need (SIPp >= 3.6 with pcap play, baresip, linphonec, Kamailio 5 with its tls module, tcpdump, groff, tzdata, Chromium, a PostgreSQL server with initdb, pg_ctl and psql)" >&2
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

# Debian starts the packaged Kamailio on install (all addresses, port 5060); the tests need
# none of it.
case " $need " in
*" kamailio "*)
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        echo "install-test-deps: stopping and disabling the packaged kamailio.service (the tests run their own)"
        "${sudo[@]}" systemctl disable --now kamailio.service || true
    fi
    ;;
esac

# Debian creates and starts a cluster on install (main, localhost port 5432); the tests run
# their own throw-away clusters, so it only takes memory.
case " $need " in
*" postgresql "*)
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        echo "install-test-deps: stopping and disabling the packaged postgresql.service (the tests run their own)"
        "${sudo[@]}" systemctl disable --now postgresql.service || true
    fi
    ;;
esac

still=$(missing_packages)
if [ -n "$still" ]; then
    echo "install-test-deps: still missing after install: $still" >&2
    exit 1
fi
echo "install-test-deps: installed $need"
