//! A tiny WebSocket echo backend (plain `GET /load` answers a load figure for
//! `custom_load`, any other plain GET answers `ok` for health checks; a text message
//! `whoami` is answered with its address and process id).
//! `cargo run --example backend -- 9001 [LOAD]` or `-- 127.0.0.12:9001` (any loopback address,
//! port 0 for a free one; the chosen address is printed).

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let where_: SocketAddr = match args.next() {
        Some(a) => a
            .parse()
            .or_else(|_| a.parse::<u16>().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
            .map_err(|_| std::io::Error::other(format!("not a port or address: {a}")))?,
        None => SocketAddr::from(([127, 0, 0, 1], 9001)),
    };
    let load: &'static str = Box::leak(args.next().unwrap_or_else(|| "0".into()).into_boxed_str());
    // Binds with SO_REUSEADDR (tokio does on Unix): a backend killed and restarted on the
    // same address does not wait for its old connections' TIME_WAIT.
    let l = tokio::net::TcpListener::bind(where_).await?;
    let addr = l.local_addr()?;
    let name: &'static str = Box::leak(format!("{addr} pid {}", std::process::id()).into_boxed_str());
    println!("echo backend on ws://{addr}/ (load {load})");
    loop {
        let s = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // out of descriptors, an aborted connection: keep serving the others
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(switchyard::ws::peer::serve_echo_named(s, Some(load), Some(name)));
    }
}
