//! A recording `metrics` recorder for the metric tests: every sample is kept, in order,
//! and never drained, so tests running in parallel in one process each read their own
//! by filtering on their lock's unique name (the `lock` label, `NameLabel::Full`).
//! The recorder is process-global because the queue records from spawned tasks on any
//! worker thread (a lease's loss monitor, a background release).

use std::sync::{Arc, Mutex as StdMutex, Once};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// What one metric call did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A counter increment.
    Add(u64),
    /// A gauge change (decrements negative).
    Gauge(f64),
    /// A histogram sample.
    Sample(f64),
}

/// One metric call, with its name and labels.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: Value,
}

impl Event {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

static EVENTS: StdMutex<Vec<Event>> = StdMutex::new(Vec::new());

struct Handle {
    name: String,
    labels: Vec<(String, String)>,
}

impl Handle {
    fn push(&self, value: Value) {
        EVENTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Event {
                name: self.name.clone(),
                labels: self.labels.clone(),
                value,
            });
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.push(Value::Add(value));
    }
    fn absolute(&self, _value: u64) {}
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.push(Value::Gauge(value));
    }
    fn decrement(&self, value: f64) {
        self.push(Value::Gauge(-value));
    }
    fn set(&self, _value: f64) {}
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(Value::Sample(value));
    }
}

struct Recording;

fn handle(key: &Key) -> Arc<Handle> {
    Arc::new(Handle {
        name: key.name().to_owned(),
        labels: key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect(),
    })
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(handle(key))
    }
}

/// Installs the recording recorder for this test process (once).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::set_global_recorder(Recording).expect("a recorder was already installed");
    });
}

/// The events of metric `name` for lock `lock`, in the order they were recorded.
pub fn events(lock: &str, name: &str) -> Vec<Event> {
    EVENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|e| e.name == name && e.label("lock") == Some(lock))
        .cloned()
        .collect()
}

/// The histogram samples of metric `name` for `lock` whose labels include `extra`.
pub fn samples(lock: &str, name: &str, extra: &[(&str, &str)]) -> Vec<f64> {
    events(lock, name)
        .into_iter()
        .filter(|e| extra.iter().all(|(k, v)| e.label(k) == Some(v)))
        .filter_map(|e| match e.value {
            Value::Sample(v) => Some(v),
            _ => None,
        })
        .collect()
}

/// The sum of a counter's increments (or a gauge's changes) for `lock` with `extra`.
pub fn total(lock: &str, name: &str, extra: &[(&str, &str)]) -> f64 {
    events(lock, name)
        .into_iter()
        .filter(|e| extra.iter().all(|(k, v)| e.label(k) == Some(v)))
        .map(|e| match e.value {
            Value::Add(n) => n as f64,
            Value::Gauge(d) => d,
            Value::Sample(_) => 0.0,
        })
        .sum()
}
