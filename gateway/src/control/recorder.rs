//! Writes what the servers report about connections into the store, on a thread of its own:
//! every commit fsyncs, and the event loops must not wait for that. Reports are applied in
//! the order they were made, so a connection's end never overtakes its start.

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

/// The store-backed [`ConnectionRecorder`]. Cloning shares the writer thread, which ends when
/// the last clone is dropped (after writing what was queued).
#[derive(Clone)]
pub struct StoreRecorder {
    tx: mpsc::Sender<Op>,
}

impl std::fmt::Debug for StoreRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreRecorder")
    }
}

impl StoreRecorder {
    /// Starts the writer thread.
    pub fn spawn(store: Arc<Store>) -> std::io::Result<StoreRecorder> {
        let (tx, rx) = mpsc::channel::<Op>();
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
        if self.tx.send(op).is_err() {
            warn!("the connection recorder has stopped; connection state not written");
        }
    }

    /// Waits until everything reported so far is written.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        self.send(Op::Flush(done));
        let _ = wait.recv();
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
