//! The long-lived clients: each holds one WebSocket connection through the balancer, sends
//! its kind of traffic and checks every echo, asks the backend which process it reached
//! (`whoami`), and when the connection ends tells a loss from a backend that was killed
//! under it, then reconnects like a real client (jittered backoff) and times it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// How long an echo may take before the connection counts as stalled.
const ECHO_TIMEOUT: Duration = Duration::from_secs(15);
/// A kill-caused close must be followed by a working connection within this.
pub const RECONNECT_BOUND: Duration = Duration::from_secs(5);

/// What the whole run shares: where to connect, which backend processes were killed, counters.
pub struct World {
    pub t0: Instant,
    pub target: SocketAddr,
    /// (when, pid) of every SIGKILL; recorded just before the signal is sent.
    pub kills: Mutex<Vec<(Instant, u32)>>,
    pub stats: Stats,
}

impl World {
    /// When the backend process `pid` was killed, if it was.
    fn kill_of(&self, pid: u32) -> Option<Instant> {
        let kills = self.kills.lock().unwrap_or_else(|e| e.into_inner());
        kills.iter().find(|(_, p)| *p == pid).map(|(t, _)| *t)
    }

    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

/// Counters of the long-lived clients.
#[derive(Default)]
pub struct Stats {
    pub connected_now: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: Tally,
    pub sent: AtomicU64,
    pub echoed: AtomicU64,
    pub echoed_bytes: AtomicU64,
    pub mismatches: AtomicU64,
    pub pings: AtomicU64,
    pub killed_closes: Tally,
    /// longest time from a kill to the close its clients saw (ms)
    pub kill_to_close_max_ms: AtomicU64,
    pub lost: Tally,
    pub lost_samples: Mutex<Vec<String>>,
    /// time from the kill to a working new connection (whoami answered), per client (ms)
    pub reconnect_ms: Mutex<Vec<u64>>,
    pub clean_ends: AtomicU64,
    pub unclean_ends: Tally,
    pub per_backend: Mutex<BTreeMap<SocketAddr, u64>>,
}

/// Counts by a short description.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub fn add(&self, what: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(what.into()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    /// `what ×n, …` or `—`.
    pub fn render(&self) -> String {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_empty() {
            return "—".into();
        }
        m.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
    }
}

/// The kind of traffic a client sends (by slot: 10 % bulk, 20 % chatty, 70 % mostly idle).
#[derive(Clone, Copy)]
enum Profile {
    /// 64 KiB binary every 10–20 s
    Bulk,
    /// 1 KiB binary every 1–3 s
    Chatty,
    /// a short text every 20–40 s (the balancer pings it in between)
    Idle,
}

impl Profile {
    fn of(slot: usize) -> Profile {
        match slot % 10 {
            0 => Profile::Bulk,
            1 | 2 => Profile::Chatty,
            _ => Profile::Idle,
        }
    }

    fn interval(self, rng: &mut SmallRng) -> Duration {
        let ms = match self {
            Profile::Bulk => rng.random_range(10_000..20_000),
            Profile::Chatty => rng.random_range(1_000..3_000),
            Profile::Idle => rng.random_range(20_000..40_000),
        };
        Duration::from_millis(ms)
    }

