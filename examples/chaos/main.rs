//! Chaos and soak run (issue 13): thousands of long-lived connections with mixed traffic
//! through a `switchyard run` child process while its backends (separate processes) are
//! killed with SIGKILL and restarted, the config is reloaded, a reconnect storm and slowloris
//! heads hit the listener. Prints a table of what happened and a verdict per criterion;
//! exits 1 when one fails. Run it through `benches/chaos.sh`, which builds everything.
//!
//! `chaos SWITCHYARD_BIN BACKEND_BIN [DIR]`, settings from the environment (see [`Params`]).

mod attack;
mod clients;
mod procs;
mod report;
mod round;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procs::{Backend, Balancer, Sample};

/// Settings, each from the environment variable of its name in capitals.
#[derive(Clone)]
pub struct Params {
    /// long-lived client connections
    pub conns: usize,
    /// seconds from the first connection to the end of the traffic
    pub duration: u64,
    /// seconds of the warm-up round before the measured one (0 = none)
    pub warmup: u64,
    /// slowloris connections held open at once (each cut and reopened)
    pub slowloris: usize,
    /// seconds between two backend kills (0 = none)
    pub kill_every: u64,
    /// seconds a killed backend stays down
    pub restart_after: u64,
    /// config reloads spread over the run
    pub reloads: u32,
    /// backend processes
    pub backends: usize,
    /// new client connections per second while the clients start
    pub rate: u64,
    /// the balancer's `max_connections_per_second`
    pub limit: u64,
    /// the storm's attempt rate as a multiple of `limit`
    pub storm_x: u64,
    /// seconds the storm lasts
    pub storm_secs: u64,
    /// concurrent storm workers
    pub storm_workers: usize,
    /// the balancer's `handshake_timeout`, seconds
    pub handshake_timeout: u64,
    /// milliseconds between two bytes of a slowloris head
    pub slow_byte_ms: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Params {
    fn from_env() -> Params {
        Params {
            conns: env("CONNS", 8000) as usize,
            duration: env("DURATION", 600),
            warmup: env("WARMUP", 60),
            slowloris: env("SLOWLORIS", 2000) as usize,
            kill_every: env("KILL_EVERY", 30),
            restart_after: env("RESTART_AFTER", 5),
            reloads: env("RELOADS", 20) as u32,
            backends: env("BACKENDS", 4).max(2) as usize,
            rate: env("RATE", 400).max(1),
            limit: env("LIMIT", 1000).max(1),
            storm_x: env("STORM_X", 10),
            storm_secs: env("STORM_SECS", 10),
            storm_workers: env("STORM_WORKERS", 64).max(1) as usize,
            handshake_timeout: env("HANDSHAKE_TIMEOUT", 10),
            slow_byte_ms: env("SLOW_BYTE_MS", 2000),
        }
    }

    /// Kill times (s from the start): every `kill_every`, each leaving time for the restart
    /// and the reconnects before the end.
    fn kill_times(&self) -> Vec<u64> {
        if self.kill_every == 0 {
            return Vec::new();
        }
        (1..)
            .map(|k| k * self.kill_every)
            .take_while(|t| t + self.restart_after + 10 <= self.duration)
            .collect()
    }

    /// When the storm starts and how long it lasts: after the kill nearest the middle, once
    /// that backend is back and its clients reconnected, and over before the next kill (a
    /// rate limiter cannot tell a storm from clients reconnecting after a kill).
    fn storm_window(&self) -> (u64, u64) {
        let kills = self.kill_times();
        let mid = self.duration / 2;
        let start = match kills.iter().min_by_key(|t| t.abs_diff(mid)) {
            Some(t) => t + self.restart_after + 3,
            None => mid,
        };
        let room = if kills.is_empty() {
            self.storm_secs
        } else {
            self.kill_every.saturating_sub(self.restart_after + 5)
        };
        (start, self.storm_secs.min(room).min(self.duration.saturating_sub(start)))
    }

    /// Slowloris heads trickle in over the middle half of the run.
    fn slowloris_window(&self) -> (u64, u64) {
        (self.duration / 4, self.duration * 3 / 4)
    }
}

/// The balancer's config. `round` 0 is the first; each reload changes weights and alternates
/// the algorithm (both apply to new connections only).
fn config(p: &Params, listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr], round: u32) -> String {
    let algorithm = if round % 2 == 1 { "round_robin" } else { "least_connections" };
    let mut y = vec![
        format!("# chaos run, round {round}"),
        "listeners:".into(),
        "  - name: chaos".into(),
        format!("    bind: \"{listen}\""),
        "    routes:".into(),
        "      - pool: echo".into(),
        "admin:".into(),
        format!("  bind: \"{admin}\""),
        "pools:".into(),
        "  echo:".into(),
        format!("    algorithm: {algorithm}"),
        "    backends:".into(),
    ];
    for (i, b) in backends.iter().enumerate() {
        let weight = if round == 0 { 1 } else { 1 + (i as u32 + round) % 3 };
        y.push(format!("      - address: \"{b}\""));
        y.push(format!("        weight: {weight}"));
    }
    let rest = [
        "    health_check:",
        "      kind: websocket",
        "      path: /health",
        "      interval: 1s",
        "      timeout: 500ms",
        "      rise: 2",
        "      fall: 2",
        "    slow_start: 5s",
        "    connect_timeout: 1s",
        "    max_attempts: 3",
        "limits:",
    ];
    y.extend(rest.iter().map(|l| l.to_string()));
    // 2 descriptors per proxied connection, 20,000 per process here: the cap keeps the
    // balancer clear of EMFILE with the slowloris sockets on top
    y.push(format!("  max_connections: {}", p.conns + 1000));
    y.push(format!("  max_connections_per_second: {}", p.limit));
    y.push(format!("  handshake_timeout: {}s", p.handshake_timeout));
    let tail = [
        "  idle_timeout: 5m",
        "  ping_interval: 30s",
        "  ping_timeout: 10s",
        "process:",
        "  access_log: false",
        "",
    ];
    y.extend(tail.iter().map(|l| l.to_string()));
    y.join("\n")
}

