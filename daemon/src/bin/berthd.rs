//! berthd entry point: flags and config, logging, then `server::prepare` + `server::run`.
//!
//! `berthd [--config FILE] [--root DIR] [--state DIR] [--address SOCK] [--log-level LEVEL] [--log-format
//! text|json] [--registry-hosts-dir DIR] [--net-conf-dir DIR] [--cni-plugin-dir DIR]... [--net-cache-dir DIR]
//! [--net-ipam-dir DIR] [--net-bridge NAME] [--net-subnet CIDR]`, and `berthd config default` (prints the full
//! default config). This file must stay thin.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_daemon::config::{Config, LogFormat, DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_TOML};
use berth_daemon::{failpoint, server};
use clap::{Parser, Subcommand};

/// Berth's container supervision daemon (serves containerd's API v1).
#[derive(Debug, Parser)]
#[command(name = "berthd", version)]
struct Cli {
    /// Config file (default /etc/berth/config.toml if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Persistent data dir.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state dir.
    #[arg(long)]
    state: Option<PathBuf>,
    /// gRPC unix socket.
    #[arg(long)]
    address: Option<PathBuf>,
    /// Log filter (info, debug, berth_daemon=trace...).
    #[arg(long)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Registry hosts directory (containerd's certs.d layout) for server-side pulls.
    #[arg(long)]
    registry_hosts_dir: Option<PathBuf>,
    /// CNI network configs dir ([network] conf_dir).
    #[arg(long)]
    net_conf_dir: Option<PathBuf>,
    /// CNI plugin dir; repeat for several, in lookup order ([network] plugin_dirs).
    #[arg(long)]
    cni_plugin_dir: Vec<PathBuf>,
    /// Attachment cache dir ([network] cache_dir).
    #[arg(long)]
    net_cache_dir: Option<PathBuf>,
    /// host-local IPAM data dir of the default network ([network] ipam_data_dir).
    #[arg(long)]
    net_ipam_dir: Option<PathBuf>,
    /// Bridge of the default network ([network] default_bridge).
    #[arg(long)]
    net_bridge: Option<String>,
    /// Subnet of the default network ([network] default_subnet).
    #[arg(long)]
    net_subnet: Option<berth_net::IpNet>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration (TOML, commented).
    Default,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => Config::default(),
    };
    if let Some(v) = &cli.root {
        config.root = v.clone();
    }
    if let Some(v) = &cli.state {
        config.state = v.clone();
    }
    if let Some(v) = &cli.address {
        config.address = v.clone();
    }
    if let Some(v) = &cli.log_level {
        config.log_level = v.clone();
    }
    if let Some(v) = cli.log_format {
        config.log_format = v;
    }
    if let Some(v) = &cli.registry_hosts_dir {
        config.registry_hosts_dir = v.clone();
    }
    let net = &mut config.network;
    if let Some(v) = &cli.net_conf_dir {
        net.conf_dir = v.clone();
    }
    if !cli.cni_plugin_dir.is_empty() {
        net.plugin_dirs = cli.cni_plugin_dir.clone();
    }
    if let Some(v) = &cli.net_cache_dir {
        net.cache_dir = Some(v.clone());
    }
    if let Some(v) = &cli.net_ipam_dir {
        net.ipam_data_dir = Some(v.clone());
    }
    if let Some(v) = &cli.net_bridge {
        net.default_bridge = v.clone();
    }
    if let Some(v) = cli.net_subnet {
        net.default_subnet = v;
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    // The HTTP/2 stack's debug output drowns berthd's own; keep it at info unless asked for by name.
    let mut directives = config.log_level.clone();
    for quiet in ["h2", "hyper", "hyper_util", "tower", "tonic"] {
        if !directives.contains(quiet) {
            directives.push_str(&format!(",{quiet}=info"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("invalid log level {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Config {
        what: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{DEFAULT_CONFIG_TOML}");
        return;
    }
    if let Err(e) = run(&cli) {
        eprintln!("berthd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    init_logging(&config)?;
    failpoint::init(&config.failpoints)?;
    let prepared = server::prepare(config)?;
    server::run(prepared)?;
    Ok(())
}
