#!/usr/bin/env bash
# Sets up one node of a farm-sweep Ray cluster; the setup command of ray_cluster.yaml and ray_cluster_local.yaml
# (docs/cluster.md). The cluster launcher has copied the project to ~/farm-sweep; this installs it into ~/venv
# (with PostgreSQL's client, the `postgres` extra) and makes ~/.bashrc, which the launcher sources before every
# command it runs, activate that venv and read the cluster's settings (~/farm-sweep/cluster.env) and the URLs
# of the stores the head started (~/farm-stores.env, written by start_stores.sh).
set -euo pipefail

[ -x ~/venv/bin/python ] || python3 -m venv ~/venv
# The project is installed editable: the code the launcher copies is used as it is, and it is installed again only
# when pyproject.toml (its dependencies) changed since, so `ray up` on set-up nodes skips it.
installed=~/venv/.farm-sweep-installed
if ! sha256sum --status -c "$installed" 2> /dev/null; then
    ~/venv/bin/pip install -q -e "$HOME/farm-sweep[postgres]"   # the driver and the MLflow server use PostgreSQL
    sha256sum ~/farm-sweep/pyproject.toml > "$installed"
fi

grep -q '# farm-sweep' ~/.bashrc 2> /dev/null || cat >> ~/.bashrc << 'EOF'
# farm-sweep
source ~/venv/bin/activate
export FARM_DATA_DIR=${FARM_DATA_DIR:-$HOME/data}
if [ -f ~/farm-sweep/cluster.env ]; then set -a; source ~/farm-sweep/cluster.env; set +a; fi
if [ -f ~/farm-stores.env ]; then source ~/farm-stores.env; fi
EOF
