//! `tributary`: the command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_config::{default_config_toml, Config};

/// Tributary multi-protocol IoT gateway.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about)]
struct Cli {
    /// Configuration file (TOML). Without it the documented defaults apply.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// Check a configuration file and exit.
    CheckConfig,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    let env = std::env::vars();
    match path {
        Some(p) => {
            Config::load(p).map_err(|e| format!("invalid configuration {}:\n{e}", p.display()))
        }
        None => Config::from_toml_str_with_env("", env)
            .map_err(|e| format!("invalid configuration (environment):\n{e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::PrintDefaultConfig) = cli.command {
        print!("{}", default_config_toml());
        return ExitCode::SUCCESS;
    }
    let config = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tributary: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_tracing(&config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tributary: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tributary::run(&config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
