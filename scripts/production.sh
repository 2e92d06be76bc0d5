# Sourced by scripts/test and scripts/package: the tools the production
# pieces are tested with (after scripts/services.sh, for say and apt_install).

# cargo-deb builds the Debian package; installed from crates.io when missing.
ensure_cargo_deb() {
    if ! cargo deb --version >/dev/null 2>&1; then
        say "installing cargo-deb (cargo install cargo-deb --locked)"
        cargo install cargo-deb --locked --quiet
    fi
}

# Debian's prometheus package gives promtool and the server the tests start
# on their own ports. Its own service must not stay running on port 9090:
# policy-rc.d keeps it from starting during the install, and it is stopped
# and disabled should it run all the same.
ensure_prometheus() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then return; fi
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    local guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        guard=1
    fi
    apt_install prometheus
    if [ -n "$guard" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    fi
}

# systemd-analyze verifies the package's unit.
ensure_systemd_analyze() {
    command -v systemd-analyze >/dev/null || apt_install systemd
}
