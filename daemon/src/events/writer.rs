//! The event journal's single writer thread, with group commit into the append-only log ([`super::log`]).
//!
//! Jobs (closures over a [`Batch`]) queue on an unbounded channel; the thread takes every queued job (up to
//! `max_batch`), lets each add at most one record (seqs assigned in order), writes the batch with ONE `write`
//! (no fsync: the page cache outlives a berthd crash), then runs each job's completion in submission order: its
//! after-write hook (the event bus fans out there, so subscribers only ever see written events, in seq order)
//! and its reply. A failed write or a panicking job fails the whole batch, and the log is reopened from disk,
//! which rebuilds the exactly-once state the batch had begun to change. Segments are rolled and trimmed after
//! the replies. There is no sleep or poll interval.
//!
//! Failpoints: `events.before_commit` (before the write), `events.torn_write` (half the batch written), and
//! `events.after_commit` (written, not yet fanned out or replied). This thread must never block on anything but
//! its file and, once per reserved block of seqs, the metadata writer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use berth_proto::berth::JournalEvent;
use tokio::sync::{oneshot, watch};

use super::db::SeqReservation;
use super::log::record::{once_key, Record, ShimState};
use super::log::segment::Shared;
use super::log::{put_record, Limits, Log};
use super::Once;
use crate::failpoint;
use crate::store::StoreError;

/// Completion of one job: called with the batch's write error, if any.
type Finish = Box<dyn FnOnce(Option<String>) + Send>;
/// One job: given the batch (or why there is none), it adds its record and returns its completion.
type Job = Box<dyn FnOnce(Result<&mut Batch<'_>, String>) -> Finish + Send>;

/// The records of one group commit, and the seqs they take.
pub(crate) struct Batch<'a> {
    log: &'a mut Log,
    seqs: &'a Arc<SeqReservation>,
    buf: Vec<u8>,
    /// Next event seq.
    next: u64,
    events: u64,
}

impl Batch<'_> {
    /// Append an event (seq assigned here, covered by the reservation); with `shim`, the same record sets that
    /// source's seq and once-marker.
    pub(crate) fn append(
        &mut self,
        mut ev: JournalEvent,
        shim: Option<(&str, u64, &str, Option<Once>)>,
    ) -> Result<JournalEvent, StoreError> {
        // Before writing anything: a failed reservation must leave the batch untouched.
        self.seqs.ensure(self.next)?;
        ev.seq = self.next;
        let mut r = super::log::event_record(ev);
        if let Some((source, seq, task, once)) = shim {
            r.source = source.to_string();
            r.source_seq = seq;
            if let Some(o) = once {
                r.task = task.to_string();
                r.once = o.name().to_string();
            }
        }
        self.push(&r);
        self.next += 1;
        self.events += 1;
        Ok(r.event.unwrap_or_default())
    }

    /// Record a source's seq alone (a replayed once-event that is dropped).
    pub(crate) fn set_source_seq(&mut self, source: &str, seq: u64) {
        self.push(&Record {
            source: source.to_string(),
            source_seq: seq,
            ..Record::default()
        });
    }

    /// Forget a task's seqs and once-markers.
    pub(crate) fn forget(&mut self, task: &str) {
        self.push(&Record {
            forget: vec![task.to_string()],
            ..Record::default()
        });
    }

    fn push(&mut self, r: &Record) {
        put_record(r, &mut self.buf);
        self.log.state_mut().apply(r);
    }

    /// A source's last journaled seq (0 if none), as of this point of the batch.
    pub(crate) fn source_seq(&self, source: &str) -> u64 {
        self.state().seqs.get(source).copied().unwrap_or(0)
    }

    /// Whether the task's `once` event is journaled, as of this point of the batch.
    pub(crate) fn once_done(&self, task: &str, once: Once) -> bool {
        self.state().once.contains(&once_key(task, once.name()))
    }

    fn state(&self) -> &ShimState {
        self.log.state()
    }
}

/// How to (re)open the log: on start, and on a restart after the thread died.
pub(crate) struct OpenLog {
    pub dir: PathBuf,
    pub limits: Limits,
    pub boot_id: String,
    pub shared: Arc<Shared>,
    pub seqs: Arc<SeqReservation>,
}

impl OpenLog {
    /// Reopen what is on disk (a journal exists by now; if it vanished, start above the reserved mark).
    fn reopen(&self) -> Result<Log, StoreError> {
        let (log, opened) = Log::open(
            &self.dir,
            self.shared.clone(),
            self.limits,
            &self.boot_id,
            self.seqs.reserved(),
            &ShimState::default(),
        )?;
        tracing::info!(dir = %self.dir.display(), ?opened, last_seq = log.last(), "event journal reopened");
        Ok(log)
    }
}

/// Handle to the writer thread.
pub(crate) struct LogWriter {
    open: Arc<OpenLog>,
    max_batch: usize,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Becomes true when the current thread ends (returns or unwinds); replaced on restart.
    ended: Mutex<watch::Receiver<bool>>,
    /// Set by [`LogWriter::close`]: the thread's end is then deliberate.
    closed: Arc<AtomicBool>,
}

