#!/usr/bin/env bash
# ivrd load benchmark. Usage: bench/run.sh [--quick] [extra bench.py options]
#
#   --quick   N = 100, 250, 500 for 20 s each, RTP echoed at N = 250, 500 (strict RTP and plain),
#             call rates 200..1000 cps (1 s of prompt) and 1000, 2000 cps (signalling only),
#             verification 5..20 cps, 12 floods x 2 modes of 20 s (about 50 min)
#   (none)    N = 500, 1000, 2000, 4000 for 60 s each, RTP echoed at N = 1000, 2000, call rates
#             200..2000 cps and 1000..4000 cps signalling only, verification 10..80 cps,
#             12 floods x 2 modes of 60 s (about 2 h 20 min)
#   --only w2,w2echo,w1,w1sig,w3,flood   a subset (e.g. --only flood --floods tcp-idle,options)
#
# Loopback only. Pins ivrd to CPU 0 and SIPp to CPU 1. Results go to
# bench/results/<date>-<host>/results.md (+ plot.svg, results.json, raw/). See bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=""
MAXN=4000
ARGS=()
SRTPN=0
prev=""
for a in "$@"; do
    case "$a" in
        --quick) QUICK="--quick"; MAXN=500 ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) ARGS+=("$a") ;;
    esac
    # w2srtp's N steps (default 1000,2000) count for the open-file limit too
    case "$prev" in --srtp-ns) for x in ${a//,/ }; do ((x > SRTPN)) && SRTPN=$x; done ;; esac
    case "$a" in *w2srtp*) ((SRTPN < 2000)) && SRTPN=2000 ;; esac
    prev="$a"
done
((SRTPN > MAXN)) && MAXN=$SRTPN

say() { echo "[run.sh] $*"; }
die() { echo "[run.sh] ERROR: $*" >&2; exit 1; }
NOTES=()
note() { say "$*"; NOTES+=(--setup-note "$*"); }

# --- tools -------------------------------------------------------------------------------
missing=()
for t in cargo gcc python3 sipp dumpcap tshark taskset; do
    command -v "$t" >/dev/null || missing+=("$t")
done
if ((${#missing[@]})); then
    die "missing tools: ${missing[*]}. On Debian/Ubuntu: apt-get install sip-tester tshark gcc python3 util-linux (and rustup for cargo)"
fi
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (ivrd on CPU 0, SIPp on CPU 1); nproc=$(nproc)"
[ "$(id -u)" = 0 ] || say "not root: dumpcap needs capture rights on lo (CAP_NET_RAW/wireshark group), sysctls are skipped"

# --- limits ------------------------------------------------------------------------------
# Each call holds an RTP socket in ivrd (plus SIPp's per-call state); the biggest step needs
# roughly 2 fds per call. Ask for 65536; if the hard limit forbids it (containers without
# CAP_SYS_RESOURCE), use the hard limit when it is still enough, else stop.
NEED=$((MAXN * 2 + 1024))
if ulimit -n 65536 2>/dev/null; then
    note "ulimit -n 65536"
else
    HARD=$(ulimit -Hn)
    if [ "$HARD" = unlimited ] || [ "$HARD" -ge "$NEED" ]; then
        ulimit -n "$HARD" || die "cannot raise the open-file limit to the hard limit $HARD"
        note "ulimit -n 65536 refused (hard limit $HARD, no CAP_SYS_RESOURCE); using $HARD, enough for N=$MAXN (needs ~$NEED)"
    else
        die "open-file limit: 65536 refused and the hard limit $HARD < $NEED needed for N=$MAXN. Raise it (e.g. 'ulimit -Hn 65536' as root, LimitNOFILE=, or docker --ulimit nofile=65536) and rerun"
    fi
fi

# Socket buffers: raise the maxima to 8 MiB if lower (root only), and put them back at exit.
RESTORE=()
restore() {
    for kv in "${RESTORE[@]}"; do sysctl -q -w "$kv" >/dev/null 2>&1 || true; done
    ((${#RESTORE[@]})) && say "restored ${RESTORE[*]}"
    return 0
}
trap restore EXIT
for key in net.core.rmem_max net.core.wmem_max; do
    cur=$(sysctl -n "$key" 2>/dev/null || echo 0)
    if [ "$cur" -ge 8388608 ]; then
        note "$key = $cur (already >= 8 MiB, unchanged)"
    elif [ "$(id -u)" = 0 ] && sysctl -q -w "$key=8388608" >/dev/null 2>&1; then
        RESTORE+=("$key=$cur")
        note "$key raised $cur -> 8388608 for the run (restored at exit)"
    else
        note "$key = $cur (could not raise: not root or read-only)"
    fi
done
note "RTP port range 20000-31999 (6000 even ports; below ip_local_port_range $(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr '\t' '-'))"
note "ivrd config: [sip] trusted = [\"127.0.0.1\"] (SIPp, the PBX: no per-source limits), demo flow, rounds 1, first_digit_timeout 1 h, rtp_timeout_secs 0 (w2echo and floods: the default 30 s), max_call_secs 0, pacing_threads 1, pacer_nice -10 (the default; the floor runs at nice -10 too), inband_dtmf false, log warn"

# --- build ---------------------------------------------------------------------------------
say "building ivrd (cargo build --release) ..."
t0=$(date +%s)
cargo build --release 2>&1 | tail -n 3
IVRD="$ROOT/target/release/ivrd"
[ -x "$IVRD" ] || die "no $IVRD after the build"
note "cargo build --release took $(( $(date +%s) - t0 )) s (incremental)"

BIN="$ROOT/bench/.build"
mkdir -p "$BIN"
gcc -O2 -Wall -o "$BIN/floor" bench/floor.c
gcc -O2 -Wall -o "$BIN/sink" bench/sink.c
gcc -O2 -Wall -o "$BIN/flood" bench/flood.c

# --- ports free? ---------------------------------------------------------------------------
for p in 15060 15061 15062 15070 15072 15074 16000 16010 16020 16100 19060; do
    if ss -Hlun "sport = :$p" | grep -q . || ss -Hltn "sport = :$p" | grep -q .; then
        die "port 127.0.0.1:$p is in use (another bench or ivrd running?)"
    fi
done

OUT="$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)-$(hostname -s)"
mkdir -p "$OUT"
say "results in $OUT"
python3 bench/bench.py $QUICK --ivrd "$IVRD" --bin "$BIN" --out "$OUT" "${NOTES[@]}" "${ARGS[@]}" 2>&1 | tee "$OUT/run.log"
