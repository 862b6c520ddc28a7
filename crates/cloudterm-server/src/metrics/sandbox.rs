//! The sandbox series: creations, the running count, execs by sandbox and program, exec
//! durations, and per-sandbox resource and egress gauges refreshed at scrape time.
//!
//! Label values stay bounded: a command is labelled by its program name only (`python3`, not
//! its arguments), a sandbox keeps at most [`MAX_COMMANDS_PER_SANDBOX`] distinct names and the
//! duration histogram at most [`MAX_DURATION_COMMANDS`] (the rest count as `other`), and a
//! deleted sandbox's exec series are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Distinct program names labelled per sandbox; more become `other`.
pub const MAX_COMMANDS_PER_SANDBOX: usize = 32;
/// Distinct program names in the duration histogram; more become `other`.
pub const MAX_DURATION_COMMANDS: usize = 128;
/// The label of a program name that is not kept.
const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecLabels {
    sandbox: String,
    command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    sandbox: String,
}

fn exec_duration_histogram() -> Histogram {
    // 1 ms to about 2 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// One sandbox's resource use, as the runtime reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxUsage {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// CPU time used so far, seconds.
    pub cpu_seconds: f64,
    /// Processes and threads.
    pub pids: u64,
    /// Bytes sent out of the host so far; `None` without a network.
    pub egress_bytes: Option<u64>,
}

/// The sandbox series, registered once.
#[derive(Clone)]
pub struct SandboxSeries {
    created: Counter,
    active: Gauge,
    exec: Family<ExecLabels, Counter>,
    exec_duration: Family<CommandLabels, Histogram, fn() -> Histogram>,
    memory: Family<SandboxLabels, Gauge>,
    cpu: Family<SandboxLabels, Gauge<f64, AtomicU64>>,
    pids: Family<SandboxLabels, Gauge>,
    egress: Family<SandboxLabels, Gauge>,
    /// The program names labelled per sandbox, to drop its series when it goes.
    labelled: std::sync::Arc<Mutex<Labelled>>,
}

#[derive(Default)]
struct Labelled {
    by_sandbox: HashMap<String, HashSet<String>>,
    durations: HashSet<String>,
}

