//! Prometheus metrics of the master: operations by kind and result, their durations, upload and
//! git-fetch volumes, rendered in the text exposition format at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::record::Op;

type Labels = Vec<(String, String)>;

fn duration_histogram() -> Histogram {
    // 10 ms .. ~ 3 h
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

pub struct Metrics {
    registry: Registry,
    operations: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    upload_bytes: Counter,
    git_fetches: Family<Labels, Counter>,
    webhook_deliveries: Family<Labels, Counter>,
    uploads_waiting: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_master");
        let operations = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let upload_bytes = Counter::default();
        let git_fetches = Family::<Labels, Counter>::default();
        let webhook_deliveries = Family::<Labels, Counter>::default();
        let uploads_waiting = Gauge::default();
        registry.register(
            "operations",
            "Instance operations (upload, build, start, stop, delete) by result",
            operations.clone(),
        );
        registry.register(
            "operation_duration_seconds",
            "Duration of instance operations",
            durations.clone(),
        );
        registry.register(
            "upload_bytes",
            "Compressed bytes of accepted uploads",
            upload_bytes.clone(),
        );
        registry.register(
            "git_fetches",
            "git-upload-pack requests served by result",
            git_fetches.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by result",
            webhook_deliveries.clone(),
        );
        registry.register(
            "uploads_waiting",
            "Uploads waiting for an upload slot (--max-concurrent-uploads)",
            uploads_waiting.clone(),
        );
        Self {
            registry,
            operations,
            durations,
            upload_bytes,
            git_fetches,
            webhook_deliveries,
            uploads_waiting,
        }
    }

    /// Counts one finished operation; `ok` false counts a failure.
    pub fn operation(&self, op: Op, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.operations
            .get_or_create(&vec![
                ("op".to_owned(), op.as_str().to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
        self.durations
            .get_or_create(&vec![("op".to_owned(), op.as_str().to_owned())])
            .observe(took.as_secs_f64());
    }

    pub fn uploaded(&self, bytes: u64) {
        self.upload_bytes.inc_by(bytes);
    }

    /// One more (`true`) or one less (`false`) upload waiting for a slot.
    pub fn upload_waiting(&self, waiting: bool) {
        if waiting {
            self.uploads_waiting.inc();
        } else {
            self.uploads_waiting.dec();
        }
    }

    pub fn git_fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.git_fetches
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }

    pub fn webhook(&self, ok: bool) {
        let result = if ok { "ok" } else { "gave_up" };
        self.webhook_deliveries
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.operation(Op::Build, false, Duration::from_millis(20));
        m.uploaded(10);
        let text = m.render();
        assert!(
            text.contains("berth_master_operations_total{op=\"build\",result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_master_operation_duration_seconds_count{op=\"build\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_master_upload_bytes_total 10"),
            "{text}"
        );
    }
}
