//! A real nginx in front of test instances, configured from the same
//! template (`deploy/nginx.conf.template`) that `scripts/cluster` renders.

use std::path::Path;
use std::time::Duration;

/// A running nginx, stopped (SIGTERM to the master) on drop.
pub struct Nginx {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on `127.0.0.1:<free port>` balancing over `upstreams`
    /// (ports on 127.0.0.1, each out of the rotation for a second after a
    /// failure), and waits until `/healthz` answers through it.
    pub async fn start(upstreams: &[u16]) -> Nginx {
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        Nginx::start_servers(&servers).await
    }

    /// The same with the upstream block's `server` lines as given.
    pub async fn start_servers(servers: &str) -> Nginx {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "nginx is missing: apt-get install nginx (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("nginx dir");
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.path().join("tmp").join(sub)).expect("nginx tmp");
        }
        let port = super::free_port();
        let conf = include_str!("../../deploy/nginx.conf.template")
            .replace("@DIR@", dir.path().to_str().expect("utf-8 path"))
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@USER@", "user root;")
            .replace("@SERVERS@", servers);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = std::process::Command::new("/usr/sbin/nginx")
            .args([
                "-p",
                dir.path().to_str().expect("utf-8 path"),
                "-c",
                conf_path.to_str().expect("utf-8 path"),
                "-g",
                "daemon off;",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx");
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        let base = nginx.base();
        super::eventually(Duration::from_secs(10), "nginx up", || {
            let base = base.clone();
            async move {
                super::http()
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        nginx
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
