//! The `/metrics` body in the Prometheus text format (0.0.4), from prometheus-client's
//! OpenMetrics text.
//!
//! prometheus-client writes OpenMetrics: a counter's `# HELP`/`# TYPE` lines name the family
//! without its `_total` suffix, there may be `# UNIT` lines, and the body ends with `# EOF`.
//! Served as `text/plain; version=0.0.4` (what every Prometheus scrapes and `promtool check
//! metrics` lints), those counter lines fail the lint ("no help text"), so they are renamed to
//! the sample name; the OpenMetrics-only lines are dropped. Everything else passes unchanged.

use std::collections::HashSet;

/// Rewrites OpenMetrics text into the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_metadata_takes_the_sample_name() {
        let text = "# HELP jobs Jobs run.\n# TYPE jobs counter\njobs_total{kind=\"a\"} 2\n\
                    # HELP active Active ones.\n# TYPE active gauge\nactive 1\n# UNIT x seconds\n# EOF\n";
        assert_eq!(
            to_prometheus_text(text),
            "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{kind=\"a\"} 2\n\
             # HELP active Active ones.\n# TYPE active gauge\nactive 1\n"
        );
    }

    #[test]
    fn a_gauge_named_like_a_counter_is_left_alone() {
        let text = "# HELP jobs_total_x Not a counter.\n# TYPE jobs_total_x gauge\njobs_total_x 1\n";
        assert_eq!(to_prometheus_text(text), text);
    }
}
