#!/usr/bin/env bash
# Stops, by process id, what start_stores.sh started on the head: the MLflow server and this user's PostgreSQL
# cluster (a managed database is left alone). Their data stay; start_stores.sh starts them again.
#   ray exec ray_cluster_local.yaml '~/farm-sweep/cluster/stop_stores.sh'   # before `ray down`
set -euo pipefail

if [ -f ~/mlflow_server.pid ]; then
    pid=$(cat ~/mlflow_server.pid)
    if kill -0 "$pid" 2> /dev/null; then
        kill -TERM -- "-$pid"   # its process group: the server and its web workers
        for _ in $(seq 60); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2> /dev/null || true
    fi
    rm -f ~/mlflow_server.pid
fi
if [ -f ~/farm-postgres/postmaster.pid ]; then
    pid=$(head -n 1 ~/farm-postgres/postmaster.pid)
    kill -INT "$pid" 2> /dev/null || true   # fast shutdown: open connections are closed
    for _ in $(seq 60); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
fi
