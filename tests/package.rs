//! The Debian package, as an operator meets it: `deploy/debian/build.sh` builds it with
//! cargo-deb (of the debug binary this suite built), `dpkg -i` installs it on this machine,
//! the default config passes `switchyard check`, `systemd-analyze verify` accepts the unit,
//! the installed binary runs as the package's user and relays a WebSocket, and removing the
//! package keeps the operator's edited config (a conffile) until a purge.
//!
//! It changes the machine (a package, a system user), so it runs only as root with dpkg and
//! cargo-deb at hand, and says so otherwise; under CI (where `.ci/run` installs cargo-deb)
//! a missing tool is a failure.

mod common;
use common::*;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ready() -> bool {
    let root = run("id", &["-u"]).1.trim() == "0";
    let tools = ["dpkg", "cargo-deb", "systemd-analyze", "runuser", "gzip"].iter().all(|t| have(t));
    if !(root && tools) {
        assert!(
            std::env::var_os("CI").is_none(),
            "the package test needs root, dpkg, cargo-deb, systemd-analyze and runuser under CI"
        );
        eprintln!("skipping the package test: needs root ({root}) and dpkg, cargo-deb, systemd-analyze, runuser ({tools})");
    }
    root && tools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_runs_as_its_user_and_keeps_the_config_on_remove() {
    if !ready() {
        return;
    }
    bounded(async {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        // A package left by an earlier run goes first (its conffile too).
        let _ = run("dpkg", &["--purge", "switchyard"]);
        let out = Command::new(repo.join("deploy/debian/build.sh"))
            .env("PROFILE", "dev")
            .output()
            .expect("build.sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "build.sh failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deb = stdout.lines().last().unwrap_or("").trim().to_string();
        assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "no package: {stdout}");

        // What the package holds: the conffile, the unit, the man page, the completions.
        let (ok, conffiles) = run("sh", &["-c", &format!("dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles")]);
        assert!(ok, "{conffiles}");
        assert_eq!(conffiles.trim(), "/etc/switchyard/switchyard.yaml");
        let (ok, text) = run("dpkg", &["-i", &deb]);
        assert!(ok, "dpkg -i failed: {text}");
        let _purge = Purge;
        assert!(run("getent", &["passwd", "switchyard"]).0, "the package made its system user");
        let (ok, text) = run("/usr/bin/switchyard", &["check", "/etc/switchyard/switchyard.yaml"]);
        assert!(ok && text.trim() == "ok", "the default config: {text}");
        let (ok, text) = run("systemd-analyze", &["verify", "/usr/lib/systemd/system/switchyard.service"]);
        assert!(ok, "systemd-analyze verify: {text}");
        assert!(!text.contains("is not executable"), "the unit's commands exist: {text}");
        let unit = std::fs::read_to_string("/usr/lib/systemd/system/switchyard.service").unwrap();
        for line in [
            "ExecReload=/bin/kill -HUP $MAINPID",
            "TimeoutStopSec=45s",
            "User=switchyard",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "LimitNOFILE=",
        ] {
            assert!(unit.contains(line), "the unit lacks {line}");
        }
        let (ok, man) = run("sh", &["-c", "gzip -dc /usr/share/man/man1/switchyard.1.gz"]);
        assert!(ok && man.contains(".TH switchyard 1"), "man page: {man}");
        let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/switchyard").unwrap();
        assert!(
            bash.contains("complete -F _switchyard") && bash.contains("completions"),
            "bash completion"
        );
        assert!(Path::new("/usr/share/zsh/vendor-completions/_switchyard").exists());
        assert!(Path::new("/usr/share/fish/vendor_completions.d/switchyard.fish").exists());

        // The installed binary, as the package's user, in front of a backend: a WebSocket
        // echoes through it.
        let be = backend("installed").await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let cfg = dir.path().join("sy.yaml");
        std::fs::write(&cfg, config("round_robin", &[be.addr], "")).unwrap();
        std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let mut child = Proc(
            Command::new("runuser")
                .args(["-u", "switchyard", "--", "/usr/bin/switchyard", "run", "-c"])
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("runuser runs"),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the installed binary says where it listens");
            if let Some(u) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                break u.trim_end_matches('/').to_string();
            }
        };
        let mut ws = connect(&format!("{url}/installed")).await;
        assert_eq!(ask(&mut ws, "hello through the package").await, "hello through the package");
        // It runs as the package's user, not root.
        let uid = run("id", &["-u", "switchyard"]).1.trim().to_string();
        let pids = run("pgrep", &["-u", "switchyard", "-f", "/usr/bin/switchyard run"]).1;
        assert!(!pids.trim().is_empty(), "a switchyard process owned by uid {uid}");
        drop(ws);
        drop(child);

        // Remove keeps the operator's edit of the conffile; purge removes it.
        let conf = "/etc/switchyard/switchyard.yaml";
        let edited = format!("{}# edited by the operator\n", std::fs::read_to_string(conf).unwrap());
        std::fs::write(conf, &edited).unwrap();
        let (ok, text) = run("dpkg", &["-r", "switchyard"]);
        assert!(ok, "dpkg -r: {text}");
        assert!(!Path::new("/usr/bin/switchyard").exists(), "the binary goes with remove");
        assert_eq!(
            std::fs::read_to_string(conf).unwrap(),
            edited,
            "remove keeps the conffile as edited"
        );
        let (ok, text) = run("dpkg", &["--purge", "switchyard"]);
        assert!(ok, "dpkg --purge: {text}");
        assert!(!Path::new(conf).exists(), "purge removes the conffile");
    })
    .await
}

/// Purges the package when the test ends, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "switchyard"]).output();
    }
}
