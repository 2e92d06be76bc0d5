//! The Debian package: built by cargo-deb (scripts/package), unpacked into a
//! scratch root, its systemd unit verified, its maintainer scripts checked,
//! and its binary served with its own configuration file.
//!
//! `BIZCALL_TEST_DEB` names the package to test (scripts/test builds it);
//! without it this test runs scripts/package itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `.deb` to test: `BIZCALL_TEST_DEB`, or one scripts/package builds now.
fn package() -> PathBuf {
    if let Ok(path) = std::env::var("BIZCALL_TEST_DEB") {
        return PathBuf::from(path);
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = run(Command::new(format!("{root}/scripts/package")).current_dir(root));
    let path = out
        .lines()
        .last()
        .expect("scripts/package names the package");
    Path::new(root).join(path.trim())
}

/// The unpacked package: files under `root`, control files under `control`.
struct Unpacked {
    _dir: tempfile::TempDir,
    root: PathBuf,
    control: PathBuf,
}

fn unpack() -> Unpacked {
    let deb = package();
    assert!(deb.is_file(), "no package at {}", deb.display());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    Unpacked {
        _dir: dir,
        root,
        control,
    }
}

fn unit_path(root: &Path) -> PathBuf {
    ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("bizcall.service"))
        .find(|p| p.is_file())
        .expect("the package ships bizcall.service")
}

/// `Key=value` lines of a unit's `[Service]` section.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn package_contents_unit_and_maintainer_scripts() {
    let p = unpack();
    let bin = p.root.join("usr/bin/bizcall");
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("bizcall {}", env!("CARGO_PKG_VERSION"))
    );
    let conf = p.root.join("etc/bizcall/bizcall.toml");
    assert!(conf.is_file());
    let conffiles = std::fs::read_to_string(p.control.join("conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/bizcall/bizcall.toml"),
        "{conffiles}"
    );
    let control = std::fs::read_to_string(p.control.join("control")).unwrap();
    assert!(control.contains("Package: bizcall"), "{control}");
    assert!(
        control
            .lines()
            .any(|l| l.starts_with("Depends:") && l.contains("adduser")),
        "{control}"
    );

    // The unit: supervised, sandboxed, with room to drain on stop.
    let unit_file = unit_path(&p.root);
    let unit = std::fs::read_to_string(&unit_file).unwrap();
    let settings = service_settings(&unit);
    let get = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key}= missing from the unit:\n{unit}"))
    };
    assert_eq!(get("User"), "bizcall");
    assert_eq!(
        get("ExecStart"),
        "/usr/bin/bizcall --config /etc/bizcall/bizcall.toml serve"
    );
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("ProtectHome"), "yes");
    assert_eq!(get("PrivateTmp"), "yes");
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("StateDirectory"), "bizcall");
    assert_eq!(get("CapabilityBoundingSet"), "", "no capabilities at all");
    let nofile: u64 = get("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    let stop = humantime::parse_duration(get("TimeoutStopSec")).unwrap();
    // The drain: requests in flight, 3 s for tablets to leave, the bus flush.
    assert!(stop >= Duration::from_secs(20), "TimeoutStopSec={stop:?}");

    // systemd's own check, with ExecStart pointing into the scratch root
    // (the only change), so the binary it checks is the packaged one.
    let verify_dir = tempfile::tempdir().unwrap();
    let copy = verify_dir.path().join("bizcall.service");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/bin/bizcall",
            &format!("ExecStart={}", bin.display()),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // It reports problems it does not fail on; none may concern this unit.
    assert!(
        !said.lines().any(|l| l.contains("bizcall.service")),
        "systemd-analyze verify: {said}"
    );

    // Maintainer scripts as packaged (with cargo-deb's systemd snippets)
    // are valid sh.
    for script in ["postinst", "postrm", "prerm"] {
        let path = p.control.join(script);
        if script != "prerm" {
            assert!(path.is_file(), "the package has a {script}");
        }
        if path.is_file() {
            run(Command::new("sh").arg("-n").arg(&path));
        }
    }
    let postinst = std::fs::read_to_string(p.control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("systemctl") || postinst.contains("deb-systemd"),
        "{postinst}"
    );
}

