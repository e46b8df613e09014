//! The two crowds that are not regular clients: a reconnect storm (connect, upgrade, close,
//! again, as fast as allowed) and slowloris heads (a request head sent one byte at a time,
//! which the balancer must cut with `408` at `handshake_timeout`).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use switchyard::ws::frame::Opcode;
use switchyard::ws::peer::{client_handshake, read_frame, write_frame};

use crate::clients::Tally;

/// A TCP connection from `src` (any port) to `to`. The port is chosen at connect time
/// (IP_BIND_ADDRESS_NO_PORT), so thousands of short connections from one address reuse
/// ports the way an unbound client's do.
async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a local int and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(SocketAddr::from((src, 0)))?;
    let c = timeout(Duration::from_secs(3), s.connect(to))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    c.set_nodelay(true)?;
    Ok(c)
}

/// Storm counters.
#[derive(Default)]
pub struct Storm {
    pub attempts: AtomicU64,
    pub admitted: AtomicU64,
    pub shed: AtomicU64,
    pub failed: Tally,
}

/// One storm worker: upgrade, close at once (1000), read the answer, again, paced so that all
/// `workers` together stay at or under `rate` attempts per second, until `until`.
/// A shed attempt reads `1013`; an admitted one reads the backend's echoed `1000`.
pub async fn storm_worker(s: &Storm, n: usize, target: SocketAddr, rate: f64, workers: usize, until: Instant) {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (n % 8) as u8);
    let every = Duration::from_secs_f64(workers as f64 / rate);
    let mut next = tokio::time::Instant::now();
    while Instant::now() < until {
        tokio::time::sleep_until(next).await;
        next = (next + every).max(tokio::time::Instant::now());
        s.attempts.fetch_add(1, Relaxed);
        match timeout(Duration::from_secs(5), storm_attempt(src, target)).await {
            Ok(Ok(1013)) => s.shed.fetch_add(1, Relaxed),
            Ok(Ok(1000)) => s.admitted.fetch_add(1, Relaxed),
            Ok(Ok(code)) => {
                s.failed.add(format!("close {code}"));
                0
            }
            Ok(Err(e)) => {
                s.failed.add(e);
                0
            }
            Err(_) => {
                s.failed.add("timeout");
                0
            }
        };
    }
}

async fn storm_attempt(src: Ipv4Addr, target: SocketAddr) -> Result<u16, String> {
    let mut c = connect_from(src, target).await.map_err(|e| format!("connect {:?}", e.kind()))?;
    let mut pending = client_handshake(&mut c, "storm", "/storm")
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    write_frame(&mut c, true, Opcode::Close, &1000u16.to_be_bytes(), true)
        .await
        .map_err(|e| format!("write {:?}", e.kind()))?;
    loop {
        let f = read_frame(&mut c, &mut pending).await.map_err(|e| format!("read {:?}", e.kind()))?;
        if f.opcode == Opcode::Close {
            return Ok(f.payload.get(..2).map_or(1005, |b| u16::from_be_bytes([b[0], b[1]])));
        }
    }
}

/// Slowloris counters.
#[derive(Default)]
pub struct Slowloris {
    pub opened: AtomicU64,
    pub open_now: AtomicU64,
    pub peak_open: AtomicU64,
    pub cut_408: AtomicU64,
    /// cut later than `handshake_timeout` + 3 s, or never
    pub late: AtomicU64,
    pub other: Tally,
    pub max_cut_ms: AtomicU64,
    pub connect_failures: Tally,
}

/// A complete upgrade head: if the balancer waited for the whole of it, it would be served.
const HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// One slowloris slot: a head trickled one byte every `every`, until the balancer cuts it;
/// then again, until `until`.
pub async fn slowloris_slot(s: &Slowloris, n: usize, target: SocketAddr, every: Duration, cut_by: Duration, until: Instant) {
    let src = Ipv4Addr::new(127, 0, 0, 20 + (n % 4) as u8);
    while Instant::now() < until {
        let c = match connect_from(src, target).await {
            Ok(c) => c,
            Err(e) => {
                s.connect_failures.add(format!("{:?}", e.kind()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let t = Instant::now();
        s.opened.fetch_add(1, Relaxed);
        let now = s.open_now.fetch_add(1, Relaxed) + 1;
        s.peak_open.fetch_max(now, Relaxed);
        let (mut rd, mut wr) = c.into_split();
        let trickle = async {
            for b in HEAD {
                if wr.write_all(std::slice::from_ref(b)).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            // the whole head went out: the balancer did not cut it; wait for the reader
            std::future::pending::<()>().await
        };
        let answer = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return (got, "closed"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => return (got, "reset"),
                }
            }
        };
        let ended = tokio::select! {
            r = timeout(cut_by + Duration::from_secs(10), answer) => r.ok(),
            _ = trickle => None,
        };
        s.open_now.fetch_sub(1, Relaxed);
        let ms = t.elapsed().as_millis() as u64;
        s.max_cut_ms.fetch_max(ms, Relaxed);
        match ended {
            None => {
                s.late.fetch_add(1, Relaxed);
                s.other.add("not cut");
            }
            Some((got, how)) => {
                if t.elapsed() > cut_by + Duration::from_secs(3) {
                    s.late.fetch_add(1, Relaxed);
                }
                if got.starts_with(b"HTTP/1.1 408") {
                    s.cut_408.fetch_add(1, Relaxed);
                } else {
                    let status = String::from_utf8_lossy(got.get(..12).unwrap_or(&got)).into_owned();
                    s.other.add(if got.is_empty() {
                        format!("{how} without an answer")
                    } else {
                        status
                    });
                }
            }
        }
    }
}
