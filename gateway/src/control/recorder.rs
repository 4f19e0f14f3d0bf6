//! Writes what the servers report about connections into the store, on a thread of its own:
//! every commit fsyncs, and the event loops must not wait for that. Reports are applied in
//! the order they were made, so a connection's end never overtakes its start.
//!
//! The queue is bounded ([`RECORDER_QUEUE`] reports): a database that is slow or away (each
//! write then waits for its deadline) must not grow the daemon's memory without end. When the
//! queue is full a report is dropped, never waited for: counters first of all (the next batch
//! supersedes them), and a start or end with a warning naming the connection.

use std::sync::{mpsc, Arc};

use tracing::{debug, warn};

use crate::model::{Counters, SessionCounters};
use crate::server::ConnectionRecorder;
use crate::storage::{NewConnection, Store};

enum Op {
    Started(String, NewConnection),
    Counters(Vec<(String, SessionCounters)>),
    Ended(String, SessionCounters),
    /// Answered once every earlier report is written (tests, shutdown).
    Flush(mpsc::Sender<()>),
}

/// How many reports may wait for the database writer.
pub const RECORDER_QUEUE: usize = 16_384;

/// The store-backed [`ConnectionRecorder`]. Cloning shares the writer thread, which ends when
/// the last clone is dropped (after writing what was queued).
#[derive(Clone)]
pub struct StoreRecorder {
    tx: mpsc::SyncSender<Op>,
}

impl std::fmt::Debug for StoreRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreRecorder")
    }
}

impl StoreRecorder {
    /// Starts the writer thread.
    pub fn spawn(store: Arc<Store>) -> std::io::Result<StoreRecorder> {
        let (tx, rx) = mpsc::sync_channel::<Op>(RECORDER_QUEUE);
        std::thread::Builder::new().name("cvpn-recorder".into()).spawn(move || {
            while let Ok(op) = rx.recv() {
                match op {
                    Op::Started(id, c) => {
                        if let Err(e) = store.record_connection_start_as(&id, &c) {
                            warn!(connection_id = %id, error = %e, "connection not recorded in the database");
                        }
                    }
                    Op::Counters(batch) => {
                        let batch: Vec<_> = batch.into_iter().map(|(id, c)| (id, Counters::from(c))).collect();
                        if let Err(e) = store.update_connections(&batch) {
                            warn!(error = %e, "connection counters not recorded");
                        }
                    }
                    Op::Ended(id, c) => match store.end_connection(&id, Counters::from(c)) {
                        Ok(_) => {}
                        // Already ended (e.g. a terminate for a connection that had just gone).
                        Err(e) => debug!(connection_id = %id, error = %e, "connection end not recorded"),
                    },
                    Op::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })?;
        Ok(StoreRecorder { tx })
    }

    fn send(&self, op: Op) {
        enqueue(&self.tx, op);
    }

    /// Waits until everything reported so far is written.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Op::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

/// Queues `op` without waiting; false when it was dropped (see the [module docs](self)).
fn enqueue(tx: &mpsc::SyncSender<Op>, op: Op) -> bool {
    match tx.try_send(op) {
        Ok(()) => true,
        Err(mpsc::TrySendError::Full(Op::Counters(_))) => {
            debug!("connection counters dropped: the database writer is behind");
            false
        }
        Err(mpsc::TrySendError::Full(Op::Started(id, _) | Op::Ended(id, _))) => {
            warn!(connection_id = %id, queued = RECORDER_QUEUE, "connection record dropped: the database writer is that many reports behind (the database is slow or away)");
            false
        }
        Err(mpsc::TrySendError::Full(Op::Flush(_))) => false,
        Err(mpsc::TrySendError::Disconnected(_)) => {
            warn!("the connection recorder has stopped; connection state not written");
            false
        }
    }
}

impl ConnectionRecorder for StoreRecorder {
    fn started(&self, connection_id: &str, connection: NewConnection) {
        self.send(Op::Started(connection_id.to_string(), connection));
    }

    fn counters(&self, batch: Vec<(String, SessionCounters)>) {
        self.send(Op::Counters(batch));
    }

    fn ended(&self, connection_id: &str, counters: SessionCounters) {
        self.send(Op::Ended(connection_id.to_string(), counters));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_reports_instead_of_waiting() {
        // No writer reads this queue (a database that hangs): two reports fit, the rest are
        // dropped at once, whatever their kind.
        let (tx, rx) = mpsc::sync_channel::<Op>(2);
        let counters = || Op::Counters(vec![("c".into(), SessionCounters::default())]);
        assert!(enqueue(&tx, counters()));
        assert!(enqueue(
            &tx,
            Op::Ended("cvpn-connection-1".into(), SessionCounters::default())
        ));
        let started = std::time::Instant::now();
        assert!(!enqueue(&tx, counters()));
        assert!(!enqueue(
            &tx,
            Op::Ended("cvpn-connection-2".into(), SessionCounters::default())
        ));
        assert!(
            started.elapsed() < std::time::Duration::from_millis(100),
            "never waits"
        );
        // What was queued comes out in order.
        assert!(matches!(rx.try_recv(), Ok(Op::Counters(_))));
        assert!(matches!(rx.try_recv(), Ok(Op::Ended(id, _)) if id == "cvpn-connection-1"));
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(!enqueue(&tx, counters()), "a stopped writer drops too");
    }
}
