#!/usr/bin/env bash
# Measures what `make run` costs when nothing happens: the CPU the broker and the
# gateway use, idle, over a window, as a share of one core.
#   scripts/idle-cpu.sh [SECONDS]   (default 60; `make run` must be up)
set -euo pipefail
window=${1:-60}
gateway=$(pgrep -f "target/release/omnigate serve" | head -1)
broker=$(pgrep -f "kafka.Kafka data/kafka.properties" | head -1)
[ -n "$gateway" ] && [ -n "$broker" ] || { echo "start make run first" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
g0=$(ticks "$gateway"); b0=$(ticks "$broker")
sleep "$window"
g1=$(ticks "$gateway"); b1=$(ticks "$broker")
awk -v g=$((g1 - g0)) -v b=$((b1 - b0)) -v hz="$hz" -v w="$window" 'BEGIN {
  printf "idle over %d s: gateway %.2f%% of a core, broker %.2f%%, together %.2f%%\n",
    w, 100 * g / hz / w, 100 * b / hz / w, 100 * (g + b) / hz / w
}'
