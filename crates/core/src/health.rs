//! Readiness shared between the Kafka probe and the `/readyz` handler.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Whether this process can do its work right now. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    kafka_reachable: Arc<AtomicBool>,
}

impl Health {
    /// Records whether the broker answered the last probe.
    pub fn set_kafka_reachable(&self, reachable: bool) {
        let was = self.kafka_reachable.swap(reachable, Ordering::Relaxed);
        if was != reachable {
            if reachable {
                tracing::info!("Kafka is reachable");
            } else {
                tracing::warn!("Kafka is unreachable; /readyz answers 503");
            }
        }
        metrics::gauge!(crate::telemetry::metric::KAFKA_REACHABLE).set(if reachable {
            1.0
        } else {
            0.0
        });
    }

    /// True while the broker answers.
    pub fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Relaxed)
    }
}
