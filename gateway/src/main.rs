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
    /// Check a configuration file (and the files it names: users, ACL, certificates) and exit.
    CheckConfig {
        /// The file to check (same as `--config FILE`).
        file: Option<PathBuf>,
    },
    /// Manage the built-in user database file.
    Users {
        #[command(subcommand)]
        action: UsersCommand,
    },
    /// Operate a running gateway through its HTTP API.
    Ctl {
        /// API address `host:port`; default: `api.bind` of the configuration (0.0.0.0 → 127.0.0.1).
        #[arg(long)]
        api: Option<String>,
        /// API key; default: the first of `api.api_keys`.
        #[arg(long)]
        key: Option<String>,
        /// API secret; default: the first of `api.api_keys`.
        #[arg(long)]
        secret: Option<String>,
        #[command(subcommand)]
        what: CtlCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Add a user (or replace its password). The password is read from stdin unless --password is given.
    Add {
        /// User name.
        name: String,
        /// Password (avoid on shared machines: it shows in the process list).
        #[arg(long)]
        password: Option<String>,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = tributary::security::userdb::DEFAULT_ITERATIONS)]
        iterations: u32,
        /// Users file; default: authentication.built_in_database.users_file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Remove a user.
    Delete {
        /// User name.
        name: String,
        /// Users file; default: authentication.built_in_database.users_file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Clients: list, show, kick.
    Clients {
        #[command(subcommand)]
        op: ClientsOp,
    },
    /// List subscriptions, optionally of one client.
    Subscriptions {
        /// Only this client's.
        #[arg(long)]
        clientid: Option<String>,
    },
    /// Retained messages: list, delete.
    Retained {
        #[command(subcommand)]
        op: RetainedOp,
    },
    /// Show the log filter, or set it.
    LogLevel {
        /// New filter (`debug`, `info,tributary_mqtt=trace`).
        level: Option<String>,
    },
    /// Node status.
    Status,
}

#[derive(Debug, Subcommand)]
enum ClientsOp {
    /// List clients.
    List,
    /// Show one client.
    Show {
        /// Client id.
        clientid: String,
    },
    /// Disconnect a client.
    Kick {
        /// Client id.
        clientid: String,
    },
}

