//! CPU time and resident memory of a process, from `/proc` (Linux).
//!
//! CPU time is `utime + stime` (fields 14 and 15 of `/proc/PID/stat`, in
//! clock ticks, usually 100 per second: a 10 ms resolution, fine over a
//! window of seconds). RSS is `VmRSS` from `/proc/PID/status`, in KiB.
//! The bench samples the broker at the start and the end of the measured
//! window and itself the same way, to tell when the load generator, not
//! the broker, was the bottleneck.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};

/// One sample of a process's CPU time and RSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time in seconds.
    pub cpu_s: f64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

/// Which process to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// The load generator itself.
    SelfProcess,
    /// Another process (the broker).
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::SelfProcess => String::from("/proc/self"),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Clock ticks per second for `/proc/PID/stat` (`getconf CLK_TCK`, else
/// the Linux default 100).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Sample CPU time and RSS of `pid`.
pub fn sample(pid: Pid) -> anyhow::Result<ProcSample> {
    let dir = pid.dir();
    let stat =
        std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("{dir}/status"))?;
    Ok(ProcSample {
        cpu_s: parse_cpu_ticks(&stat)? as f64 / clock_ticks(),
        rss_kib: parse_vm_rss(&status)?,
    })
}

/// `utime + stime` in ticks from the text of `/proc/PID/stat`. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let after = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| anyhow!("unexpected /proc/PID/stat format"))?;
    // After the name: field 3 (state) is index 0, so utime (14) is 11.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/PID/stat format (field {})", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn parse_vm_rss(status: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS line in /proc/PID/status"))
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Datagrams the kernel dropped at the UDP sockets bound to local `port`
/// (receive buffer full, or a checksum error), summed over
/// `/proc/net/udp` and `/proc/net/udp6`: the `drops` column, counted over
/// the socket's life. `None` when no such socket is visible (another
/// network namespace, or nothing bound).
pub fn udp_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            if let Some(d) = parse_udp_drops(&text, port) {
                total = Some(total.unwrap_or(0) + d);
            }
        }
    }
    total
}

/// The `drops` of the sockets bound to local `port` in the text of
/// `/proc/net/udp` or `/proc/net/udp6`; `None` when there is none.
pub fn parse_udp_drops(table: &str, port: u16) -> Option<u64> {
    let mut total = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) {
            continue;
        }
        if let Some(drops) = fields.get(12).and_then(|d| d.parse::<u64>().ok()) {
            total = Some(total.unwrap_or(0) + drops);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_strange_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 \
                    8 0 1000 10000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).expect("parse"), 320);
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    4321 kB\nThreads: 1\n";
        assert_eq!(parse_vm_rss(status).expect("parse"), 4321);
    }

    #[test]
    fn parses_udp_drops() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n \
             6379: 0100007F:075C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1496022 2 00000000232f003b 17\n \
             8819: 0100007F:8BAD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1496023 2 00000000527930dc 5\n";
        assert_eq!(parse_udp_drops(table, 1884), Some(17));
        assert_eq!(parse_udp_drops(table, 0x8BAD), Some(5));
        assert_eq!(parse_udp_drops(table, 5683), None);
    }

    #[test]
    fn samples_itself() {
        let s = sample(Pid::SelfProcess).expect("sample");
        assert!(s.rss_kib > 0);
        assert!(open_files_limit().is_some());
    }
}
