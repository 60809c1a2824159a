//! Webhook callbacks: a queue filled at status changes and one sender thread that POSTs them.
//!
//! Deliveries never block an API answer. One thread keeps the callbacks of a job in the order
//! of its status changes; each POST has a short timeout so a slow receiver delays the others by
//! at most that much. Failed deliveries are counted, not retried (the real gateway says
//! persistent failures may stop deliveries). `duplicate_callbacks` sends each one twice, as
//! network retries on the real gateway may; `drop_callbacks` withholds a seeded share.

use super::faults::{self, Stream};
use super::Shared;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long one callback POST may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(3);

/// One POST to make: the status document at a status change.
pub struct Callback {
    pub url: String,
    pub body: String,
}

#[derive(Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<Callback>>,
    ready: Condvar,
}

impl Outbox {
    pub fn push_all(&self, callbacks: Vec<Callback>) {
        if callbacks.is_empty() {
            return;
        }
        self.queue.lock().unwrap().extend(callbacks);
        self.ready.notify_one();
    }

    /// Wakes the sender so it sees the stop flag (taking the lock first, see `JobTable`).
    pub fn wake_all(&self) {
        let _queue = self.queue.lock().unwrap();
        self.ready.notify_all();
    }

    fn next(&self, stop: &AtomicBool) -> Option<Callback> {
        let mut queue = self.queue.lock().unwrap();
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(callback) = queue.pop_front() {
                return Some(callback);
            }
            queue = self.ready.wait(queue).unwrap();
        }
    }
}

/// The sender thread.
pub fn run_sender(shared: &Shared) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(CALLBACK_TIMEOUT))
        .proxy(None)
        .user_agent("codeformer-ledger-sandbox")
        .build()
        .into();
    let config = &shared.config;
    let mut index = 0u64;
    while let Some(callback) = shared.webhooks.next(&shared.stop) {
        index += 1;
        if faults::chance(
            config.seed,
            Stream::CallbackDrop,
            index,
            config.drop_callbacks,
        ) {
            shared.stats.lock().unwrap().stats.callbacks_dropped += 1;
            continue;
        }
        let copies = if config.duplicate_callbacks { 2 } else { 1 };
        for _ in 0..copies {
            let delivered = post(&agent, &callback);
            let mut counters = shared.stats.lock().unwrap();
            counters.stats.callbacks_sent += 1;
            if !delivered {
                counters.stats.callbacks_failed += 1;
            }
        }
    }
}

/// POSTs one callback; `true` if the receiver answered 2xx.
fn post(agent: &ureq::Agent, callback: &Callback) -> bool {
    let answer = agent
        .post(&callback.url)
        .header("Content-Type", "application/json")
        .send(callback.body.as_bytes());
    match answer {
        Ok(mut response) => {
            // Read the (small) answer so the connection can be reused.
            let _ = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_vec();
            response.status().is_success()
        }
        Err(_) => false,
    }
}