/// Our postrm (without cargo-deb's systemd part) against a scratch root via
/// `DPKG_ROOT`: remove keeps configuration and data, purge deletes both.
#[test]
fn postrm_remove_keeps_and_purge_deletes() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/debian/postrm");
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/bizcall");
    let state = root.path().join("var/lib/bizcall");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(etc.join("bizcall.toml"), "[log]\nformat = \"json\"\n").unwrap();
    std::fs::write(state.join("bizcall.db"), "calls").unwrap();
    let postrm = |arg: &str| {
        Command::new("sh")
            .arg(&script)
            .arg(arg)
            .env("DPKG_ROOT", root.path())
            .status()
            .unwrap()
    };
    assert!(postrm("remove").success());
    assert!(
        etc.join("bizcall.toml").is_file(),
        "remove keeps the config"
    );
    assert!(state.join("bizcall.db").is_file(), "remove keeps the data");
    assert!(!postrm("nonsense").success());
    assert!(postrm("purge").success());
    assert!(!state.exists(), "purge deletes the data");
    assert!(!etc.exists(), "purge deletes the config");
    // A second purge (the files already gone) is fine too.
    assert!(postrm("purge").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaged_binary_serves_with_the_packaged_config() {
    let p = unpack();
    let bin = p.root.join("usr/bin/bizcall");
    let state = p.root.join("var/lib/bizcall");
    std::fs::create_dir_all(&state).unwrap();
    // The packaged file, with only its state path moved into the scratch root.
    let packaged = std::fs::read_to_string(p.root.join("etc/bizcall/bizcall.toml")).unwrap();
    let config = packaged.replace(
        "sqlite:///var/lib/bizcall/",
        &format!("sqlite://{}/", state.display()),
    );
    assert_ne!(config, packaged, "the packaged database path");
    let conf = p.root.join("etc/bizcall/bizcall.toml");
    std::fs::write(&conf, &config).unwrap();

    let cli = |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&conf)
            .args(args)
            .current_dir(&state)
            .env_remove("RUST_LOG")
            .env_remove("BIZCALL_SERVER__LISTEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&[
        "store",
        "add",
        "pkg",
        "--name",
        "Packaged Wash",
        "--number",
        "05012340000",
    ]);
    let token = cli(&["token", "issue", "pkg"]);
    assert!(
        state.join("bizcall.db").is_file(),
        "SQLite lives in the state directory"
    );

    // Its default address, unless another process on this shared machine
    // holds it (then a free one; everything else stays as packaged).
    let default_free = std::net::TcpListener::bind("127.0.0.1:8080").is_ok();
    let listen = if default_free {
        "127.0.0.1:8080"
    } else {
        "127.0.0.1:0"
    };
    if !default_free {
        eprintln!("127.0.0.1:8080 is busy; serving the packaged config on a free port");
    }
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&conf)
        .arg("serve")
        .current_dir(&state)
        .env("BIZCALL_SERVER__LISTEN", listen)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            log2.lock().unwrap().push(line);
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "the packaged binary did not start: {:?}",
                log.lock().unwrap()
            );
        }
    };
    if default_free {
        assert_eq!(addr, "127.0.0.1:8080");
    }
    let base = format!("http://{addr}");
    let http = common::http();

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "up", "{body}");
    let cdr = http
        .get(format!(
            "{base}/bizcall/cdr?seq=pkg1&sdt=20261122101500&fromn=01012345678&vn=05012340000&ton=021110000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(cdr.status(), 200);
    assert_eq!(cdr.text().await.unwrap(), "OK");
    let calls: serde_json::Value = http
        .get(format!("{base}/api/stores/pkg/calls"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls[0]["callId"], "pkg1", "{calls}");
    assert_eq!(calls[0]["store"], "pkg", "{calls}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit within TimeoutStopSec after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {:?}", log.lock().unwrap());
}
