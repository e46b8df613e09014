//! One round of the run: the clients start, backends are killed and restarted, reloads,
//! the storm and the slowloris heads come at their times, and at the end every client
//! closes. The warm-up and the measured run are two rounds on the same processes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::attack::{self, Slowloris, Storm};
use crate::clients::{self, World};
use crate::procs::{self, Backend, Balancer, Sample};
use crate::report::Events;
use crate::{config, Params};

/// What a round did.
pub struct Round {
    pub p: Arc<Params>,
    pub world: Arc<World>,
    pub storm: Arc<Storm>,
    pub storm_at: u64,
    pub storm_elapsed: f64,
    pub slow: Arc<Slowloris>,
    pub events: Arc<Events>,
    pub connected_at_end: u64,
    pub active_before_stop: f64,
    pub traffic_end: f64,
    /// the balancer's largest figures during the round
    pub peak: Sample,
    /// reloads asked for in this round
    pub reloads: u32,
}

fn at(t0: Instant, secs: f64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(t0 + Duration::from_secs_f64(secs))
}

/// Runs one round of `p.duration` seconds; the backends are handed back for the next.
pub async fn run(
    p: Arc<Params>,
    label: &'static str,
    bal: Arc<Balancer>,
    mut backends: Vec<Backend>,
) -> Result<(Round, Vec<Backend>), String> {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let t0 = Instant::now();
    let world = Arc::new(World {
        t0,
        target: bal.listen,
        kills: Mutex::new(Vec::new()),
        stats: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let storm = Arc::new(Storm::default());
    let slow = Arc::new(Slowloris::default());
    let events = Arc::new(Events::new(label));

    // the long-lived clients, opened at `rate` per second
    let opener = {
        let (w, p, stop) = (world.clone(), p.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut v = Vec::with_capacity(p.conns);
            for slot in 0..p.conns {
                tokio::time::sleep_until(at(w.t0, slot as f64 / p.rate as f64)).await;
                if *stop.borrow() {
                    break;
                }
                v.push(tokio::spawn(clients::run(w.clone(), slot, stop.clone())));
            }
            v
        })
    };

    // kills and restarts, one backend at a time in turn
    let killer = {
        let (w, p, ev) = (world.clone(), p.clone(), events.clone());
        tokio::spawn(async move {
            for (k, t) in p.kill_times().into_iter().enumerate() {
                tokio::time::sleep_until(at(w.t0, t as f64)).await;
                let b = &mut backends[k % p.backends];
                w.kills.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), b.pid));
                b.kill().await;
                ev.note(format!("t={t}s killed backend {} (pid {})", b.addr, b.pid));
                tokio::time::sleep(Duration::from_secs(p.restart_after)).await;
                match b.restart().await {
                    Ok(n) => ev.note(format!(
                        "t={:.1}s restarted backend {} as pid {}{}",
                        w.t0.elapsed().as_secs_f64(),
                        b.addr,
                        b.pid,
                        if n > 1 { format!(" ({n} attempts)") } else { String::new() }
                    )),
                    Err(e) => ev.fail(e),
                }
            }
            backends
        })
    };

    // reloads, alternating SIGHUP and the admin API
    let reloader = {
        let (w, p, ev, bal, addrs) = (world.clone(), p.clone(), events.clone(), bal.clone(), addrs.clone());
        tokio::spawn(async move {
            for r in 1..=p.reloads {
                let t = p.duration as f64 * (r as f64 - 0.5) / p.reloads as f64;
                tokio::time::sleep_until(at(w.t0, t)).await;
                if let Err(e) = bal.write_config(&config(&p, bal.listen, bal.admin, &addrs, r)) {
                    ev.fail(format!("reload {r}: cannot write the config: {e}"));
                    continue;
                }
                if r % 2 == 1 {
                    bal.sighup();
                } else {
                    match bal.admin("POST", "/api/reload").await {
                        Ok((200, _)) => {}
                        Ok((s, body)) => ev.fail(format!("reload {r} by the API answered {s}: {}", body.trim())),
                        Err(e) => ev.fail(format!("reload {r} by the API: {e}")),
                    }
                }
            }
        })
    };

    // the storm
    let (storm_at, storm_secs) = p.storm_window();
    let storm_rate = (p.storm_x * p.limit) as f64;
    let storm_task = {
        let (w, p, s) = (world.clone(), p.clone(), storm.clone());
        tokio::spawn(async move {
            if storm_secs == 0 || storm_rate == 0.0 {
                return 0.0;
            }
            tokio::time::sleep_until(at(w.t0, storm_at as f64)).await;
            let begin = Instant::now();
            let until = begin + Duration::from_secs(storm_secs);
            let mut workers = Vec::new();
            for n in 0..p.storm_workers {
                let (s, target, nw) = (s.clone(), w.target, p.storm_workers);
                workers.push(tokio::spawn(async move {
                    attack::storm_worker(&s, n, target, storm_rate, nw, until).await
                }));
            }
            for h in workers {
                let _ = h.await;
            }
            begin.elapsed().as_secs_f64()
        })
    };

    // slowloris
    let (slow_from, slow_to) = p.slowloris_window();
    let slow_task = {
        let (w, p, s) = (world.clone(), p.clone(), slow.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(at(w.t0, slow_from as f64)).await;
            let until = w.t0 + Duration::from_secs(slow_to);
            let every = Duration::from_millis(p.slow_byte_ms);
            let cut_by = Duration::from_secs(p.handshake_timeout);
            let mut slots = Vec::new();
            for n in 0..p.slowloris {
                let (s, target) = (s.clone(), w.target);
                slots.push(tokio::spawn(async move {
                    attack::slowloris_slot(&s, n, target, every, cut_by, until).await
                }));
                // opened over 5 s
                tokio::time::sleep(Duration::from_secs_f64(5.0 / p.slowloris as f64)).await;
            }
            for h in slots {
                let _ = h.await;
            }
        })
    };

    // sampling and progress
    let peak = Arc::new(Mutex::new(Sample::default()));
    let sampler = {
        let (w, p, peak, pid, s, sl) = (world.clone(), p.clone(), peak.clone(), bal.pid, storm.clone(), slow.clone());
        tokio::spawn(async move {
            let every = if p.duration >= 300 { 30 } else { 10 };
            let mut n = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                n += 1;
                let Some(now) = procs::sample(pid) else { continue };
                {
                    let mut g = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *g = g.max(now);
                }
                if n % every == 0 {
                    let st = &w.stats;
                    eprintln!(
                        "chaos: {label} t={:>4}s clients {:>5} up, echoed {:>8}, killed-closes {:>5}, lost {}, storm {} attempts, slowloris {} open / {} cut | balancer rss {} kB (anon {}), fds {}",
                        w.t0.elapsed().as_secs(),
                        st.connected_now.load(Relaxed),
                        st.echoed.load(Relaxed),
                        st.killed_closes.total(),
                        st.lost.total(),
                        s.attempts.load(Relaxed),
                        sl.open_now.load(Relaxed),
                        sl.cut_408.load(Relaxed),
                        now.rss,
                        now.anon,
                        now.fds
                    );
                }
            }
        })
    };

    tokio::time::sleep_until(at(t0, p.duration as f64)).await;
    let connected_at_end = world.stats.connected_now.load(Relaxed);
    let active_before_stop = bal
        .metrics()
        .await
        .map(|m| procs::metric_sum(&m, "switchyard_connections_active", &[]))
        .unwrap_or(-1.0);
    let _ = stop_tx.send(true);
    let storm_elapsed = storm_task.await.unwrap_or(0.0);
    let _ = slow_task.await;
    let _ = reloader.await;
    for c in opener.await.unwrap_or_default() {
        let _ = c.await;
    }
    let traffic_end = t0.elapsed().as_secs_f64();
    let backends = killer.await.map_err(|e| format!("the kill schedule failed: {e}"))?;
    sampler.abort();
    let peak = *peak.lock().unwrap_or_else(|e| e.into_inner());
    let reloads = p.reloads;
    let round = Round {
        p,
        world,
        storm,
        storm_at,
        storm_elapsed,
        slow,
        events,
        connected_at_end,
        active_before_stop,
        traffic_end,
        peak,
        reloads,
    };
    Ok((round, backends))
}
