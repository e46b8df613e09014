//! The `switchyard` command line: `run`, `check`, `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config::{self, ConfigError};
use switchyard::Server;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A WebSocket-aware layer-7 load balancer")]
struct Cli {
    /// Log format on stderr (RUST_LOG filters).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the balancer with a YAML config until SIGINT/SIGTERM (graceful drain).
    Run {
        /// Config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Reload when the file changes.
        #[arg(long)]
        watch: bool,
    },
    /// Validate a config file: prints `ok`, or every problem as FILE:LINE:COL: message.
    Check {
        /// Config file.
        file: PathBuf,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
    /// Three in-process echo backends behind the balancer, with the dashboard.
    Demo {
        /// Balancer port (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin/dashboard port (0 = any free port).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// No background traffic.
        #[arg(long)]
        quiet: bool,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=error,hyper=error"));
    // Colours only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => b.compact().init(),
        LogFormat::Json => b.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// See `switchyard::memory`.
#[global_allocator]
static GLOBAL: switchyard::memory::Allocator = switchyard::memory::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let r = match cli.cmd {
        Cmd::Check { file } => return check(&file),
        Cmd::Run { config, watch } => run(&config, watch),
        Cmd::Demo { port, admin_port, quiet } => demo(port, admin_port, quiet),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "switchyard", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(anyhow::Error::from)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints every problem, or `ok`.
fn check(file: &Path) -> ExitCode {
    let name = file.display().to_string();
    match switchyard::reload::load_checked(file) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&name, &errors);
            ExitCode::FAILURE
        }
    }
}

fn print_errors(name: &str, errors: &[ConfigError]) {
    for e in errors {
        println!("{}", e.render(name));
    }
}

/// Prints the bound addresses (scripts and tests read these lines).
fn announce(server: &Server) {
    for (name, addr) in server.addrs() {
        println!("listening {name} ws://{addr}/");
    }
    if let Some(a) = server.admin_addr() {
        println!("admin http://{a}/  (dashboard at /, metrics at /metrics)");
    }
}

fn run(path: &Path, watch: bool) -> anyhow::Result<()> {
    let (cfg, loaded) = switchyard::reload::load_checked(path).map_err(|errs| {
        let name = path.display().to_string();
        anyhow::anyhow!(errs.iter().map(|e| e.render(&name)).collect::<Vec<_>>().join("\n"))
    })?;
    let signals = Signals::register()?;
    let server = Server::start(cfg, Some(path.to_path_buf())).map_err(anyhow::Error::msg)?;
    switchyard::metrics::config_running(path, &loaded);
    announce(&server);
    tracing::info!(config = %path.display(), "switchyard running");
    if watch {
        switchyard::reload::watch_file(server.shared.clone(), server.control(), loaded.into_bytes());
    }
    signals.wait(server)
}

/// Signal streams, registered before anything is announced so no early signal is lost.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("signal runtime")?;
        let _g = rt.enter();
        let term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        drop(_g);
        Ok(Signals { rt, term, int, hup })
    }

    /// Waits for SIGINT/SIGTERM (graceful drain; a second one exits at once) and SIGHUP (reload).
    fn wait(self, server: Server) -> anyhow::Result<()> {
        let Signals {
            rt,
            mut term,
            mut int,
            mut hup,
        } = self;
        let shared = server.shared.clone();
        rt.block_on(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading");
                        switchyard::reload::request(&shared);
                    }
                }
            }
            tracing::info!("signal received: draining (send it again to exit at once)");
            let (force_tx, force_rx) = std::sync::mpsc::channel();
            let done = tokio::task::spawn_blocking(move || server.shutdown(Some(force_rx)));
            tokio::pin!(done);
            loop {
                tokio::select! {
                    _ = &mut done => break,
                    _ = term.recv() => { let _ = force_tx.send(()); }
                    _ = int.recv() => { let _ = force_tx.send(()); }
                }
            }
            tracing::info!("stopped");
            Ok(())
        })
    }
}

fn demo(port: u16, admin_port: u16, quiet: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("demo runtime")?;
    let backends = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(switchyard::demo::spawn_echo_backend().await?);
        }
        Ok::<_, std::io::Error>(v)
    })?;
    let yaml = switchyard::demo::demo_config(port, admin_port, &backends);
    let cfg = config::parse(&yaml, Path::new(".")).map_err(|e| anyhow::anyhow!("demo config: {e:?}"))?;
    let signals = Signals::register()?;
    let server = Server::start(cfg, None).map_err(anyhow::Error::msg)?;
    announce(&server);
    for b in &backends {
        println!("backend ws://{b}/");
    }
    if let Some(addr) = server.addr("demo") {
        println!("try:  websocat ws://{addr}/chat   (or: cargo run --example client -- ws://{addr}/)");
        println!("page http://{addr}/  (plain HTTP through the balancer, then a WebSocket echo)");
        if !quiet {
            rt.spawn(switchyard::demo::traffic(addr));
        }
    }
    let _rt = rt; // keeps the backends and the traffic running
    signals.wait(server)
}
