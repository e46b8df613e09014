//! Load run for the reload figure: 100 echo backends, N idle connections through a
//! `switchyard run` child process, then K reloads by SIGHUP (weights change each time);
//! prints the reload durations the balancer logs and checks every connection survived.
//!
//! `cargo build --release && cargo run --release --example reload_timing -- target/release/switchyard 8000 5`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard::ws::frame::Opcode;
use switchyard::ws::peer::{client_handshake, read_frame, write_frame};

fn config(port: u16, backends: &[std::net::SocketAddr], round: u32) -> String {
    let mut y = format!("listeners:\n  - name: l\n    bind: \"127.0.0.1:{port}\"\n    routes:\n      - pool: p\npools:\n  p:\n    algorithm: least_connections\n    backends:\n");
    for (i, b) in backends.iter().enumerate() {
        y.push_str(&format!(
            "      - address: \"{b}\"\n        weight: {}\n",
            1 + (i as u32 + round) % 3
        ));
    }
    y.push_str("limits:\n  max_connections_per_second: 0\nprocess:\n  access_log: false\n");
    y
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    switchyard::server::raise_nofile_limit();
    let mut args = std::env::args().skip(1);
    let bin = args.next().unwrap_or_else(|| "target/release/switchyard".into());
    let conns: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8000);
    let reloads: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let mut backends = Vec::new();
    for _ in 0..100 {
        backends.push(switchyard::demo::spawn_echo_backend().await?);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("sy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("c.yaml");
    std::fs::write(&path, config(port, &backends, 0))?;
    let mut child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().ok_or("stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(i) = line.find("elapsed_us=") {
                let v: String = line[i + 11..].chars().take_while(|c| c.is_ascii_digit()).collect();
                let _ = tx.send(v.parse::<u64>().unwrap_or(0));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = format!("127.0.0.1:{port}");
    let mut held = Vec::with_capacity(conns);
    for chunk in 0..conns.div_ceil(200) {
        let mut batch = Vec::new();
        for _ in 0..200.min(conns - chunk * 200) {
            let addr = addr.clone();
            batch.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await?;
                let pending = client_handshake(&mut s, "bench", "/").await?;
                Ok::<_, std::io::Error>((s, pending))
            }));
        }
        for b in batch {
            held.push(b.await??);
        }
    }
    println!("{} connections open over 100 backends", held.len());
    let mut times = Vec::new();
    for round in 1..=reloads {
        std::fs::write(&path, config(port, &backends, round))?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        let us = rx.recv_timeout(Duration::from_secs(30))?;
        times.push(us);
    }
    let mut alive = 0;
    for (s, pending) in held.iter_mut() {
        write_frame(s, true, Opcode::Text, b"ping", true).await?;
        if read_frame(s, pending).await?.opcode == Opcode::Text {
            alive += 1;
        }
    }
    println!(
        "reload durations (µs): {times:?}; connections alive afterwards: {alive}/{}",
        held.len()
    );
    let _ = child.kill();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
