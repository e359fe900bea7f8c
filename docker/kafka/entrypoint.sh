#!/bin/bash
# Writes server.properties from KAFKA_* variables (the apache/kafka convention), formats the log
# directory on first start, then runs the broker in the foreground (exec: it gets the signals).
set -euo pipefail

CONFIG=/tmp/server.properties
: >"$CONFIG"
# Variables that configure the JVM, not the broker.
skip=" KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_GC_LOG_OPTS KAFKA_LOG4J_OPTS KAFKA_JMX_OPTS KAFKA_DEBUG "
while IFS='=' read -r name value; do
    case "$skip" in *" $name "*) continue ;; esac
    key="${name#KAFKA_}"
    key="$(printf '%s' "$key" | tr '[:upper:]' '[:lower:]' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')"
    printf '%s=%s\n' "$key" "$value" >>"$CONFIG"
done < <(env | grep -E '^KAFKA_[A-Z0-9_]+=' | sort)
grep -q '^log.dirs=' "$CONFIG" || echo "log.dirs=/var/lib/kafka/data" >>"$CONFIG"

LOG_DIR="$(sed -n 's/^log.dirs=//p' "$CONFIG" | cut -d, -f1)"
CP="/opt/kafka/libs/*"
LOG4J="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties"
if [ ! -f "$LOG_DIR/meta.properties" ]; then
    java -Xmx256m $LOG4J -cp "$CP" kafka.tools.StorageTool format \
        -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$CONFIG" --ignore-formatted
fi
# shellcheck disable=SC2086  # the options are word lists
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC} \
    ${KAFKA_OPTS:-} -Djava.awt.headless=true -Dlog4j2.formatMsgNoLookups=true $LOG4J \
    -cp "$CP" kafka.Kafka "$CONFIG"
