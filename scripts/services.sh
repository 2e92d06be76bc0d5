# Sourced by scripts/test, scripts/bench, scripts/package and
# scripts/readme-smoke: install what is missing (Debian packages), start
# RabbitMQ when it is not running, and find or start a PostgreSQL the tests
# may use (ensure_test_pg).
#
# Clean-up at exit: a script that sources this file sets no EXIT trap of its
# own; it adds its clean-up with `on_exit <command>`, as start_throwaway_pg
# does. One EXIT trap runs every command added, the last added first. A
# clean-up command must not call `exit` (that would skip the ones after it).

say() { printf '==> %s\n' "$*" >&2; }

ON_EXIT=()
on_exit() {
    ON_EXIT+=("$1")
    trap run_on_exit EXIT
}

# The EXIT trap. Each command sees the script's exit status in $?, a failing
# one does not keep the others from running, and the script exits with its
# own status.
run_on_exit() {
    local status=$? i
    for ((i = ${#ON_EXIT[@]} - 1; i >= 0; i--)); do
        { (exit "$status"); eval "${ON_EXIT[i]}"; } || true
    done
    ON_EXIT=()
    exit "$status"
}

apt_install() {
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    say "installing $*"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2 i
    for i in $(seq 1 120); do
        port_open "$port" && return 0
        sleep 1
    done
    say "$what did not come up on port $port"; exit 1
}

ensure_rabbitmq() {
    if port_open 5672; then return; fi
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server
    fi
    say "starting RabbitMQ"
    rabbitmq-server -detached || true
    wait_port 5672 RabbitMQ
    rabbitmqctl await_startup >/dev/null 2>&1 || true
}

# PostgreSQL for the tests (and benchmarks), without changing any existing
# server: BIZCALL_TEST_PG when set; else the server on 127.0.0.1:5432 when
# the postgres role logs in there without a password; else a throwaway
# cluster of our own (initdb in a temporary directory, trust
# authentication, a free port), stopped and removed when the script exits.
# Exports BIZCALL_TEST_PG either way.
ensure_test_pg() {
    [ -z "${BIZCALL_TEST_PG:-}" ] || return 0
    local default=postgres://postgres@127.0.0.1:5432/postgres
    command -v psql >/dev/null || apt_install postgresql-client
    if port_open 5432 && psql "$default" -qAtc 'SELECT 1' >/dev/null 2>&1; then
        export BIZCALL_TEST_PG=$default
        return 0
    fi
    if port_open 5432; then
        say "PostgreSQL on 127.0.0.1:5432 asks the postgres role for a password; the tests use a throwaway PostgreSQL instead"
    else
        say "no PostgreSQL on 127.0.0.1:5432; the tests use a throwaway PostgreSQL"
    fi
    start_throwaway_pg
}

THROWAWAY_PG=
start_throwaway_pg() {
    local bindir port
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    if [ ! -x "$bindir/initdb" ]; then
        apt_install postgresql
        bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    fi
    port=55432
    while port_open "$port"; do port=$((port + 1)); done
    THROWAWAY_PG=$(mktemp -d /tmp/bizcall-test-pg.XXXXXX)
    # initdb refuses to run as root: run the cluster as the postgres user.
    PG_AS=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$THROWAWAY_PG"
        PG_AS=(runuser -u postgres --)
    fi
    "${PG_AS[@]}" "$bindir/initdb" -D "$THROWAWAY_PG/data" -A trust -U postgres -E UTF8 --no-sync \
        >"$THROWAWAY_PG/initdb.log" 2>&1 || { cat "$THROWAWAY_PG/initdb.log" >&2; exit 1; }
    "${PG_AS[@]}" "$bindir/pg_ctl" -D "$THROWAWAY_PG/data" -l "$THROWAWAY_PG/server.log" -w \
        -o "-p $port -k $THROWAWAY_PG -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
        start >/dev/null || { cat "$THROWAWAY_PG/server.log" >&2; exit 1; }
    PG_CTL="$bindir/pg_ctl"
    on_exit stop_throwaway_pg
    export BIZCALL_TEST_PG="postgres://postgres@127.0.0.1:$port/postgres"
    say "throwaway PostgreSQL at $BIZCALL_TEST_PG ($THROWAWAY_PG)"
}

stop_throwaway_pg() {
    [ -n "$THROWAWAY_PG" ] || return 0
    "${PG_AS[@]}" "$PG_CTL" -D "$THROWAWAY_PG/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$THROWAWAY_PG"
    THROWAWAY_PG=
}
