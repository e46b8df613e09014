//! The chaos run's summary: what happened, the balancer's figures, and a verdict per
//! criterion of issue 13.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use crate::clients::RECONNECT_BOUND;
use crate::procs::{metric_sum, Sample};
use crate::round::Round;
use crate::Params;

/// Things the conductor did, and what went wrong doing them.
pub struct Events {
    label: &'static str,
    notes: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

impl Events {
    pub fn new(label: &'static str) -> Events {
        Events {
            label,
            notes: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    pub fn note(&self, s: String) {
        eprintln!("chaos: {} {s}", self.label);
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    pub fn fail(&self, s: String) {
        eprintln!("chaos: {} FAILED {s}", self.label);
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

/// Everything the summary reads.
pub struct Run<'a> {
    pub p: &'a Params,
    pub main: &'a Round,
    pub warm: Option<&'a Round>,
    /// before any client
    pub cold: Sample,
    /// after the warm-up, before the measured round
    pub start: Sample,
    /// after every client of the measured round left
    pub end: Sample,
    pub active_after: f64,
    pub cpu: f64,
    pub metrics: &'a str,
    pub exit: String,
    pub log: &'a str,
    pub log_path: &'a Path,
}

/// A round's figures that the verdicts read.
struct Verdicts {
    lost: u64,
    killed: u64,
    late_reconnects: u64,
    mismatches: u64,
    connected_at_end: u64,
    slow_late: u64,
    slow_other: u64,
    failures: Vec<String>,
}

impl Verdicts {
    fn of(r: &Round) -> Verdicts {
        let st = &r.world.stats;
        let bound = RECONNECT_BOUND.as_millis() as u64;
        let in_time = st
            .reconnect_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|&&ms| ms <= bound)
            .count() as u64;
        let killed = st.killed_closes.total();
        Verdicts {
            lost: st.lost.total(),
            killed,
            late_reconnects: killed.saturating_sub(in_time),
            mismatches: st.mismatches.load(Relaxed),
            connected_at_end: r.connected_at_end,
            slow_late: r.slow.late.load(Relaxed),
            slow_other: r.slow.other.total(),
            failures: r.events.failures.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

fn within(end: u64, start: u64, pct: f64) -> bool {
    (end as f64) <= start as f64 * (1.0 + pct / 100.0)
}

fn pct(end: u64, start: u64) -> String {
    format!("{:+.1} %", (end as f64 / start.max(1) as f64 - 1.0) * 100.0)
}

/// Each labelled series of a metric as `label=value ×n`.
fn series(text: &str, name: &str, label: &str) -> String {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{')) {
        let key = l
            .split(&format!("{label}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        *out.entry(key).or_default() += l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    }
    let parts: Vec<String> = out
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

/// WARN/ERROR lines of the JSON log by message, and the number of panics.
fn log_summary(log: &str) -> (u64, BTreeMap<String, u64>) {
    let panics = log.lines().filter(|l| l.contains("panicked")).count() as u64;
    let mut by = BTreeMap::new();
    for l in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let level = v["level"].as_str().unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            let msg = v["message"].as_str().or(v["fields"]["message"].as_str()).unwrap_or("?");
            *by.entry(format!("{level} {msg}")).or_default() += 1;
        }
    }
    (panics, by)
}

/// `what ×n; …` of the notable lines of one round, for the table.
fn happened(r: &Round) -> Vec<(&'static str, String)> {
    let (p, st) = (&*r.p, &r.world.stats);
    let mut reconnect = st.reconnect_ms.lock().unwrap_or_else(|e| e.into_inner()).clone();
    reconnect.sort_unstable();
    let q = |f: f64| {
        reconnect
            .get(((reconnect.len() as f64 * f) as usize).min(reconnect.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let storm_attempts = r.storm.attempts.load(Relaxed);
    let storm_rate = storm_attempts as f64 / r.storm_elapsed.max(0.001);
    vec![
        ("traffic", format!("{} s, clients closed by {:.0} s", p.duration, r.traffic_end)),
        ("client connections made (first + reconnects)", st.connects.load(Relaxed).to_string()),
        ("connections per backend address", {
            let per = st.per_backend.lock().unwrap_or_else(|e| e.into_inner());
            per.iter().map(|(a, n)| format!("{a} ×{n}")).collect::<Vec<_>>().join(", ")
        }),
        ("failed connection attempts (retried)", st.connect_failures.render()),
        (
            "messages sent / echoed intact",
            format!("{} / {} ({:.1} MB)", st.sent.load(Relaxed), st.echoed.load(Relaxed), st.echoed_bytes.load(Relaxed) as f64 / 1e6),
        ),
        ("balancer pings seen by clients", st.pings.load(Relaxed).to_string()),
        ("closes on killed backends (close code)", format!("{}: {}", st.killed_closes.total(), st.killed_closes.render())),
        ("longest kill → close seen by a client", format!("{} ms", st.kill_to_close_max_ms.load(Relaxed))),
        (
            "reconnect after a kill: p50 / p99 / max",
            format!("{} / {} / {} ms over {} clients", q(0.5), q(0.99), reconnect.last().copied().unwrap_or(0), reconnect.len()),
        ),
        (
            "reconnect storm",
            format!(
                "at {} s for {:.1} s: {storm_attempts} attempts = {:.0}/s ({:.1}× the limit of {}/s); {} admitted, {} shed with 1013, failed: {}",
                r.storm_at,
                r.storm_elapsed,
                storm_rate,
                storm_rate / p.limit as f64,
                p.limit,
                r.storm.admitted.load(Relaxed),
                r.storm.shed.load(Relaxed),
                r.storm.failed.render()
            ),
        ),
        (
            "slowloris heads",
            format!(
                "{} opened (peak {} at once), {} cut with 408, longest {:.1} s (handshake_timeout {} s); other: {}; connect failures: {}",
                r.slow.opened.load(Relaxed),
                r.slow.peak_open.load(Relaxed),
                r.slow.cut_408.load(Relaxed),
                r.slow.max_cut_ms.load(Relaxed) as f64 / 1000.0,
                p.handshake_timeout,
                r.slow.other.render(),
                r.slow.connect_failures.render()
            ),
        ),
        ("client ends (close 1000 answered)", format!("{} clean, other: {}", st.clean_ends.load(Relaxed), st.unclean_ends.render())),
        ("balancer: live connections just before the end", r.active_before_stop.to_string()),
    ]
}

impl Run<'_> {
    /// Prints the summary; true when every criterion holds.
    pub fn print(&self) -> bool {
        let (p, m) = (self.p, self.metrics);
        let (panics, warnings) = log_summary(self.log);
        let reloads_ok = metric_sum(m, "switchyard_config_reloads_total", &["result=\"ok\""]) as u64;
        let reloads_err = metric_sum(m, "switchyard_config_reloads_total", &["result=\"error\""]) as u64;
        let reloads_asked = self.main.reloads + self.warm.map_or(0, |w| w.reloads);
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

        println!("## Chaos and soak run");
        println!();
        println!(
            "settings: CONNS={} DURATION={} WARMUP={} SLOWLORIS={} KILL_EVERY={} RESTART_AFTER={} RELOADS={} BACKENDS={} RATE={} LIMIT={} STORM_X={} STORM_SECS={} STORM_WORKERS={} HANDSHAKE_TIMEOUT={} SLOW_BYTE_MS={}",
            p.conns, p.duration, p.warmup, p.slowloris, p.kill_every, p.restart_after, p.reloads, p.backends, p.rate, p.limit, p.storm_x, p.storm_secs, p.storm_workers, p.handshake_timeout, p.slow_byte_ms
        );
        println!(
            "machine: {} cores, load average at the end {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg.split(' ').take(3).collect::<Vec<_>>().join(" ")
        );
        println!();
        let rounds: Vec<(&str, &Round)> = self.warm.map(|w| ("warm-up", w)).into_iter().chain([("run", self.main)]).collect();
        println!(
            "| what happened | {} |",
            rounds.iter().map(|(l, _)| *l).collect::<Vec<_>>().join(" | ")
        );
        println!("|---|{}", "---|".repeat(rounds.len()));
        let columns: Vec<Vec<(&str, String)>> = rounds.iter().map(|(_, r)| happened(r)).collect();
        for (i, (what, _)) in columns[0].iter().enumerate() {
            let cells: Vec<&str> = columns.iter().map(|c| c[i].1.as_str()).collect();
            println!("| {what} | {} |", cells.join(" | "));
        }
        println!();
        println!("| balancer, whole process life | figure |");
        println!("|---|---|");
        let row = |k: &str, v: String| println!("| {k} | {v} |");
        row("shed", series(m, "switchyard_shed_total", "reason"));
        row("handshake failures", series(m, "switchyard_handshake_failures_total", "reason"));
        row("close codes sent by the balancer itself", {
            let proxy: String = m
                .lines()
                .filter(|l| l.starts_with("switchyard_close_codes_total{") && l.contains("origin=\"proxy\""))
                .collect::<Vec<_>>()
                .join("\n");
            series(&proxy, "switchyard_close_codes_total", "code")
        });
        row("health transitions", series(m, "switchyard_health_transitions_total", "to"));
        row("reloads", format!("{reloads_ok} ok, {reloads_err} error"));
        row("CPU during the measured round", format!("{:.1} s", self.cpu));
        row("exit on SIGTERM", self.exit.clone());
        row(
            "log: warnings and errors",
            if warnings.is_empty() {
                "—".into()
            } else {
                warnings.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join("; ")
            },
        );
        println!();
        let peak = rounds.iter().fold(Sample::default(), |a, (_, r)| a.max(r.peak));
        let (c, s, e) = (self.cold, self.start, self.end);
        println!("| balancer | cold (no client yet) | start (after the warm-up) | peak | end (every client gone) | end vs start |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| RSS (kB) | {} | {} | {} | {} | {} |",
            c.rss,
            s.rss,
            peak.rss,
            e.rss,
            pct(e.rss, s.rss)
        );
        println!(
            "| of which anonymous (kB) | {} | {} | {} | {} | {} |",
            c.anon,
            s.anon,
            peak.anon,
            e.anon,
            pct(e.anon, s.anon)
        );
        println!(
            "| open descriptors | {} | {} | {} | {} | {} |",
            c.fds,
            s.fds,
            peak.fds,
            e.fds,
            pct(e.fds, s.fds)
        );
        println!();

        let v: Vec<Verdicts> = rounds.iter().map(|(_, r)| Verdicts::of(r)).collect();
        let both = |f: &dyn Fn(&Verdicts) -> String| v.iter().map(f).collect::<Vec<_>>().join(" / ");
        let label = if v.len() > 1 { " (warm-up / run)" } else { "" };
        let lost_codes = rounds
            .iter()
            .map(|(_, r)| r.world.stats.lost.render())
            .collect::<Vec<_>>()
            .join(" / ");
        let checks: Vec<(String, String, bool)> = vec![
            (
                format!("connections lost other than on killed backends{label}"),
                both(&|x| x.lost.to_string())
                    + &if v.iter().any(|x| x.lost > 0) {
                        format!(": {lost_codes}")
                    } else {
                        String::new()
                    },
                v.iter().all(|x| x.lost == 0),
            ),
            (
                format!("clients not reconnected within 5 s of a kill{label}"),
                both(&|x| format!("{} of {}", x.late_reconnects, x.killed)),
                v.iter().all(|x| x.late_reconnects == 0),
            ),
            (
                format!("wrong echoes{label}"),
                both(&|x| x.mismatches.to_string()),
                v.iter().all(|x| x.mismatches == 0),
            ),
            (
                format!("clients connected at the end{label}"),
                both(&|x| format!("{} of {}", x.connected_at_end, p.conns)),
                v.iter().all(|x| x.connected_at_end == p.conns as u64),
            ),
            (
                format!("slowloris heads not cut with 408 within handshake_timeout + 3 s{label}"),
                both(&|x| format!("{} late, {} other", x.slow_late, x.slow_other)),
                v.iter().all(|x| x.slow_late == 0 && x.slow_other == 0),
            ),
            (
                "RSS at the end within 5 % of the start".into(),
                format!("{} → {} kB, {}", s.rss, e.rss, pct(e.rss, s.rss)),
                within(e.rss, s.rss, 5.0),
            ),
            (
                "descriptors at the end within 5 % of the start".into(),
                format!("{} → {}", s.fds, e.fds),
                within(e.fds, s.fds, 5.0),
            ),
            (
                "live connections in the balancer once every client left".into(),
                self.active_after.to_string(),
                self.active_after == 0.0,
            ),
            ("panics in the balancer's log".into(), panics.to_string(), panics == 0),
            (
                "reloads applied".into(),
                format!("{reloads_ok} of {reloads_asked} ({reloads_err} rejected)"),
                reloads_ok == reloads_asked as u64 && reloads_err == 0,
            ),
            (
                format!("conductor failures (restarts, reload requests){label}"),
                both(&|x| x.failures.len().to_string()),
                v.iter().all(|x| x.failures.is_empty()),
            ),
        ];
        println!("| criterion | figure | verdict |");
        println!("|---|---|---|");
        let mut ok = true;
        for (what, fig, pass) in &checks {
            ok &= pass;
            println!("| {what} | {fig} | {} |", if *pass { "pass" } else { "**FAIL**" });
        }
        println!();
        for (label, r) in &rounds {
            let samples = r.world.stats.lost_samples.lock().unwrap_or_else(|e| e.into_inner());
            if !samples.is_empty() {
                println!("first lost connections ({label}):");
                for s in samples.iter() {
                    println!("  {s}");
                }
            }
            for n in r.events.notes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                println!("{label}: {n}");
            }
            for f in r.events.failures.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                println!("{label}: FAILED {f}");
            }
        }
        println!(
            "verdict: {} (balancer log: {})",
            if ok { "PASS" } else { "FAIL" },
            self.log_path.display()
        );
        ok
    }
}
