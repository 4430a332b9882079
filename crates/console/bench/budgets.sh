#!/usr/bin/env bash
# The console's budgets, measured against the running stack (a benchmark, not a test):
#   - p95 render time of every page (curl, sequential requests, release build);
#   - the console's peak resident memory (VmHWM) after all of it;
#   - the brokers' CPU with and without the console open, in the same run: alternating windows
#     of WINDOW seconds, the console stopped, then running with headless chromium holding the
#     overview open (it refreshes itself every 2 s), then the console alone looking 20 times as
#     often (--sample-interval 100ms) to lift its share above the brokers' own variation, and so
#     on ROUNDS times.
#
# Usage: bash crates/console/bench/budgets.sh   (CDC_STACK_DIR for another state folder)
# Needs: a running stack (stack/stack.sh up), curl, chromium. Uses port CONSOLE_BENCH_PORT (18080).
set -Eeuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
STATE="${CDC_STACK_DIR:-$ROOT/.stack}"
PORT="${CONSOLE_BENCH_PORT:-18080}"
WINDOW="${WINDOW:-60}"
ROUNDS="${ROUNDS:-2}"
REQUESTS="${REQUESTS:-40}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/console"
URL="http://127.0.0.1:$PORT"
TICKS=$(getconf CLK_TCK)

(cd "$ROOT" && cargo build --release --quiet -p console)

console_pid=""
chromium_pid=""
profile=""
cleanup() {
    [[ -n $chromium_pid ]] && stop_chromium
    [[ -n $console_pid ]] && kill "$console_pid" 2>/dev/null && wait "$console_pid" 2>/dev/null
    [[ -n $profile ]] && remove_profile
    return 0
}
trap cleanup EXIT

start_console() { # [console args]
    "$BIN" --listen "127.0.0.1:$PORT" --stack-dir "$STATE" "$@" >>"${TMPDIR:-/tmp}/console-bench.log" 2>&1 &
    console_pid=$!
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "$URL/livez" && return 0
        sleep 0.1
    done
    echo "the console did not start (see ${TMPDIR:-/tmp}/console-bench.log)" >&2
    exit 1
}

stop_console() {
    kill "$console_pid" && wait "$console_pid" 2>/dev/null || true
    console_pid=""
}

broker_pids() { cat "$STATE"/run/kafka*.pid; }

broker_ticks() { # utime + stime of every broker, in clock ticks
    local pid total=0
    for pid in $(broker_pids); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# Brokers' CPU over one window, as a percentage of one core.
window_cpu() {
    local before after
    before=$(broker_ticks)
    sleep "$WINDOW"
    after=$(broker_ticks)
    awk -v t=$((after - before)) -v hz="$TICKS" -v w="$WINDOW" 'BEGIN { printf "%.2f", 100 * t / hz / w }'
}

if [[ ${RENDER:-1} == 1 ]]; then
echo "== render times ($REQUESTS requests per page, release build)"
start_console
sleep 5 # a few looks, so the overview has history
pages=(/ /overview/live /api/overview /brokers /topics /topics/cdc.public.users
    "/topics/cdc.public.users/messages?limit=50" /groups /groups/cdc-cassandra-consumer /connect /postgres /cassandra)
all=()
for page in "${pages[@]}"; do
    times=()
    for _ in $(seq 1 "$REQUESTS"); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' "$URL$page")")
    done
    all+=("${times[@]}")
    printf '%-45s p50 %6.1f ms  p95 %6.1f ms  max %6.1f ms\n' "$page" \
        "$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print 1000*a[int(NR*0.5+0.5)]}')" \
        "$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print 1000*a[int(NR*0.95+0.5)]}')" \
        "$(printf '%s\n' "${times[@]}" | sort -n | tail -n 1 | awk '{print 1000*$1}')"
done
printf 'all pages: p95 %.1f ms over %d requests\n' \
    "$(printf '%s\n' "${all[@]}" | sort -n | awk '{a[NR]=$1} END {print 1000*a[int(NR*0.95+0.5)]}')" "${#all[@]}"
stop_console
fi

echo "== brokers' CPU, $ROUNDS rounds of ${WINDOW} s: without the console, with it open, with it open looking every 100 ms"
without=()
with=()
amplified=()
peak=0
stop_chromium() {
    kill -- "-$chromium_pid" 2>/dev/null || kill "$chromium_pid" 2>/dev/null || true
    wait "$chromium_pid" 2>/dev/null || true
    chromium_pid=""
}
remove_profile() { # a helper that outlived the group may still be writing: try a few times
    local _
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        rm -rf "$profile" 2>/dev/null && break
        sleep 0.5
    done
    profile=""
}
open_console() { # [console args]: the console, and chromium holding the overview open
    start_console "$@"
    profile=$(mktemp -d)
    # Its own process group: chromium's helpers (zygote, renderers) go down with it.
    setsid chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --disable-quic --user-data-dir="$profile" --remote-debugging-port=0 \
        "$URL/" >/dev/null 2>&1 &
    chromium_pid=$!
    sleep 3
}
# Kafka requests of the looks seen in 10 s (each look reports its own count).
requests_per_look() {
    local _
    for _ in 1 2 3 4 5; do
        curl -s "$URL/api/overview" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot"]["kafka_requests"])' 2>/dev/null || true
        sleep 2
    done | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%s (min %s, max %s)", a[int((NR+1)/2)], a[1], a[NR]}'
}
close_console() {
    local hwm
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$console_pid/status")
    ((hwm > peak)) && peak=$hwm
    stop_chromium
    remove_profile
    stop_console
}
for round in $(seq 1 "$ROUNDS"); do
    without+=("$(window_cpu)")
    open_console
    with+=("$(window_cpu)")
    echo "round $round: Kafka requests per look (median of 5): $(requests_per_look)"
    close_console
    # The overview page reads the collector's latest look and costs the brokers nothing, so this
    # window runs without the browser: at 20x chromium would compete with the brokers for the two
    # cores and inflate their CPU time.
    start_console --sample-interval 100ms
    amplified+=("$(window_cpu)")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$console_pid/status")
    ((hwm > peak)) && peak=$hwm
    stop_console
    echo "round $round: without ${without[-1]} %, with ${with[-1]} %, with 20x looks ${amplified[-1]} % of one core (3 brokers together)"
done
awk -v a="${without[*]}" -v b="${with[*]}" -v c="${amplified[*]}" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); split(c, z, " ");
    for (i = 1; i <= n; i++) { sx += x[i]; sy += y[i]; sz += z[i] }
    sx /= n; sy /= n; sz /= n;
    printf "brokers: %.2f %% without, %.2f %% with the console open (%+.2f points, %+.1f %% relative)\n", sx, sy, sy - sx, 100 * (sy - sx) / sx;
    printf "with 20x looks: %.2f %% (%+.2f points); so one look every 2 s costs the brokers about %.3f points, %.2f %% of their CPU\n",
        sz, sz - sx, (sz - sx) / 20, 100 * (sz - sx) / 20 / sx }'

echo "== console memory"
start_console
for _ in $(seq 1 3); do
    for page in "${pages[@]}"; do curl -s -o /dev/null "$URL$page"; done
done
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$console_pid/status")
((hwm > peak)) && peak=$hwm
echo "console peak RSS (VmHWM): $((peak / 1024)) MiB"