/// The lowest of a few samples a fifth of a second apart (a health check in flight holds a
/// descriptor for a moment).
/// Keeps the balancer's memory map (`/proc/PID/smaps`) and thread list in the run's folder
/// as `smaps-LABEL.txt`, to tell afterwards which mappings grew between two points.
fn keep_smaps(pid: u32, dir: &std::path::Path, label: &str) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::write(dir.join(format!("smaps-{label}.txt")), format!("threads: {threads}\n{smaps}"));
}

async fn settled(pid: u32) -> Sample {
    let mut low = Sample {
        rss: u64::MAX,
        anon: u64::MAX,
        fds: u64::MAX,
    };
    for _ in 0..5 {
        if let Some(s) = procs::sample(pid) {
            low = low.min(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    low
}

/// After a round: waits until the balancer has no connection left, then a little longer
/// (its memory trim looks once a second); returns the live count it saw last.
async fn quiet(bal: &Balancer) -> f64 {
    let mut active = -1.0;
    for _ in 0..30 {
        if let Ok(m) = bal.metrics().await {
            active = procs::metric_sum(&m, "switchyard_connections_active", &[]);
            if active == 0.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    active
}

async fn hold(var: &str, pid: u32) {
    if let Some(secs) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
        eprintln!("chaos: {var}: holding {secs} s, balancer pid {pid}");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> Result<bool, String> {
    switchyard::server::raise_nofile_limit();
    let usage = "usage: chaos SWITCHYARD_BIN BACKEND_BIN [DIR]";
    let mut args = std::env::args().skip(1);
    let sy_bin = PathBuf::from(args.next().ok_or(usage)?);
    let be_bin = PathBuf::from(args.next().ok_or(usage)?);
    let dir = args
        .next()
        .map_or_else(|| std::env::temp_dir().join(format!("chaos-{}", std::process::id())), PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let p = Params::from_env();

    // backends, each on its own loopback address: a port left by a killed backend cannot be
    // taken as the source port of someone's connection while it is down
    let mut backends = Vec::new();
    for i in 0..p.backends {
        let bind = SocketAddr::from(([127, 0, 0, 11 + i as u8], 0));
        backends.push(Backend::start(&be_bin, bind, dir.join(format!("backend-{i}.log"))).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let listen = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], procs::free_port()?));
    let bal = Arc::new(Balancer::start(&sy_bin, &dir, &config(&p, listen, admin, &addrs, 0), listen, admin).await?);
    eprintln!(
        "chaos: balancer pid {} on {listen}, admin {admin}, backends {addrs:?}, files in {}",
        bal.pid,
        dir.display()
    );
    // the health checks mark every backend up (rise 2 at 1 s)
    tokio::time::sleep(Duration::from_secs(3)).await;
    hold("HOLD_AT_START", bal.pid).await;
    let cold = settled(bal.pid).await;
    keep_smaps(bal.pid, &dir, "cold");

    // the warm-up: the same mix, shorter, so that the start figures of the measured round
    // include what the first use of every path leaves behind for good (code pages read in,
    // the relay's buffer free lists, the allocator's arenas)
    let warm = if p.warmup > 0 {
        let wp = Params {
            duration: p.warmup,
            reloads: p.reloads.min(2),
            ..p.clone()
        };
        let (r, b) = round::run(Arc::new(wp), "warm-up", bal.clone(), backends).await?;
        backends = b;
        quiet(&bal).await;
        Some(r)
    } else {
        None
    };
    hold("HOLD_AFTER_WARMUP", bal.pid).await;
    let start = settled(bal.pid).await;
    keep_smaps(bal.pid, &dir, "start");
    let cpu_start = procs::cpu_seconds(bal.pid).unwrap_or(0.0);
    let (main, mut backends) = round::run(Arc::new(p.clone()), "run", bal.clone(), backends).await?;
    let active_after = quiet(&bal).await;
    let end = settled(bal.pid).await;
    keep_smaps(bal.pid, &dir, "end");
    hold("HOLD_AT_END", bal.pid).await;
    let cpu = procs::cpu_seconds(bal.pid).unwrap_or(0.0) - cpu_start;
    let metrics = bal.metrics().await.unwrap_or_default();
    let bal = Arc::try_unwrap(bal).map_err(|_| "the balancer is still shared")?;
    let log = bal.log.clone();
    let exit = bal.stop(Duration::from_secs(40)).await;
    for b in &mut backends {
        b.kill().await;
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();

    let r = report::Run {
        p: &p,
        main: &main,
        warm: warm.as_ref(),
        cold,
        start,
        end,
        active_after,
        cpu,
        metrics: &metrics,
        exit,
        log: &log_text,
        log_path: &log,
    };
    Ok(r.print())
}