    fn message(self, slot: usize, seq: u64) -> Message {
        let len = match self {
            Profile::Bulk => 64 * 1024,
            Profile::Chatty => 1024,
            Profile::Idle => return Message::text(format!("slot {slot} message {seq}")),
        };
        let mut p = Vec::with_capacity(len);
        p.extend_from_slice(&(slot as u64).to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend((16..len).map(|i| ((i as u64 + seq) % 251) as u8));
        Message::binary(p)
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Which backend process a connection reached.
#[derive(Clone, Copy)]
struct Backend {
    addr: SocketAddr,
    pid: u32,
}

/// How a connection ended.
enum Ended {
    /// the run is over and the client closed (1000)
    Stopped,
    /// anything else: the close code when one came, and what happened
    Broke { code: Option<u16>, what: String },
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0)
}

/// One client slot, from its first connection to the end of the run.
pub async fn run(w: Arc<World>, slot: usize, mut stop: watch::Receiver<bool>) {
    let profile = Profile::of(slot);
    let mut rng = SmallRng::seed_from_u64(slot as u64 ^ 0x5eed);
    let mut seq = 0u64;
    let mut killed_at: Option<Instant> = None;
    loop {
        let Some((ws, backend)) = connect_retrying(&w, &mut rng, &mut stop).await else {
            return;
        };
        if let Some(tk) = killed_at.take() {
            let ms = tk.elapsed().as_millis() as u64;
            w.stats.reconnect_ms.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
        }
        w.stats.connected_now.fetch_add(1, Relaxed);
        let ended = traffic(&w, slot, profile, &mut rng, &mut seq, ws, &mut stop).await;
        w.stats.connected_now.fetch_sub(1, Relaxed);
        let (code, what) = match ended {
            Ended::Stopped => return,
            Ended::Broke { code, what } => (code, what),
        };
        // A SIGKILLed backend cannot send a close frame: the balancer closes with 1011, or
        // at once (no close frame) when the backend died inside a frame.
        let by_kill = matches!(code, None | Some(1011 | 1006));
        match w.kill_of(backend.pid).filter(|_| by_kill) {
            Some(tk) => {
                let ms = tk.elapsed().as_millis() as u64;
                w.stats.kill_to_close_max_ms.fetch_max(ms, Relaxed);
                w.stats.killed_closes.add(code.map_or("no close frame".into(), |c| c.to_string()));
                killed_at = Some(tk);
            }
            None => {
                let code = code.map_or("no close frame".into(), |c| format!("close {c}"));
                w.stats.lost.add(code.clone());
                let mut s = w.stats.lost_samples.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 20 {
                    s.push(format!(
                        "t={:.1}s slot {slot} on {} (pid {}): {code}, {what}",
                        w.secs(),
                        backend.addr,
                        backend.pid
                    ));
                }
            }
        }
        // a real client does not come back in the same millisecond as all the others
        sleep(Duration::from_millis(rng.random_range(0..300))).await;
    }
}

/// Connects until it works (or the run stops), with jittered exponential backoff.
async fn connect_retrying(w: &World, rng: &mut SmallRng, stop: &mut watch::Receiver<bool>) -> Option<(Ws, Backend)> {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return None;
        }
        match connect(w).await {
            Ok(c) => {
                w.stats.connects.fetch_add(1, Relaxed);
                let mut per = w.stats.per_backend.lock().unwrap_or_else(|e| e.into_inner());
                *per.entry(c.1.addr).or_default() += 1;
                return Some(c);
            }
            Err(e) => w.stats.connect_failures.add(e),
        }
        let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
        backoff = (backoff * 2).min(Duration::from_secs(1));
        tokio::select! {
            _ = sleep(wait) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// One connection attempt: TCP, the upgrade, then `whoami`. Err is a short reason.
async fn connect(w: &World) -> Result<(Ws, Backend), String> {
    let tcp = match timeout(Duration::from_secs(3), TcpStream::connect(w.target)).await {
        Err(_) => return Err("tcp connect timeout".into()),
        Ok(Err(e)) => return Err(format!("tcp connect: {:?}", e.kind())),
        Ok(Ok(t)) => t,
    };
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{}/chaos", w.target);
    let mut ws = match timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async_with_config(url, tcp, Some(config())),
    )
    .await
    {
        Err(_) => return Err("upgrade timeout".into()),
        Ok(Err(WsError::Http(r))) => return Err(format!("upgrade answered {}", r.status().as_u16())),
        Ok(Err(e)) => return Err(format!("upgrade: {}", short(&e))),
        Ok(Ok((ws, _))) => ws,
    };
    ws.send(Message::text("whoami"))
        .await
        .map_err(|e| format!("whoami: {}", short(&e)))?;
    let answer = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(f))) => return Err(format!("close {} before whoami", f.map_or(1005, |f| u16::from(f.code)))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("whoami: {}", short(&e))),
                None => return Err("closed before whoami".into()),
            }
        }
    };
    let text = timeout(Duration::from_secs(5), answer)
        .await
        .map_err(|_| "whoami timeout".to_string())??;
    // "ADDR pid PID"
    let (addr, pid) = text.split_once(" pid ").ok_or_else(|| format!("odd whoami answer {text:?}"))?;
    let backend = Backend {
        addr: addr.parse().map_err(|_| format!("odd whoami answer {text:?}"))?,
        pid: pid.parse().map_err(|_| format!("odd whoami answer {text:?}"))?,
    };
    Ok((ws, backend))
}

