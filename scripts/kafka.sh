#!/usr/bin/env bash
# Apache Kafka for Omnigate on this machine: a single-node KRaft broker+controller,
# resolved once from Maven Central with Maven (no tarball download, no Docker).
#
#   scripts/kafka.sh install   resolve Kafka and its dependencies into the cache (once)
#   scripts/kafka.sh test      start a broker on 127.0.0.1:9092 with data in a temporary
#                              folder, in the background (make test); reuses a broker
#                              already listening there
#   scripts/kafka.sh run       start a broker on 127.0.0.1:9092 with data under
#                              ./data/kafka, in the foreground (make run); the data
#                              survives a restart
#   scripts/kafka.sh bench     start a fresh, empty broker on 127.0.0.1:19092 (make bench)
#   scripts/kafka.sh stop MODE stop the broker that MODE started (test, run or bench)
#   scripts/kafka.sh scratch PORT DATA
#                              a broker of a test's own on 127.0.0.1:PORT with data in
#                              DATA, in the foreground (tests that stop and restart one)
#
# Environment: KAFKA_VERSION (default below), KAFKA_HEAP (default 512 MiB),
# OMNIGATE_CACHE (default ~/.cache/omnigate), KAFKA_PORT (overrides the mode's port),
# KAFKA_JIT (bench mode: `quick`, the default, or `full` for the optimizing compiler).
set -euo pipefail
cd "$(dirname "$0")/.."

# 4.0 rather than 4.1: 4.1 always runs the share-group coordinator and its state
# persister, whose timers cost an idle single node about 0.1% of a core; 4.0 starts
# them only when share groups are switched on, and Omnigate uses none.
KAFKA_VERSION=${KAFKA_VERSION:-4.0.2}
KAFKA_HEAP=${KAFKA_HEAP:-512m}

# Points `cache` and `libs` at the files of Kafka version $1.
use_version() {
  KAFKA_VERSION=$1
  cache=${OMNIGATE_CACHE:-$HOME/.cache/omnigate}/kafka-$KAFKA_VERSION
  libs=$cache/libs
}
use_version "$KAFKA_VERSION"
root=$(pwd)
mode=${1:-test}

install() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || { echo "Maven (mvn) is needed to fetch Kafka" >&2; exit 1; }
  command -v java >/dev/null 2>&1 || { echo "Java 17 or later is needed to run Kafka" >&2; exit 1; }
  echo "==> Resolving Apache Kafka $KAFKA_VERSION from Maven Central into $cache (once)"
  mkdir -p "$cache"
  # The broker (kafka_2.13 with kafka-server) and the log4j2 binding its scripts ship.
  cat >"$cache/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>omnigate.local</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$libs"
  mvn -q -B -f "$cache/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  cat >"$cache/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  touch "$libs/.complete"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Writes the broker's properties for a port and data folder.
write_properties() {
  local port=$1 data=$2 file=$3
  cat >"$file" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$((port + 1))
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Thread pools sized for one small node: each idle thread wakes on its own timer, and the
# defaults (8 request handlers, 4 group coordinator threads) are for a many-core server.
num.network.threads=2
num.io.threads=2
background.threads=2
group.coordinator.threads=1
share.coordinator.threads=1
# The controller writes a no-op record to its log when idle, by default every 500 ms;
# a single node has no follower that needs it that often.
metadata.max.idle.interval.ms=5000
EOF
}

# What `make run`'s broker adds (a later key wins), so an idle laptop stays idle: one
# thread per pool (each idle thread wakes on its own timer), no controller no-op records (a single node
# has no follower that needs them), and slower timers for work a single idle node
# rarely has (its own broker-to-controller heartbeat; the scan for timed-out
# transactions, which are aborted within a minute instead of 10 s).
idle_properties() {
  cat <<'EOF'
num.network.threads=1
num.io.threads=1
background.threads=1
metadata.max.idle.interval.ms=0
broker.heartbeat.interval.ms=4000
broker.session.timeout.ms=18000
transaction.abort.timed.out.transaction.cleanup.interval.ms=60000
EOF
}

# The broker's command line, in the array `broker_cmd`.
broker_command() {
  local props=$1
  # The serial collector: one small heap, and no concurrent GC threads waking an idle broker.
  # No perf-data sampler (it wakes every 50 ms to update counters nobody reads) and
  # no safepoint every second when nothing needs one, and idle monitors looked for every
  # 5 s instead of four times a second.
  broker_cmd=(java -Xms128m "-Xmx$KAFKA_HEAP" -XX:+UseSerialGC ${jit_flags[@]+"${jit_flags[@]}"}
    -XX:-UsePerfData -XX:+UnlockDiagnosticVMOptions -XX:GuaranteedSafepointInterval=0
    -XX:AsyncDeflationInterval=5000
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$cache/log4j2.properties"
    -cp "$libs/*" kafka.Kafka "$props")
}

