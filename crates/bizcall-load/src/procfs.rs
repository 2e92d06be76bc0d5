//! What `/proc` tells about the processes under test: resident memory
//! and CPU time, per process or per command name.

use std::collections::HashMap;
use std::time::Instant;

/// A process (or every process with one command name) whose CPU time is
/// read over the sending phase: `name=PID` or `name=comm:COMMAND`.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) target: WatchTarget,
}

#[derive(Clone, Debug)]
pub(crate) enum WatchTarget {
    Pid(u32),
    Comm(String),
}

impl std::str::FromStr for Watched {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, target) = s
            .split_once('=')
            .ok_or_else(|| format!("expected name=PID or name=comm:COMMAND, got \"{s}\""))?;
        let target = match target.strip_prefix("comm:") {
            Some(comm) => WatchTarget::Comm(comm.to_string()),
            None => WatchTarget::Pid(
                target
                    .parse()
                    .map_err(|_| format!("expected a pid after '=', got \"{target}\""))?,
            ),
        };
        Ok(Watched {
            name: name.to_string(),
            target,
        })
    }
}

impl Watched {
    pub(crate) fn pids(&self) -> Vec<u32> {
        match &self.target {
            WatchTarget::Pid(p) => vec![*p],
            WatchTarget::Comm(comm) => std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .collect(),
        }
    }

    /// CPU seconds per process, so processes that come or go between two
    /// readings are counted only while present in both.
    pub(crate) fn read(&self) -> HashMap<u32, f64> {
        self.pids()
            .into_iter()
            .filter_map(|p| Some((p, cpu_seconds(p)?)))
            .collect()
    }
}

/// Reads every watched process (and this one) at the start of a phase.
pub(crate) struct CpuWatch {
    /// CPU seconds per pid of each watched entry, at the start.
    pub(crate) start: Vec<HashMap<u32, f64>>,
    pub(crate) watched: Vec<Watched>,
    pub(crate) at: Instant,
    machine: MachineWatch,
}

/// The whole machine over a phase: how busy its cores were, and how many
/// threads were runnable (`procs_running` of `/proc/stat`, this reader
/// included), sampled every 100 ms. A run queue longer than the cores
/// means threads waited for one: the machine, not a process, was the limit.
struct MachineWatch {
    busy_idle: Option<(u64, u64)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<Vec<u32>>>,
}

/// What the machine did over a phase.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Machine {
    /// Cores busy (user, system, interrupts: all but idle and iowait).
    pub(crate) cores_busy: Option<f64>,
    pub(crate) run_queue_mean: f64,
    pub(crate) run_queue_p90: u32,
    pub(crate) run_queue_max: u32,
}

/// (busy, idle) clock ticks summed over all cores.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = f.get(3)? + f.get(4)?;
    let busy = f.iter().take(8).sum::<u64>() - idle;
    Some((busy, idle))
}

fn procs_running() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("procs_running "))?
        .trim()
        .parse()
        .ok()
}

impl MachineWatch {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                samples.extend(procs_running());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            samples
        });
        MachineWatch {
            busy_idle: cpu_ticks(),
            stop,
            sampler: Some(sampler),
        }
    }

    fn finish(&mut self) -> Machine {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut samples = self
            .sampler
            .take()
            .and_then(|s| s.join().ok())
            .unwrap_or_default();
        samples.sort_unstable();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cores_busy = match (self.busy_idle, cpu_ticks()) {
            (Some((b0, i0)), Some((b1, i1))) if b1 + i1 > b0 + i0 => {
                Some((b1 - b0) as f64 / ((b1 + i1) - (b0 + i0)) as f64 * cores)
            }
            _ => None,
        };
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        Machine {
            cores_busy,
            run_queue_mean: samples.iter().map(|&x| x as f64).sum::<f64>()
                / samples.len().max(1) as f64,
            run_queue_p90: at(0.9),
            run_queue_max: samples.last().copied().unwrap_or(0),
        }
    }
}

impl CpuWatch {
    pub(crate) fn start(watched: &[Watched]) -> Self {
        let mut watched = watched.to_vec();
        watched.push(Watched {
            name: "bizcall-load (this)".into(),
            target: WatchTarget::Pid(std::process::id()),
        });
        CpuWatch {
            start: watched.iter().map(Watched::read).collect(),
            watched,
            at: Instant::now(),
            machine: MachineWatch::start(),
        }
    }

    /// The machine over the phase (ends its sampling: call once).
    pub(crate) fn machine(&mut self) -> Machine {
        self.machine.finish()
    }

    /// Cores used by each process over the phase (1.0 = one core busy).
    pub(crate) fn finish(&self) -> Vec<(String, f64)> {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        self.watched
            .iter()
            .zip(&self.start)
            .map(|(w, before)| {
                let after = w.read();
                let used: f64 = after
                    .iter()
                    .filter_map(|(pid, a)| Some(a - before.get(pid)?))
                    .sum();
                (w.name.clone(), used / secs)
            })
            .collect()
    }
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(100.0)
    });
    Some(ticks / hz)
}