fn short(e: &WsError) -> String {
    match e {
        WsError::Io(io) => format!("io {:?}", io.kind()),
        WsError::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string(),
    }
}

/// Sends and checks traffic until the connection breaks or the run stops.
async fn traffic(
    w: &World,
    slot: usize,
    profile: Profile,
    rng: &mut SmallRng,
    seq: &mut u64,
    mut ws: Ws,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    // the first message at a random point of the first interval, so clients do not beat together
    let mut next_send = tokio::time::Instant::now() + profile.interval(rng).mul_f64(rng.random_range(0.0..1.0));
    let mut waiting: Option<(Bytes, tokio::time::Instant)> = None;
    loop {
        let deadline = waiting.as_ref().map_or(next_send, |(_, d)| *d);
        tokio::select! {
            _ = stop.changed() => return close(w, ws).await,
            m = ws.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    let got = match &m {
                        Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                        _ => m.into_data(),
                    };
                    match waiting.take() {
                        Some((want, _)) if want == got => {
                            w.stats.echoed.fetch_add(1, Relaxed);
                            w.stats.echoed_bytes.fetch_add(got.len() as u64, Relaxed);
                        }
                        _ => {
                            w.stats.mismatches.fetch_add(1, Relaxed);
                            return Ended::Broke { code: None, what: format!("wrong echo ({} bytes)", got.len()) };
                        }
                    }
                    next_send = tokio::time::Instant::now() + profile.interval(rng);
                }
                Some(Ok(Message::Ping(_))) => { w.stats.pings.fetch_add(1, Relaxed); }
                Some(Ok(Message::Close(f))) => {
                    let code = f.as_ref().map_or(1005, |f| u16::from(f.code));
                    let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
                    finish_close(&mut ws).await;
                    return Ended::Broke { code: Some(code), what: format!("closed by the balancer: {reason:?}") };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Broke { code: None, what: short(&e) },
                None => return Ended::Broke { code: None, what: "end of stream".into() },
            },
            _ = sleep_until(deadline) => {
                if waiting.is_some() {
                    return Ended::Broke { code: None, what: format!("no echo within {ECHO_TIMEOUT:?}") };
                }
                *seq += 1;
                let m = profile.message(slot, *seq);
                let want = match &m {
                    Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
                    Message::Binary(b) => b.clone(),
                    _ => Bytes::new(),
                };
                match timeout(ECHO_TIMEOUT, ws.send(m)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Broke { code: None, what: format!("send: {}", short(&e)) },
                    Err(_) => return Ended::Broke { code: None, what: "send stalled".into() },
                }
                w.stats.sent.fetch_add(1, Relaxed);
                waiting = Some((want, tokio::time::Instant::now() + ECHO_TIMEOUT));
            }
        }
    }
}

/// After a close frame came: lets tungstenite send its answer and waits for the end.
async fn finish_close(ws: &mut Ws) {
    let _ = timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// The end of the run: close 1000 and wait for the answer (an echo still in flight may come first).
async fn close(w: &World, mut ws: Ws) -> Ended {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "chaos run over".into(),
    };
    if let Err(e) = ws.close(Some(frame)).await {
        w.stats.unclean_ends.add(format!("close: {}", short(&e)));
        return Ended::Stopped;
    }
    let answer = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map_or(1005, |f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed)) | None => return 0,
                Some(Err(_)) => return 1,
            }
        }
    };
    match timeout(Duration::from_secs(10), answer).await {
        Ok(1000) => {
            w.stats.clean_ends.fetch_add(1, Relaxed);
        }
        Ok(c) => w.stats.unclean_ends.add(format!("answered {c}")),
        Err(_) => w.stats.unclean_ends.add("no answer to close"),
    }
    Ended::Stopped
}
