//! The processes the chaos run drives: echo backends (killed with SIGKILL and restarted on
//! the same address), the balancer (`switchyard run`, reloaded by SIGHUP or its admin API),
//! and what /proc says about the balancer's memory and descriptors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

type Res<T> = Result<T, String>;

/// Reads the child's stdout up to the line starting with `prefix`; returns that line.
async fn line_starting(out: &mut tokio::io::Lines<BufReader<ChildStdout>>, prefix: &str) -> Res<String> {
    let wait = async {
        while let Some(l) = out.next_line().await.map_err(|e| e.to_string())? {
            if l.starts_with(prefix) {
                return Ok(l);
            }
        }
        Err(format!("exited before printing {prefix:?}"))
    };
    timeout(Duration::from_secs(15), wait)
        .await
        .map_err(|_| format!("no {prefix:?} line within 15 s"))?
}

fn log_file(path: &Path) -> Res<Stdio> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Stdio::from(f))
}

/// One echo backend process (`examples/backend.rs`) on its own loopback address.
pub struct Backend {
    pub addr: SocketAddr,
    pub pid: u32,
    bin: PathBuf,
    log: PathBuf,
    child: Option<(Child, tokio::io::Lines<BufReader<ChildStdout>>)>,
}

impl Backend {
    /// Starts a backend on `bind` (port 0 = a free one, kept for every restart).
    pub async fn start(bin: &Path, bind: SocketAddr, log: PathBuf) -> Res<Backend> {
        let mut b = Backend {
            addr: bind,
            pid: 0,
            bin: bin.to_path_buf(),
            log,
            child: None,
        };
        b.spawn().await?;
        Ok(b)
    }

    async fn spawn(&mut self) -> Res<()> {
        let mut child = Command::new(&self.bin)
            .arg(self.addr.to_string())
            .stdout(Stdio::piped())
            .stderr(log_file(&self.log)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        let line = line_starting(&mut lines, "echo backend on ws://").await?;
        let addr = line["echo backend on ws://".len()..].split('/').next().unwrap_or_default();
        self.addr = addr.parse().map_err(|_| format!("unreadable backend line {line:?}"))?;
        self.pid = child.id().unwrap_or(0);
        self.child = Some((child, lines));
        Ok(())
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(&mut self) {
        if let Some((mut c, _)) = self.child.take() {
            let _ = c.start_kill(); // SIGKILL on Unix
            let _ = c.wait().await;
        }
    }

    /// Starts the backend again on the same address, retrying for a while if the address is
    /// still taken. Returns how many attempts it took.
    pub async fn restart(&mut self) -> Res<u32> {
        let mut last = String::new();
        for attempt in 1..=20 {
            match self.spawn().await {
                Ok(()) => return Ok(attempt),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!("backend {} did not restart: {last}", self.addr))
    }
}

/// The balancer under test, a `switchyard run` child process.
pub struct Balancer {
    pub pid: u32,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Balancer {
    /// Writes `config` and starts the balancer on it; waits for its `admin` line.
    pub async fn start(bin: &Path, dir: &Path, config: &str, listen: SocketAddr, admin: SocketAddr) -> Res<Balancer> {
        let cfg_path = dir.join("switchyard.yaml");
        std::fs::write(&cfg_path, config).map_err(|e| e.to_string())?;
        let log = dir.join("switchyard.log");
        let mut child = Command::new(bin)
            .args(["--log-format", "json", "run", "-c"])
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file(&log)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        line_starting(&mut lines, "admin http://").await?;
        // keep reading so a later line never blocks the balancer on a full pipe
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Balancer {
            pid: child.id().unwrap_or(0),
            listen,
            admin,
            config: cfg_path,
            log,
            child,
        })
    }

    /// Replaces the config file (written aside, then renamed over it).
    pub fn write_config(&self, text: &str) -> Res<()> {
        let aside = self.config.with_extension("yaml.new");
        std::fs::write(&aside, text).map_err(|e| e.to_string())?;
        std::fs::rename(&aside, &self.config).map_err(|e| e.to_string())
    }

    /// Asks for a reload by SIGHUP (the result shows in the reload counter).
    pub fn sighup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGHUP) };
    }

    /// One admin request; returns status and body.
    pub async fn admin(&self, method: &str, path: &str) -> Res<(u16, String)> {
        let ask = async {
            let mut s = tokio::net::TcpStream::connect(self.admin).await.map_err(|e| e.to_string())?;
            // HTTP/1.0: the answer ends with the connection, never chunked
            let req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
            s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let status = text.get(9..12).and_then(|s| s.parse().ok()).ok_or("no status line")?;
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            Ok((status, body))
        };
        timeout(Duration::from_secs(10), ask)
            .await
            .map_err(|_| "admin request timed out".to_string())?
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Res<String> {
        match self.admin("GET", "/metrics").await? {
            (200, body) => Ok(body),
            (s, _) => Err(format!("/metrics answered {s}")),
        }
    }

    /// SIGTERM (graceful drain) and the exit status, or SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        match timeout(grace, self.child.wait()).await {
            Ok(Ok(st)) => st.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                let _ = self.child.start_kill();
                format!("did not exit within {grace:?} of SIGTERM (killed)")
            }
        }
    }
}

/// A process's resident memory (kB; all of it, and the anonymous part: heap and stacks,
/// not the pages of its executable and libraries) and open descriptors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rss: u64,
    pub anon: u64,
    pub fds: u64,
}

impl Sample {
    /// Field by field maximum.
    pub fn max(self, o: Sample) -> Sample {
        Sample {
            rss: self.rss.max(o.rss),
            anon: self.anon.max(o.anon),
            fds: self.fds.max(o.fds),
        }
    }

    /// Field by field minimum.
    pub fn min(self, o: Sample) -> Sample {
        Sample {
            rss: self.rss.min(o.rss),
            anon: self.anon.min(o.anon),
            fds: self.fds.min(o.fds),
        }
    }
}

/// What /proc says about `pid` now.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        rss: kb("VmRSS:")?,
        anon: kb("RssAnon:")?,
        fds,
    })
}

/// User + system CPU seconds a process used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name (which may hold spaces) start at state, field 3
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The sum of a metric's samples whose line contains every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A free port on 127.0.0.1 (bound and released: the balancer binds it right after).
pub fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}
