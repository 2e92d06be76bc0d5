# Sourced by scripts/test and scripts/bench: start PostgreSQL and RabbitMQ
# when they are not running, install them (Debian packages) when missing.

say() { printf '==> %s\n' "$*" >&2; }

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

ensure_postgres() {
    if port_open 5432; then return; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 PostgreSQL
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

# The tests connect as the postgres role over TCP. A stock Debian install
# asks for a password there; give the role one the tests know.
ensure_pg_login() {
    if [ -z "${BIZCALL_TEST_PG:-}" ]; then
        if ! psql "postgres://postgres@127.0.0.1:5432/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1; then
            say "setting a password for the postgres role (TCP login for tests)"
            su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null
            export BIZCALL_TEST_PG="postgres://postgres:postgres@127.0.0.1:5432/postgres"
        fi
    fi
}