# Formats the data folder once (KRaft needs a cluster id written before the first start).
format_once() {
  local data=$1 props=$2
  if [ -f "$data/meta.properties" ]; then return 0; fi
  mkdir -p "$data"
  local id
  id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  java "-Dlog4j2.configurationFile=$cache/log4j2.properties" -cp "$libs/*" \
    kafka.tools.StorageTool format -t "$id" -c "$props" >/dev/null
}

wait_listening() {
  local port=$1 pid=$2 log=$3
  for _ in $(seq 1 600); do
    listening "$port" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "Kafka exited during start; the last lines of $log:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "Kafka did not listen on 127.0.0.1:$port within 60 s; see $log" >&2
  exit 1
}

stop_pidfile() {
  local pidfile=$1
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    # A controlled shutdown takes a few seconds; past 30 s it is killed.
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# Starts a broker in the background: port, data folder, name for the pid and log files.
start_background() {
  local port=$1 data=$2 name=$3
  mkdir -p .tmp
  local props=.tmp/$name.properties log=.tmp/$name.log
  write_properties "$port" "$data" "$props"
  format_once "$data" "$props"
  # Its own session, so a Ctrl-C in the terminal that started it reaches only its owner.
  broker_command "$props"
  setsid nohup "${broker_cmd[@]}" >"$log" 2>&1 </dev/null &
  echo $! >".tmp/$name.pid"
  wait_listening "$port" "$!" "$log"
}

case "$mode" in
  install) install ;;
  test)
    port=${KAFKA_PORT:-9092}
    if listening "$port"; then
      echo "==> A broker already listens on 127.0.0.1:$port; using it"
      exit 0
    fi
    install
    data=$(mktemp -d "${TMPDIR:-/tmp}/omnigate-kafka-test.XXXXXX")
    echo "==> Starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (data in $data, log in .tmp/kafka-test.log)"
    start_background "$port" "$data" kafka-test
    ;;
  bench)
    port=${KAFKA_PORT:-19092}
    install
    stop_pidfile .tmp/kafka-bench.pid
    [ -f .tmp/kafka-bench.data ] && rm -rf "$(cat .tmp/kafka-bench.data)"
    data=$(mktemp -d "${TMPDIR:-/tmp}/omnigate-kafka-bench.XXXXXX")
    mkdir -p .tmp
    echo "$data" >.tmp/kafka-bench.data
    # The quick compiler only, unless KAFKA_JIT=full. Most benches give each measured
    # phase a fresh broker, and on two cores its optimizing compiler took about half
    # the broker's CPU all through a phase, billed to whatever the phase measured; the
    # quick compiler's work is done within the phase's warm-up. KAFKA_JIT=full is for
    # comparing a bench whose sides share one broker (webhook_ingest) on a broker
    # compiled as production brokers are.
    if [ "${KAFKA_JIT:-quick}" = full ]; then
      jit_flags=()
    else
      jit_flags=(-XX:TieredStopAtLevel=1)
    fi
    echo "==> Starting a fresh Apache Kafka $KAFKA_VERSION for benchmarks on 127.0.0.1:$port"
    start_background "$port" "$data" kafka-bench
    ;;
  run)
    port=${KAFKA_PORT:-9092}
    install
    # The quick compiler only: an idle broker's optimizing compiler went on recompiling
    # for tens of minutes, and `make run` carries no load that needs its code.
    jit_flags=(-XX:TieredStopAtLevel=1)
    data=$root/data/kafka
    mkdir -p data
    # Kafka reads data of an older version but not of a newer one, so data that a
    # newer version last ran stays on that version (data from before this file was
    # written is 4.1.1's). Remove ./data/kafka to start over on the pinned version.
    if [ -f "$data/meta.properties" ]; then
      last=$(cat data/kafka.version 2>/dev/null || echo 4.1.1)
      newest=$(printf '%s\n%s\n' "$KAFKA_VERSION" "$last" | sort -V | tail -1)
      if [ "$newest" != "$KAFKA_VERSION" ]; then
        echo "==> ./data/kafka was last run by Kafka $last; starting that version"
        use_version "$newest"
        install
      fi
    fi
    echo "$KAFKA_VERSION" >data/kafka.version
    props=data/kafka.properties
    write_properties "$port" "$data" "$props"
    idle_properties >>"$props"
    format_once "$data" "$props"
    broker_command "$props"
    exec "${broker_cmd[@]}"
    ;;
  scratch)
    port=${2:?usage: $0 scratch PORT DATA}
    data=${3:?usage: $0 scratch PORT DATA}
    install
    mkdir -p "$data"
    props=$data.properties
    write_properties "$port" "$data" "$props"
    format_once "$data" "$props"
    broker_command "$props"
    exec "${broker_cmd[@]}"
    ;;
  stop)
    which=${2:-test}
    stop_pidfile ".tmp/kafka-$which.pid"
    if [ "$which" = bench ] && [ -f .tmp/kafka-bench.data ]; then
      rm -rf "$(cat .tmp/kafka-bench.data)" .tmp/kafka-bench.data
    fi
    ;;
  *) echo "usage: $0 install|test|run|bench|scratch PORT DATA|stop [test|run|bench]" >&2; exit 2 ;;
esac
