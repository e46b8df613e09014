//! A tiny WebSocket echo backend (plain `GET /load` answers a load figure for
//! `custom_load`, any other plain GET answers `ok` for health checks).
//! `cargo run --example backend -- 9001 [LOAD]`

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(9001);
    let load: &'static str = Box::leak(args.next().unwrap_or_else(|| "0".into()).into_boxed_str());
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("echo backend on ws://{}/ (load {load})", l.local_addr()?);
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(switchyard::ws::peer::serve_echo(s, Some(load)));
    }
}
