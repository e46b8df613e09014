//! Connects to a Switchyard (or any WebSocket) URL, sends N messages and prints round-trip
//! times. `cargo run --example client -- ws://127.0.0.1:8080/ 100 1024`

use std::time::Instant;

use switchyard::ws::frame::Opcode;
use switchyard::ws::peer::{client_handshake, read_frame, write_frame};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs")?;
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = tokio::net::TcpStream::connect(hostport).await?;
    s.set_nodelay(true)?;
    let mut pending = client_handshake(&mut s, hostport, &path).await?;
    let payload = vec![b'x'; size];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        write_frame(&mut s, true, Opcode::Binary, &payload, true).await?;
        let f = read_frame(&mut s, &mut pending).await?;
        if f.opcode == Opcode::Close {
            println!("closed by the server: {:?}", f.payload);
            return Ok(());
        }
        rtts.push(t0.elapsed().as_micros() as u64);
    }
    write_frame(&mut s, true, Opcode::Close, &1000u16.to_be_bytes(), true).await?;
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    println!(
        "{n} round trips of {size} bytes: p50 {} µs, p99 {} µs, max {} µs",
        pct(0.5),
        pct(0.99),
        rtts[rtts.len() - 1]
    );
    Ok(())
}
