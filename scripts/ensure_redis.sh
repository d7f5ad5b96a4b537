#!/usr/bin/env bash
# Make sure a Redis server binary is available (the rollout cache's cluster backend and its tests need one).
# Installs Debian's redis-server package when `redis-server` is missing; does nothing otherwise.
# It only installs: nothing is started here. gepa_lab starts redis-server itself when a sweep asks for it
# (cache.start_redis=true: gepa_lab.servers.redis.RedisServer, on a free port, no persistence, stopped at the end),
# and the tests start and stop their own. To run a long-lived shared one instead:
#   redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no
# and give the sweep cache.redis_url=redis://HOST:6379/0.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  echo "redis-server: $(command -v redis-server) ($(redis-server --version | awk '{print $3}'))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "redis-server is missing and this user cannot install packages: apt-get install redis-server" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing and apt-get is not available: install Redis (>= 6) with your package manager" >&2
  exit 1
fi
echo "installing redis-server (Debian package)..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# the package may start a system service on :6379; gepa_lab does not use it
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
$SUDO service redis-server stop >/dev/null 2>&1 || true
echo "redis-server: $(command -v redis-server) ($(redis-server --version | awk '{print $3}'))"
