# Sourced by scripts/test and scripts/package: the tools the production
# pieces are tested with (after scripts/services.sh, for say and apt_install).

# cargo-deb builds the Debian package; installed from crates.io when missing.
ensure_cargo_deb() {
    if ! cargo deb --version >/dev/null 2>&1; then
        say "installing cargo-deb (cargo install cargo-deb --locked)"
        cargo install cargo-deb --locked --quiet
    fi
}

# Installs Debian packages without starting their services: policy-rc.d
# (when there is none already) refuses every start during the install.
apt_install_stopped() {
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    local guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    apt_install "$@"
    if [ -n "$guard" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
}

# Debian's prometheus package gives promtool and the server the tests start
# on their own ports. Its own service must not stay running on port 9090:
# policy-rc.d keeps it from starting during the install, and it is stopped
# and disabled should it run all the same.
ensure_prometheus() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then return; fi
    apt_install_stopped prometheus
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
}

# systemd-analyze verifies the package's unit.
ensure_systemd_analyze() {
    command -v systemd-analyze >/dev/null || apt_install systemd
}

# PgBouncer 1.21 or later for tests/cluster.rs (the first release that keeps
# named prepared statements apart between clients in transaction mode).
# Debian's own when its candidate is new enough (Debian 13 has 1.24);
# Debian 12 has 1.18, so there Debian 13's build is unpacked (not installed)
# with the C library and the other libraries it needs, and run by that
# library's loader through a wrapper script. Exports BIZCALL_TEST_PGBOUNCER.
ensure_pgbouncer() {
    [ -z "${BIZCALL_TEST_PGBOUNCER:-}" ] || return 0
    local candidate
    candidate=$(apt-cache policy pgbouncer 2>/dev/null | awk '/Candidate:/ { print $2 }')
    if [ -x /usr/sbin/pgbouncer ] && /usr/sbin/pgbouncer -V | awk 'NR == 1 { split($2, v, "."); exit !(v[1] > 1 || v[2] >= 21) }'; then
        export BIZCALL_TEST_PGBOUNCER=/usr/sbin/pgbouncer
        return 0
    fi
    if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && dpkg --compare-versions "$candidate" ge 1.21; then
        # Its service must not start: the tests run their own.
        apt_install_stopped pgbouncer
        export BIZCALL_TEST_PGBOUNCER=/usr/sbin/pgbouncer
        return 0
    fi
    # Readable by the unprivileged user the tests run PgBouncer as.
    local dir
    if [ "$(id -u)" = 0 ]; then dir=/var/cache/bizcall-test/pgbouncer-trixie; else dir=${XDG_CACHE_HOME:-$HOME/.cache}/bizcall-test/pgbouncer-trixie; fi
    if [ ! -x "$dir/pgbouncer" ] || ! "$dir/pgbouncer" -V >/dev/null 2>&1; then
        say "fetching PgBouncer from Debian 13 into $dir (Debian's here is ${candidate:-missing}; the tests need 1.21 or later)"
        rm -rf "$dir"
        mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/debs" "$dir/root"
        echo "deb http://deb.debian.org/debian trixie main" >"$dir/apt/sources.list"
        local opts=(-o "Dir::Etc::SourceList=$dir/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State=$dir/apt" -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache=$dir/apt/cache"
            -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq)
        apt-get "${opts[@]}" update
        (cd "$dir/debs" && apt-get "${opts[@]}" download pgbouncer libc6 libssl3t64 libevent-2.1-7t64 \
            libcares2 libsystemd0 libpam0g libcap2 libgcrypt20 libgpg-error0 liblz4-1 liblzma5 \
            libzstd1 libaudit1 libcap-ng0)
        for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
        rm -rf "$dir/apt" "$dir/debs"
        local loader
        loader=$(ls "$dir"/root/usr/lib/*/ld-linux*.so.* | head -n1)
        cat >"$dir/pgbouncer" <<WRAPPER
#!/bin/sh
# PgBouncer from Debian 13, run by its own C library's loader.
exec "$loader" --library-path "$(dirname "$loader")" "$dir/root/usr/sbin/pgbouncer" "\$@"
WRAPPER
        chmod -R a+rX "$dir"
        chmod 755 "$dir/pgbouncer"
        [ "$(id -u)" != 0 ] || chmod a+rx /var/cache/bizcall-test
    fi
    "$dir/pgbouncer" -V | head -n1 >&2
    export BIZCALL_TEST_PGBOUNCER=$dir/pgbouncer
}
