//! `/metrics`: a published snapshot in the Prometheus text format (OpenMetrics), encoded by
//! the `prometheus-client` crate through a collector that reads the snapshot at scrape time
//! (no second set of counters to keep in step).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Published;

/// The content type of the text format.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `p` as metrics named `courier_…`.
pub(crate) fn render(p: &std::sync::Arc<Published>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("courier");
    registry.register_collector(Box::new(SnapshotCollector(p.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct SnapshotCollector(std::sync::Arc<Published>);

type Labels = Vec<(&'static str, String)>;

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, u64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter_f(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, f64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, i64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let p = &*self.0;
        let s = &p.snapshot;
        let c = &s.counters;
        let f = |name: &str| vec![("function", name.to_owned())];
        let mut states = Vec::new();
        for g in &s.groups {
            for (state, v) in [("waiting", g.waiting), ("queued", g.queued), ("processing", g.processing)] {
                states.push((vec![("function", g.function.clone()), ("state", state.to_owned())], n(v)));
            }
        }
        gauge(&mut enc, "tasks", "Tasks by function and state (waiting, queued, processing)", &states)?;
        let finished: Vec<_> = s.groups.iter().map(|g| (f(&g.function), g.finished)).collect();
        counter(&mut enc, "tasks_finished", "Runs finished, by function", &finished)?;
        let erred: Vec<_> = s.groups.iter().map(|g| (f(&g.function), g.erred)).collect();
        counter(&mut enc, "tasks_erred", "Tasks failed for good, by function", &erred)?;
        let seconds: Vec<_> = s.groups.iter().map(|g| (f(&g.function), g.seconds)).collect();
        counter_f(&mut enc, "task_run_seconds", "Seconds spent running tasks, by function", &seconds)?;
        counter(&mut enc, "tasks_submitted", "Tasks accepted", &[(vec![], c.submitted)])?;
        gauge(&mut enc, "tasks_in_table", "Tasks the scheduler knows", &[(vec![], n(s.tasks))])?;
        {
            let d = &s.durations;
            let mut m = enc.encode_descriptor(
                "task_duration_seconds",
                "Run times of finished tasks",
                None,
                MetricType::Histogram,
            )?;
            let mut buckets: Vec<(f64, u64)> = d.bounds.iter().copied().zip(d.counts.iter().copied()).collect();
            buckets.push((f64::INFINITY, d.counts.last().copied().unwrap_or(0)));
            let count = d.counts.iter().sum();
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(d.sum, count, &buckets, None)?;
        }
        {
            let help = "Tasks finished per second over the last second or more";
            let m = enc.encode_descriptor("tasks_per_second", help, None, MetricType::Gauge)?;
            ConstGauge::new(p.tasks_per_second).encode(m)?;
        }
        let mut bytes = Vec::new();
        let mut values = Vec::new();
        for w in &s.workers {
            for (dir, list) in [("in", &w.transfers.fetched), ("out", &w.transfers.served)] {
                for t in list {
                    let labels =
                        vec![("worker", w.name.clone()), ("scheme", t.scheme.clone()), ("direction", dir.to_owned())];
                    bytes.push((labels.clone(), t.bytes));
                    values.push((labels, t.values));
                }
            }
        }
        counter(
            &mut enc,
            "transfer_bytes",
            "Bytes of task data moved, by worker, transport scheme and direction",
            &bytes,
        )?;
        counter(
            &mut enc,
            "transfer_values",
            "Values of task data moved, by worker, transport scheme and direction",
            &values,
        )?;
        counter(
            &mut enc,
            "scheduler_received_bytes",
            "Bytes of messages the scheduler received",
            &[(vec![("scheme", p.scheme.clone())], p.received_bytes)],
        )?;
        let errors: Vec<_> = p.comm_errors.iter().map(|(k, v)| (vec![("kind", k.clone())], *v)).collect();
        counter(&mut enc, "comm_errors", "Errors on the scheduler's peers' comms, by kind", &errors)?;
        let refused: Vec<_> = p.refused.iter().map(|(k, v)| (vec![("kind", k.clone())], *v)).collect();
        counter(&mut enc, "handshakes_refused", "Connections the scheduler's listener refused, by kind", &refused)?;
        let paused = s.workers.iter().filter(|w| w.memory.paused).count() as i64;
        let retiring = s.workers.iter().filter(|w| w.retiring).count() as i64;
        let running = s.workers.len() as i64 - retiring;
        gauge(
            &mut enc,
            "workers",
            "Workers connected, by status (running includes paused)",
            &[
                (vec![("status", "running".to_owned())], running),
                (vec![("status", "retiring".to_owned())], retiring),
                (vec![("status", "paused".to_owned())], paused),
            ],
        )?;
        gauge(
            &mut enc,
            "adaptive_target_workers",
            "Workers the outstanding work calls for (scale workers to this)",
            &[(vec![], n(s.adaptive_target))],
        )?;
        counter(&mut enc, "workers_joined", "Workers that joined", &[(vec![], c.workers_joined)])?;
        counter(&mut enc, "workers_retired", "Workers that left after retirement", &[(vec![], c.workers_retired)])?;
        counter(&mut enc, "workers_lost", "Workers lost (comm closed or silent)", &[(vec![], c.workers_lost)])?;
        counter(
            &mut enc,
            "heartbeats_missed",
            "Workers dropped for missing heartbeats",
            &[(vec![], c.heartbeats_missed)],
        )?;
        let mut memory = Vec::new();
        let mut threads = Vec::new();
        let mut processing = Vec::new();
        for w in &s.workers {
            let m = &w.memory;
            for (kind, v) in [("limit", m.limit), ("managed", m.managed), ("spilled", m.spilled), ("rss", m.rss)] {
                memory.push((vec![("worker", w.name.clone()), ("kind", kind.to_owned())], n(v)));
            }
            let unmanaged = m.rss.saturating_sub(m.managed);
            memory.push((vec![("worker", w.name.clone()), ("kind", "unmanaged".to_owned())], n(unmanaged)));
            threads.push((vec![("worker", w.name.clone())], i64::from(w.nthreads)));
            processing.push((vec![("worker", w.name.clone())], n(w.processing)));
        }
        gauge(&mut enc, "worker_memory_bytes", "Worker memory by kind (as last reported)", &memory)?;
        gauge(&mut enc, "worker_threads", "Worker threads", &threads)?;
        gauge(&mut enc, "worker_processing", "Runs assigned to each worker", &processing)?;
        Ok(())
    }
}
