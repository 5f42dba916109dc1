//! The `nixgate` binary: parses the command line, sets up logging and signals, and hands an
//! already-bound listener to [`nixgate::app::run`].

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use nixgate::config::{
    Command, Config, ConfigError, DiscoverArgs, DiscoverFormat, StatusArgs, StatusFormat,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = nixgate::config::help::parse();
    match cli.command {
        Command::Serve(args) => match args.resolve() {
            Ok(config) => report(serve(config)),
            Err(e) => {
                eprintln!("nixgate: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        // The same checks as `serve`: the settings, then the cache dir as the store opens it.
        Command::CheckConfig(args) => match args.resolve().and_then(|c| {
            nixgate::store::check_cache_dir(&c.cache_dir).map_err(ConfigError::Store)?;
            Ok(c)
        }) {
            Ok(config) => {
                for w in config.warnings() {
                    eprintln!("nixgate: warning: {w}");
                }
                print!("{}", config.render_effective());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nixgate: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Health { url } => report(health(&url)),
        Command::Discover(args) => report(discover(args)),
        Command::Status(args) => report(status(args)),
        Command::Warm(args) => report(warm(args)),
        Command::PublicKey { signing_key_file } => {
            match nixgate::upload::SigningKey::read(&signing_key_file) {
                Ok(k) => {
                    println!("{}", k.public());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("nixgate: {}: {e}", signing_key_file.display());
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr`; an IPv6 wildcard on a host without IPv6 falls back to the IPv4 wildcard.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        // Only a host without IPv6 falls back; a busy port is a busy port.
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(error = %e, fallback = %v4, "cannot bind the IPv6 wildcard; using IPv4");
            TcpListener::bind(v4).await.map_err(|e| bind_error(v4, e))
        }
        Err(e) => Err(bind_error(addr, e)),
    }
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the port is in use (another nixgate? choose a port with --listen)"
        }
        _ => "",
    };
    anyhow::Error::new(e).context(format!("binding {addr} {why}").trim_end().to_owned())
}

/// Whether a bind error means this host has no IPv6 (disabled, or the address family absent).
fn no_ipv6(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::AFNOSUPPORT | Errno::ADDRNOTAVAIL | Errno::INVAL)
    )
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    nixgate::telemetry::init(config.log_format);
    raise_nofile_limit(&config);
    let listener = bind(config.listen).await?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        token.cancel();
    });
    let served = nixgate::app::run(config, listener, shutdown).await;
    // The last lines (shutdown, drain) reach a reader that keeps up; a stuck one loses them.
    nixgate::telemetry::flush(std::time::Duration::from_secs(1));
    served.context("starting the cache")
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every connection, cache file being
/// served and live torrent holds a descriptor, and the common soft limit of 1024 is far below
/// `--max-connections`. Uses the `rlimit` crate (already in the dependency tree through
/// librqbit) so that the binary needs no `unsafe`. Warns when even the hard limit is short.
fn raise_nofile_limit(config: &Config) {
    // Connections (regular and reserve), plus room for cache files, torrents and sockets.
    let need =
        config.connections.max + nixgate::http::limits::RESERVE + config.engine.hot_set + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < need as u64 => tracing::warn!(
            limit = n,
            need,
            "the open-file limit is below --max-connections plus room for cache files; \
             raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections"
        ),
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main(flavor = "current_thread")]
async fn health(base: &url::Url) -> anyhow::Result<()> {
    nixgate::upstream::probe::get_ok(base, "healthz", std::time::Duration::from_secs(5))
        .await
        .with_context(|| format!("{}healthz", nixgate::redact::redact(base)))?;
    Ok(())
}

#[tokio::main]
async fn warm(args: nixgate::config::WarmArgs) -> anyhow::Result<()> {
    nixgate::warm::run(&args).await
}

#[tokio::main(flavor = "current_thread")]
async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let v = nixgate::status::cli::fetch(&args.url).await?;
    match args.format {
        StatusFormat::Text => print!("{}", nixgate::status::cli::summary(&v)),
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn discover(args: DiscoverArgs) -> anyhow::Result<()> {
    use nixgate::peers::mdns;
    let (found, announced) = nixgate::peers::discover::discover(args.timeout).await?;
    if found.is_empty() {
        if args.format == DiscoverFormat::Json {
            println!("[]");
        }
        if announced == 0 {
            anyhow::bail!(
                "no nixgate appliance found: nothing announced {} within {:?} \
                 (is multicast UDP 5353 allowed on this network?)",
                mdns::SERVICE_TYPE,
                args.timeout
            );
        }
        anyhow::bail!(
            "no nixgate appliance answered: {announced} announced {} but none answered \
             /nix-cache-info within {:?}",
            mdns::SERVICE_TYPE,
            mdns::PROBE_TIMEOUT
        );
    }
    match args.format {
        DiscoverFormat::NixConf => {
            let urls: Vec<&str> = found.iter().map(|d| d.url.as_str()).collect();
            println!("extra-substituters = {}", urls.join(" "));
        }
        DiscoverFormat::Url => found.iter().for_each(|d| println!("{}", d.url)),
        DiscoverFormat::Json => println!("{}", serde_json::to_string_pretty(&found)?),
    }
    Ok(())
}
