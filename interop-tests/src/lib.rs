//! Helpers for black-box tests: run the real `tributary` binary.
//!
//! The tests under `tests/` drive the gateway with clients we did not write
//! (the `rumqttc` crate today), so they catch what our own codec tests
//! cannot: two implementations reading the specification differently. They
//! talk to the real executable, not to `tributary::run`, so start-up,
//! configuration from the environment and shutdown are exercised too.
//!
//! # Layout
//! - [`TestBroker`]: one gateway process on a free loopback port, killed on
//!   drop; its stderr goes to a file that is printed if the test panics.
//! - [`broker_binary`]: where the executable is (`GATEWAY_BIN`, else the
//!   workspace's `target/debug/tributary`).
//!
//! The helper is synchronous on purpose (std only): it has no runtime to
//! share with the test, and starting a process is a blocking act anyway.
//! The binary is not built here; run `cargo build -p tributary` first.
//! The process inherits the test's environment, so `RUST_LOG=debug` or any
//! `TRIBUTARY_...` override set when running the tests reaches the
//! gateway; the listener address is always set by [`TestBroker`].

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for the gateway to accept TCP connections after spawning.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// How long the gateway gets to exit after SIGTERM before it is killed.
///
/// The gateway itself drains for up to five seconds; tests do not need
/// that, so a short grace keeps the suite fast.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// How many times a start is retried when the chosen port was taken
/// between probing and binding (another test process won the race).
const START_ATTEMPTS: usize = 3;

/// Distinguishes the stderr files of brokers started by one test process.
static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// Path of the `tributary` executable under test.
///
/// `GATEWAY_BIN` wins when set; otherwise `<workspace>/target/debug/tributary`,
/// derived from this crate's manifest directory (the workspace root is its
/// parent). Panics, saying how to build it, when the file does not exist.
pub fn broker_binary() -> PathBuf {
    let path = match std::env::var_os("GATEWAY_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let root = manifest.parent().map(PathBuf::from).unwrap_or(manifest);
            root.join("target").join("debug").join("tributary")
        }
    };
    assert!(
        path.is_file(),
        "tributary binary not found at {}: run `cargo build -p tributary` first \
         (or set GATEWAY_BIN to the executable)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1, found by binding port 0 and letting it go.
///
/// Another process may take it before the gateway binds; [`TestBroker`]
/// retries with a fresh port when that happens.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}

/// A running `tributary` process listening for MQTT on a loopback port.
///
/// Dropping it stops the process (SIGTERM, then SIGKILL after a short
/// grace). If the current thread is panicking at that moment, the
/// gateway's stderr is printed so the failure comes with the broker's side
/// of the story.
pub struct TestBroker {
    /// The gateway process; `None` once stopped.
    child: Option<Child>,
    /// Address of the MQTT/TCP listener.
    addr: SocketAddr,
    /// File receiving the process's stderr (its log).
    log_path: PathBuf,
}

impl TestBroker {
    /// Start the gateway with the default configuration.
    pub fn start() -> TestBroker {
        TestBroker::start_with_env(&[])
    }

    /// Start the gateway with extra environment overrides, e.g.
    /// `("TRIBUTARY_MQTT__MAX_INFLIGHT", "8")`.
    ///
    /// Blocks until the listener accepts TCP connections (at most ten
    /// seconds per attempt) and panics, printing the gateway's stderr, if
    /// it never does.
    pub fn start_with_env(env: &[(&str, &str)]) -> TestBroker {
        let binary = broker_binary();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
            let log_path = std::env::temp_dir().join(format!(
                "tributary-interop-{}-{instance}-{port}.log",
                std::process::id()
            ));
            let log = File::create(&log_path).expect("cannot create the broker's stderr file");
            let mut command = Command::new(&binary);
            command
                .env("TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND", addr.to_string())
                // Concurrent brokers must not fight over the MQTT-SN UDP port.
                .env("TRIBUTARY_MQTTSN__BIND", "127.0.0.1:0")
                // ... nor over the CoAP one.
                .env("TRIBUTARY_COAP__BIND", "127.0.0.1:0")
                // ... nor over the LwM2M one.
                .env("TRIBUTARY_LWM2M__BIND", "127.0.0.1:0")
                // ... nor over STOMP's (TCP and HTTP).
                .env("TRIBUTARY_STOMP__BIND", "127.0.0.1:0")
                .env("TRIBUTARY_STOMP__WS_BIND", "127.0.0.1:0")
                // ... nor over the WebSocket and HTTP API ports.
                .env("TRIBUTARY_LISTENERS__WS__DEFAULT__BIND", "127.0.0.1:0")
                .env("TRIBUTARY_API__BIND", "127.0.0.1:0")
                // No test shares a store: in memory unless a test says otherwise.
                .env("TRIBUTARY_STORAGE__BACKEND", "memory")
                // The log goes to a file: no colour escapes.
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            for (key, value) in env {
                command.env(key, value);
            }
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary.display()));
            let mut broker = TestBroker {
                child: Some(child),
                addr,
                log_path,
            };
            if broker.wait_ready() {
                return broker;
            }
            // Exited early (port taken, bad configuration) or never came up:
            // keep its log for the final message and try a fresh port.
            broker.stop();
            last_log = broker.log();
        }
        panic!("tributary did not start after {START_ATTEMPTS} attempts; last stderr:\n{last_log}");
    }

    /// Address of the MQTT/TCP listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Host to give MQTT clients (always `127.0.0.1`).
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// Port of the MQTT/TCP listener.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything the gateway wrote to stderr so far (best effort).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Probe the port until it accepts, the process exits, or time runs out.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if !self.running() {
                return false;
            }
            // A listener that is not ours may hold the port if it was taken
            // after `free_port`; our process then exits, hence the re-check.
            if TcpStream::connect_timeout(&self.addr, PROBE_INTERVAL * 5).is_ok() {
                return self.running();
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        false
    }

    /// Whether the process is still alive.
    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, a short grace, then SIGKILL; always reaps the process.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- tributary stderr ({}) -----\n{}----- end of tributary stderr -----",
                self.addr,
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}