#[derive(Debug, Subcommand)]
enum RetainedOp {
    /// List retained messages (optionally matching a filter).
    List {
        /// Topic filter.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Delete the retained message of a topic.
    Delete {
        /// Topic.
        topic: String,
    },
}

fn users_file(config: &Config, file: Option<PathBuf>) -> Result<PathBuf, String> {
    file.or_else(|| {
        let f = config.authentication.built_in_database.users_file.trim();
        (!f.is_empty()).then(|| PathBuf::from(f))
    })
    .ok_or_else(|| {
        "no users file: pass --file or set authentication.built_in_database.users_file".to_owned()
    })
}

fn users(config: &Config, action: UsersCommand) -> ExitCode {
    use tributary::security::userdb;
    let result = match action {
        UsersCommand::Add {
            name,
            password,
            iterations,
            file,
        } => users_file(config, file).and_then(|path| {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            userdb::add_user(&path, &name, &password, iterations)
                .map(|()| format!("user {name:?} written to {}", path.display()))
                .map_err(|e| e.to_string())
        }),
        UsersCommand::Delete { name, file } => {
            users_file(config, file).and_then(|path| match userdb::delete_user(&path, &name) {
                Ok(true) => Ok(format!("user {name:?} removed from {}", path.display())),
                Ok(false) => Err(format!("no user {name:?} in {}", path.display())),
                Err(e) => Err(e.to_string()),
            })
        }
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tributary users: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(
    config: &Config,
    api: Option<String>,
    key: Option<String>,
    secret: Option<String>,
    what: CtlCommand,
) -> ExitCode {
    use tributary::ctl::{call, encode_segment, encode_topic, Target};
    let addr = api.unwrap_or_else(|| {
        let mut a = config.api.bind;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a.to_string()
    });
    let first = config.api.api_keys.first();
    let target = Target {
        addr,
        key: key
            .or_else(|| first.map(|k| k.key.clone()))
            .unwrap_or_default(),
        secret: secret
            .or_else(|| first.map(|k| k.secret.clone()))
            .unwrap_or_default(),
    };
    use hyper::Method;
    let (method, path, body) = match what {
        CtlCommand::Clients {
            op: ClientsOp::List,
        } => (Method::GET, "/api/v5/clients?limit=10000".to_owned(), None),
        CtlCommand::Clients {
            op: ClientsOp::Show { clientid },
        } => (
            Method::GET,
            format!("/api/v5/clients/{}", encode_segment(&clientid)),
            None,
        ),
        CtlCommand::Clients {
            op: ClientsOp::Kick { clientid },
        } => (
            Method::DELETE,
            format!("/api/v5/clients/{}", encode_segment(&clientid)),
            None,
        ),
        CtlCommand::Subscriptions { clientid } => (
            Method::GET,
            match clientid {
                Some(c) => format!(
                    "/api/v5/subscriptions?limit=10000&clientid={}",
                    encode_segment(&c)
                ),
                None => "/api/v5/subscriptions?limit=10000".to_owned(),
            },
            None,
        ),
        CtlCommand::Retained {
            op: RetainedOp::List { topic },
        } => (
            Method::GET,
            match topic {
                Some(t) => format!(
                    "/api/v5/mqtt/retainer/messages?limit=10000&topic={}",
                    encode_segment(&t)
                ),
                None => "/api/v5/mqtt/retainer/messages?limit=10000".to_owned(),
            },
            None,
        ),
        CtlCommand::Retained {
            op: RetainedOp::Delete { topic },
        } => (
            Method::DELETE,
            format!("/api/v5/mqtt/retainer/message/{}", encode_topic(&topic)),
            None,
        ),
        CtlCommand::LogLevel { level: None } => (Method::GET, "/api/v5/log/level".to_owned(), None),
        CtlCommand::LogLevel { level: Some(l) } => (
            Method::PUT,
            "/api/v5/log/level".to_owned(),
            Some(serde_json::json!({ "level": l })),
        ),
        CtlCommand::Status => (Method::GET, "/api/v5/status".to_owned(), None),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tributary ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(call(&target, method, &path, body)) {
        Ok((status, text)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            if (200..300).contains(&status) {
                if !pretty.is_empty() {
                    println!("{pretty}");
                } else {
                    println!("ok");
                }
                ExitCode::SUCCESS
            } else {
                eprintln!("tributary ctl: HTTP {status}: {pretty}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "tributary ctl: cannot reach the API at {}: {e}",
                target.addr
            );
            ExitCode::FAILURE
        }
    }
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
    let path = match &cli.command {
        Some(Command::CheckConfig { file: Some(f) }) => Some(f),
        _ => cli.config.as_ref(),
    };
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tributary: {e}");
            return ExitCode::from(2);
        }
    };
    tributary::reload::set_config_path(path.cloned());
    match cli.command {
        Some(Command::CheckConfig { .. }) => {
            if let Err(e) = tributary::security::check_files(&config) {
                eprintln!("tributary: {e}");
                return ExitCode::from(2);
            }
            println!("configuration is valid");
            return ExitCode::SUCCESS;
        }
        Some(Command::Users { action }) => return users(&config, action),
        Some(Command::Ctl {
            api,
            key,
            secret,
            what,
        }) => return ctl(&config, api, key, secret, what),
        _ => {}
    }
    tributary::logging::init(&config.log.level, config.log.format);
    raise_open_files_limit();
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
    // The signal handlers are installed before anything starts listening:
    // a SIGTERM that comes while listeners are still starting shuts down
    // cleanly instead of killing the process.
    match runtime.block_on(async {
        let signal = shutdown_signal();
        tributary::run(&config, signal).await
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM, registered now (inside the runtime), awaited later.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every connection is a file descriptor: raise the soft open-files limit to
/// the hard one (what `ulimit -n` would otherwise need), and say where it is.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}