/// Sets its flag when dropped: on the thread's normal return and on a panic unwinding through it.
struct EndFlag(watch::Sender<bool>);

impl Drop for EndFlag {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl LogWriter {
    /// Start the writer thread over an opened `log`.
    pub(crate) fn start(log: Log, open: OpenLog, max_batch: usize) -> std::io::Result<LogWriter> {
        let open = Arc::new(open);
        let (tx, thread, ended) = spawn(Some(log), open.clone(), max_batch.max(1))?;
        Ok(LogWriter {
            open,
            max_batch: max_batch.max(1),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            ended: Mutex::new(ended),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Submit a job; `hook` runs on the writer thread after the batch is written, before the reply is sent.
    pub(crate) fn submit<T, F, H>(&self, f: F, hook: H) -> oneshot::Receiver<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
        H: FnOnce(&T) + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |batch| {
            let r = match batch {
                Ok(b) => f(b),
                Err(m) => Err(StoreError::Batch(m)),
            };
            Box::new(move |write_err| {
                let out = match (r, write_err) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(m)) => Err(StoreError::Batch(m)),
                    (Ok(v), None) => {
                        hook(&v);
                        Ok(v)
                    }
                };
                let _ = reply.send(out);
            })
        });
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            // A send error drops the job and with it the reply sender: the caller sees Closed.
            let _ = tx.send(job);
        }
        rx
    }

    /// Submit and wait.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, |_| {})
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Resolves when the current writer thread ends: `true` when it ended without [`LogWriter::close`].
    pub(crate) fn ended(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let mut rx = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let closed = self.closed.clone();
        async move {
            let _ = rx.wait_for(|ended| *ended).await;
            !closed.load(Ordering::Acquire)
        }
    }

    /// Whether the writer thread is gone although nobody closed the writer.
    pub(crate) fn is_dead(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && *self
                .ended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .borrow()
    }

    /// Start a new thread (which reopens the log from disk) after the previous one died.
    pub(crate) fn restart(&self) -> std::io::Result<()> {
        if !self.is_dead() {
            return Ok(());
        }
        let (tx, thread, ended) = spawn(None, self.open.clone(), self.max_batch)?;
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = ended;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        tracing::warn!("event journal writer thread restarted");
        Ok(())
    }

    /// Stop accepting jobs, let the thread finish what is queued, and join it.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

type Spawned = (mpsc::Sender<Job>, JoinHandle<()>, watch::Receiver<bool>);

fn spawn(log: Option<Log>, open: Arc<OpenLog>, max_batch: usize) -> std::io::Result<Spawned> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (end_tx, end_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("berthd-events-writer".into())
        .spawn(move || {
            let _flag = EndFlag(end_tx);
            let log = match log {
                Some(l) => l,
                None => match open.reopen() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reopen the event journal");
                        return;
                    }
                },
            };
            run(log, &open, rx, max_batch)
        })?;
    Ok((tx, thread, end_rx))
}

fn run(mut log: Log, open: &OpenLog, rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if !run_batch(&mut log, open, jobs) {
            // The log could not be reopened after a failed batch: end; the watcher restarts the thread.
            return;
        }
        if let Err(e) = log.maintain() {
            tracing::warn!(error = %e, "cannot start a new event journal segment");
        }
    }
    tracing::debug!("event journal writer stopped");
}

/// Run one batch; false when the log is unusable afterwards.
fn run_batch(log: &mut Log, open: &OpenLog, jobs: Vec<Job>) -> bool {
    let next = log.last() + 1;
    let mut batch = Batch {
        log,
        seqs: &open.seqs,
        buf: Vec::with_capacity(512),
        next,
        events: 0,
    };
    let mut finishes = Vec::with_capacity(jobs.len());
    let mut failed: Option<String> = None;
    for job in jobs {
        if let Some(m) = &failed {
            finishes.push(job(Err(m.clone())));
            continue;
        }
        let b = &mut batch;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || job(Ok(b)))) {
            Ok(finish) => finishes.push(finish),
            Err(p) => {
                let msg = crate::supervision::panic_message(&*p);
                tracing::error!(panic = %msg, "an event journal job panicked; failing its batch");
                failed = Some(format!("a write in the same batch panicked: {msg}"));
            }
        }
    }
    let Batch {
        buf, next, events, ..
    } = batch;
    let write_err = match failed {
        Some(m) => Some(m),
        None if buf.is_empty() => None,
        None => {
            failpoint::hit("events.before_commit");
            match log.append(&buf, events, next - 1, "events.torn_write") {
                Ok(()) => {
                    failpoint::hit("events.after_commit");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "event journal write failed");
                    Some(e.to_string())
                }
            }
        }
    };
    let healthy = match &write_err {
        None => true,
        // The batch changed the in-memory state: rebuild it from what is on disk.
        Some(_) => match open.reopen() {
            Ok(l) => {
                *log = l;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the event journal after a failed batch");
                false
            }
        },
    };
    for finish in finishes {
        let err = write_err.clone();
        // A panicking hook must not take the writer thread (and every later write) down with it.
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || finish(err)))
        {
            tracing::error!(panic = %crate::supervision::panic_message(&*p), "an event journal completion panicked");
        }
    }
    healthy
}
