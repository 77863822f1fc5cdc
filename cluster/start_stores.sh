#!/usr/bin/env bash
# Starts the stores of farm-sweep studies on the Ray head node; a head start command of ray_cluster.yaml and
# ray_cluster_local.yaml (docs/cluster.md). It starts only what is not running, so it runs again on every
# `ray up`, and stop_stores.sh stops what it started.
#
#   PostgreSQL   a database `mlflow` and a database `optuna` (the two stores cannot share one). Unless
#                FARM_DATABASE_URL names a managed server (postgresql://USER@HOST:PORT, its password in this
#                user's ~/.pgpass), a PostgreSQL cluster of this user in ~/farm-postgres, on the head's own disk
#                (never the shared folder), listening on 127.0.0.1:FARM_POSTGRES_PORT (default 5433) only, its
#                password generated on first start and kept in ~/.pgpass alone.
#   MLflow       `mlflow server` on FARM_MLFLOW_HOST (default: the head's first address; workers reach it, the
#                internet does not), port FARM_MLFLOW_PORT (default 5000), its runs in the `mlflow` database, its
#                artifacts in $FARM_SHARED/mlflow/artifacts (FARM_SHARED: the folder every node mounts, default
#                /mnt/shared).
#
# The study command finds both in ~/farm-stores.env, which ~/.bashrc sources: FARM_TRACKING_URI (the MLflow
# server) and FARM_OPTUNA_STORAGE (Optuna's database), URLs without passwords: PostgreSQL's client reads
# ~/.pgpass.
set -euo pipefail

shared=${FARM_SHARED:-/mnt/shared}
mlflow_host=${FARM_MLFLOW_HOST:-$(hostname -I | awk '{print $1}')}
mlflow_port=${FARM_MLFLOW_PORT:-5000}
postgres=$HOME/farm-postgres

postgres_bin() {
    local found
    found=$(command -v initdb 2> /dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2> /dev/null | sort -V | tail -n 1)
    [ -n "$found" ] || { echo "start_stores.sh: PostgreSQL is not installed (Debian, Ubuntu: apt-get install postgresql)" >&2; exit 1; }
    dirname "$(readlink -f "$found")"
}

start_own_postgres() {
    local bin port password
    bin=$(postgres_bin)
    port=${FARM_POSTGRES_PORT:-5433}
    if [ ! -s "$postgres/PG_VERSION" ]; then
        password=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
        (umask 077 && printf '%s\n' "$password" > ~/.farm-postgres-password)
        "$bin/initdb" -D "$postgres" -U farm --pwfile="$HOME/.farm-postgres-password" --auth=scram-sha-256 \
            --encoding=UTF8 > /dev/null
        rm -f ~/.farm-postgres-password
        (umask 077 && touch ~/.pgpass)
        printf '127.0.0.1:%s:*:farm:%s\n' "$port" "$password" >> ~/.pgpass
    fi
    if ! "$bin/pg_ctl" -D "$postgres" status > /dev/null 2>&1; then
        "$bin/pg_ctl" -D "$postgres" -l "$postgres/server.log" -w start \
            -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$postgres" > /dev/null
    fi
    database_url=postgresql://farm@127.0.0.1:$port
    psql="$bin/psql"
}

create_databases() {
    local name
    for name in mlflow optuna; do
        if [ -z "$("$psql" "$database_url/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
            "$psql" "$database_url/postgres" -qc "CREATE DATABASE $name"
        fi
    done
}

start_mlflow_server() {
    if [ -f ~/mlflow_server.pid ] && kill -0 "$(cat ~/mlflow_server.pid)" 2> /dev/null; then
        return
    fi
    mkdir -p "$shared/mlflow/artifacts"
    # MLflow's job runners (seven processes) serve its GenAI features, which studies do not use.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup ~/venv/bin/mlflow server --host "$mlflow_host" --port "$mlflow_port" \
        --backend-store-uri "$database_url/mlflow" --artifacts-destination "$shared/mlflow/artifacts" \
        > ~/mlflow_server.log 2>&1 < /dev/null &
    echo $! > ~/mlflow_server.pid   # the leader of a process group of its own: its web workers stop with it
    ~/venv/bin/python - "http://$mlflow_host:$mlflow_port/health" << 'EOF'
import sys, time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit(f"start_stores.sh: the MLflow server does not answer at {sys.argv[1]}; see ~/mlflow_server.log")
EOF
}

if [ -n "${FARM_DATABASE_URL:-}" ]; then
    database_url=${FARM_DATABASE_URL%/}
    psql=$(command -v psql || echo "$(postgres_bin)/psql")
else
    start_own_postgres
fi
create_databases
start_mlflow_server
cat > ~/farm-stores.env << EOF
export FARM_TRACKING_URI=http://$mlflow_host:$mlflow_port
export FARM_OPTUNA_STORAGE=$database_url/optuna
EOF
echo "stores: MLflow http://$mlflow_host:$mlflow_port, Optuna $database_url/optuna"