impl SandboxSeries {
    /// Registers every sandbox series in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let series = SandboxSeries {
            created: Counter::default(),
            active: Gauge::default(),
            exec: Family::default(),
            exec_duration: Family::new_with_constructor(exec_duration_histogram),
            memory: Family::default(),
            cpu: Family::default(),
            pids: Family::default(),
            egress: Family::default(),
            labelled: std::sync::Arc::default(),
        };
        registry.register("sandbox_created", "Sandboxes created and started", series.created.clone());
        registry.register("sandbox_active", "Sandboxes running now", series.active.clone());
        registry.register(
            "sandbox_exec",
            "Commands run in sandboxes, by sandbox and program name",
            series.exec.clone(),
        );
        registry.register(
            "sandbox_exec_duration_seconds",
            "Time from exec request to exit, by program name (non-streaming execs)",
            series.exec_duration.clone(),
        );
        registry.register("sandbox_memory_bytes", "Memory in use by a running sandbox, bytes", series.memory.clone());
        registry.register(
            "sandbox_cpu_seconds",
            "CPU time a running sandbox has used so far, seconds",
            series.cpu.clone(),
        );
        registry.register("sandbox_pids", "Processes and threads of a running sandbox", series.pids.clone());
        registry.register(
            "sandbox_egress_bytes",
            "Bytes a running sandbox has sent out of the host so far (sandboxes with a network)",
            series.egress.clone(),
        );
        series
    }

    /// An exec of `program` started in `sandbox`.
    pub fn exec_started(&self, sandbox: &str, program: &str) {
        let command = {
            let Ok(mut labelled) = self.labelled.lock() else { return };
            let names = labelled.by_sandbox.entry(sandbox.to_string()).or_default();
            if names.contains(program) || names.len() < MAX_COMMANDS_PER_SANDBOX {
                names.insert(program.to_string());
                program.to_string()
            } else {
                names.insert(OTHER.to_string());
                OTHER.to_string()
            }
        };
        self.exec.get_or_create(&ExecLabels { sandbox: sandbox.to_string(), command }).inc();
    }

    /// An exec of `program` finished after `seconds`.
    pub fn exec_finished(&self, program: &str, seconds: f64) {
        let command = match self.labelled.lock() {
            Ok(mut labelled) => {
                if labelled.durations.contains(program) || labelled.durations.len() < MAX_DURATION_COMMANDS {
                    labelled.durations.insert(program.to_string());
                    program.to_string()
                } else {
                    OTHER.to_string()
                }
            }
            Err(_) => return,
        };
        self.exec_duration.get_or_create(&CommandLabels { command }).observe(seconds);
    }

    /// A sandbox was deleted: its exec series go.
    pub fn sandbox_deleted(&self, sandbox: &str) {
        let names = self.labelled.lock().ok().and_then(|mut labelled| labelled.by_sandbox.remove(sandbox));
        for command in names.into_iter().flatten() {
            self.exec.remove(&ExecLabels { sandbox: sandbox.to_string(), command });
        }
    }

    /// Brings the series up to a fresh reading: `created` is the service's running total of
    /// sandboxes handed out (counted there, so every way of starting one is counted), the
    /// running count and per-sandbox gauges are replaced, and sandboxes that stopped since the
    /// last scrape disappear.
    pub fn refresh(&self, created: u64, running: usize, usage: &[(String, SandboxUsage)]) {
        let counted = self.created.get();
        if created > counted {
            self.created.inc_by(created - counted);
        }
        self.active.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.memory.clear();
        self.cpu.clear();
        self.pids.clear();
        self.egress.clear();
        for (sandbox, used) in usage {
            let labels = SandboxLabels { sandbox: sandbox.clone() };
            self.memory.get_or_create(&labels).set(i64::try_from(used.memory_bytes).unwrap_or(i64::MAX));
            self.cpu.get_or_create(&labels).set(used.cpu_seconds);
            self.pids.get_or_create(&labels).set(i64::try_from(used.pids).unwrap_or(i64::MAX));
            if let Some(bytes) = used.egress_bytes {
                self.egress.get_or_create(&labels).set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The label for a command: the program's file name, `sh` for a shell string's first word
/// when there is none, `other` for anything that is not a plain name.
pub fn program_name(argv: Option<&[String]>, command: Option<&str>) -> String {
    let first = match (argv.and_then(|a| a.first()), command) {
        (Some(program), _) => program.as_str(),
        (None, Some(line)) => line.split_whitespace().find(|word| !word.contains('=')).unwrap_or("sh"),
        (None, None) => "sh",
    };
    let name = first.rsplit('/').next().unwrap_or(first);
    let plain = !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if plain {
        name.to_string()
    } else {
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_labelled_by_program_name() {
        let argv = vec!["/usr/bin/python3".to_string(), "-c".to_string(), "print(1)".to_string()];
        assert_eq!(program_name(Some(&argv), None), "python3");
        assert_eq!(program_name(None, Some("FOO=1 ls -la /tmp")), "ls");
        assert_eq!(program_name(None, Some("   ")), "sh");
        assert_eq!(program_name(None, Some("$(evil) x")), "other");
        assert_eq!(program_name(None, Some(&"a".repeat(41))), "other");
    }

    #[test]
    fn a_sandbox_cannot_grow_its_label_set_without_bound() {
        let mut registry = Registry::default();
        let series = SandboxSeries::register(&mut registry);
        for i in 0..100 {
            series.exec_started("sbx_1", &format!("prog{i}"));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let lines = text.lines().filter(|l| l.starts_with("sandbox_exec_total{")).count();
        assert_eq!(lines, MAX_COMMANDS_PER_SANDBOX + 1, "{text}");
        assert!(
            text.contains("command=\"other\",sandbox=\"sbx_1\"} 68")
                || text.contains("sandbox=\"sbx_1\",command=\"other\"} 68"),
            "{text}"
        );
        series.sandbox_deleted("sbx_1");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(!text.contains("sbx_1"), "{text}");
    }
}
