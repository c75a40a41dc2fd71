//! A redb database's single writer thread, with group commit (used by the metadata store, `<root>/meta.redb`;
//! the event journal has its own writer, `events::writer`).
//!
//! Jobs (closures over a `WriteTransaction`) queue on an unbounded channel; the thread takes every queued job (up
//! to `max_batch`), runs them in one transaction, commits once (one fsync for the batch), then runs each job's
//! completion in submission order: its after-commit hook (the event bus fans out there, so subscribers only ever
//! see durable events, in seq order) and its reply. Callers wait on their own oneshot, so the queue's length is
//! bounded by the number of waiting callers.
//!
//! A job returning a fatal error (redb failure) aborts the whole batch; a logical error (NotFound...) must have
//! written nothing. A panicking job is caught and aborts the batch. This thread must never block on anything
//! but redb (an event-journal job may wait for a metadata write once per reserved block of seqs; the metadata
//! writer never waits for the journal's, so the two cannot deadlock). There is no sleep or poll interval: the
//! thread blocks on the channel and commits as soon as a job is queued.
//!
//! Failpoints `<name>.before_commit` and `<name>.after_commit` surround each commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, WriteTransaction};
use tokio::sync::{oneshot, watch};

use super::StoreError;
use crate::failpoint;

/// Completion of one job: called with the batch's commit error, if any.
type Finish = Box<dyn FnOnce(Option<String>) + Send>;
/// One write job: given the batch's transaction (or why there is none), it writes and returns its completion and
/// whether it failed fatally.
type Job = Box<dyn FnOnce(Result<&WriteTransaction, String>) -> (Finish, bool) + Send>;

/// Handle to the writer thread.
pub(crate) struct Writer {
    db: Arc<Database>,
    max_batch: usize,
    name: &'static str,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Becomes true when the current thread ends (returns or unwinds); replaced on restart.
    ended: Mutex<watch::Receiver<bool>>,
    /// Set by [`Writer::close`]: the thread's end is then deliberate.
    closed: Arc<AtomicBool>,
}

/// Sets its flag when dropped: on the thread's normal return and on a panic unwinding through it.
struct EndFlag(watch::Sender<bool>);

impl Drop for EndFlag {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Writer {
    /// Start the writer thread of `db`; `name` (`store`, `events`) names the thread and the failpoints.
    pub(crate) fn start(
        db: Arc<Database>,
        max_batch: usize,
        name: &'static str,
    ) -> std::io::Result<Writer> {
        let (tx, thread, ended) = spawn(db.clone(), max_batch.max(1), name)?;
        Ok(Writer {
            db,
            max_batch: max_batch.max(1),
            name,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            ended: Mutex::new(ended),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Resolves when the current writer thread ends: `true` when it ended without [`Writer::close`] (it
    /// panicked: writes fail with Closed until a supervisor calls [`Writer::restart`]).
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

    /// Start a new thread after the previous one died (jobs queued to the dead one already failed with
    /// Closed). Does nothing when the thread runs or the writer was closed.
    pub(crate) fn restart(&self) -> std::io::Result<()> {
        if !self.is_dead() {
            return Ok(());
        }
        let (tx, thread, ended) = spawn(self.db.clone(), self.max_batch, self.name)?;
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = ended;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        tracing::warn!(writer = self.name, "redb writer thread restarted");
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

    /// Submit a write; `hook` runs on the writer thread after a successful commit, before the reply is sent.
    pub(crate) fn submit<T, F, H>(&self, f: F, hook: H) -> oneshot::Receiver<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
        H: FnOnce(&T) + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = make_job(f, hook, move |out| {
            let _ = reply.send(out);
        });
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            // A send error drops the job and with it the reply sender: the caller sees Closed.
            let _ = tx.send(job);
        }
        rx
    }

    /// Submit and wait on a plain thread (usable inside or outside a tokio runtime, but blocking). Never call it
    /// from this writer's own thread.
    pub(crate) fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = mpsc::sync_channel(1);
        let job = make_job(
            f,
            |_| {},
            move |out| {
                let _ = reply.send(out);
            },
        );
        {
            let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = guard.as_ref() {
                let _ = tx.send(job);
            }
        }
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Submit and wait (async).
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, |_| {})
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

/// Wrap a write, its hook and where its result goes into a [`Job`].
fn make_job<T, F, H, R>(f: F, hook: H, reply: R) -> Job
where
    T: Send + 'static,
    F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    H: FnOnce(&T) + Send + 'static,
    R: FnOnce(Result<T, StoreError>) + Send + 'static,
{
    Box::new(move |wtx| {
        let r = match wtx {
            Ok(w) => f(w),
            Err(m) => Err(StoreError::Batch(m)),
        };
        let fatal = matches!(&r, Err(e) if e.is_fatal());
        let finish: Finish = Box::new(move |commit_err| {
            let out = match (r, commit_err) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(m)) => Err(StoreError::Batch(m)),
                (Ok(v), None) => {
                    hook(&v);
                    Ok(v)
                }
            };
            reply(out);
        });
        (finish, fatal)
    })
}

type Spawned = (mpsc::Sender<Job>, JoinHandle<()>, watch::Receiver<bool>);

fn spawn(db: Arc<Database>, max_batch: usize, name: &'static str) -> std::io::Result<Spawned> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (end_tx, end_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name(format!("berthd-{name}-writer"))
        .spawn(move || {
            let _flag = EndFlag(end_tx);
            run(db, rx, max_batch, name)
        })?;
    Ok((tx, thread, end_rx))
}

/// The failpoints around one writer's commits.
struct CommitPoints {
    before: String,
    after: String,
}

fn run(db: Arc<Database>, rx: mpsc::Receiver<Job>, max_batch: usize, name: &'static str) {
    let points = CommitPoints {
        before: format!("{name}.before_commit"),
        after: format!("{name}.after_commit"),
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        run_batch(&db, jobs, &points);
    }
    tracing::debug!(writer = name, "redb writer stopped");
}

fn run_batch(db: &Database, jobs: Vec<Job>, points: &CommitPoints) {
    let mut wtx = match db.begin_write() {
        Ok(w) => w,
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, "cannot begin a redb write transaction");
            for job in jobs {
                let (finish, _) = job(Err(msg.clone()));
                finish(Some(msg.clone()));
            }
            return;
        }
    };
    wtx.set_quick_repair(true);
    let mut finishes = Vec::with_capacity(jobs.len());
    let mut failed: Option<String> = None;
    for job in jobs {
        let tx_ref = &wtx;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || job(Ok(tx_ref)))) {
            Ok((finish, fatal)) => {
                if fatal && failed.is_none() {
                    failed = Some("another write in the same transaction failed".into());
                }
                finishes.push(finish);
            }
            Err(p) => {
                let msg = crate::supervision::panic_message(&*p);
                tracing::error!(panic = %msg, "a store write job panicked; aborting its batch");
                failed = Some(format!("a write in the same transaction panicked: {msg}"));
            }
        }
    }
    let commit_err = match failed {
        Some(m) => {
            let _ = wtx.abort();
            Some(m)
        }
        None => {
            failpoint::hit(&points.before);
            match wtx.commit() {
                Ok(()) => {
                    failpoint::hit(&points.after);
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "redb commit failed");
                    Some(e.to_string())
                }
            }
        }
    };
    for finish in finishes {
        let err = commit_err.clone();
        // A panicking hook must not take the writer thread (and every later write) down with it.
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || finish(err)))
        {
            tracing::error!(panic = %crate::supervision::panic_message(&*p), "a store write completion panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<&str, u64> = TableDefinition::new("writer_test");

    fn insert(
        key: &'static str,
    ) -> impl FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send {
        move |w| {
            w.open_table(T)?.insert(key, 1)?;
            Ok(())
        }
    }

    fn keys(db: &Database) -> Vec<String> {
        let r = db.begin_read().expect("read");
        let Ok(t) = r.open_table(T) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in redb::ReadableTable::iter(&t).expect("iter") {
            out.push(item.expect("item").0.value().to_string());
        }
        out
    }

    fn points() -> CommitPoints {
        CommitPoints {
            before: "test.before_commit".into(),
            after: "test.after_commit".into(),
        }
    }

    /// A job and the receiver of its result.
    fn job<T, F, H>(f: F, hook: H) -> (Job, oneshot::Receiver<Result<T, StoreError>>)
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
        H: FnOnce(&T) + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let j = make_job(f, hook, move |out| {
            let _ = reply.send(out);
        });
        (j, rx)
    }

    #[test]
    fn batch_commits_together_and_a_panic_or_fatal_error_aborts_it() {
        let dir = std::env::temp_dir().join(format!("berthd-unit-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = Database::create(dir.join("w.redb")).expect("db");

        // A logical error leaves the others to commit.
        let (a, ra) = job(insert("a"), |_| {});
        let (b, rb) = job(
            |_: &WriteTransaction| -> Result<(), StoreError> {
                Err(StoreError::NotFound("x".into()))
            },
            |_| {},
        );
        let hooked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = hooked.clone();
        let (c, rc) = job(insert("c"), move |_| {
            h.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        run_batch(&db, vec![a, b, c], &points());
        assert!(ra.blocking_recv().expect("reply").is_ok());
        assert!(matches!(
            rb.blocking_recv().expect("reply"),
            Err(StoreError::NotFound(_))
        ));
        assert!(rc.blocking_recv().expect("reply").is_ok());
        assert!(
            hooked.load(std::sync::atomic::Ordering::SeqCst),
            "hook ran after commit"
        );
        assert_eq!(keys(&db), vec!["a", "c"]);

        // A panicking job aborts its whole batch; the writer goes on.
        let (d, rd) = job(insert("d"), |_| {});
        let (p, rp) = job(
            |_: &WriteTransaction| -> Result<(), StoreError> { panic!("job bug") },
            |_| {},
        );
        run_batch(&db, vec![d, p], &points());
        assert!(matches!(
            rd.blocking_recv().expect("reply"),
            Err(StoreError::Batch(_))
        ));
        assert!(rp.blocking_recv().is_err(), "panicked job's reply dropped");
        assert_eq!(keys(&db), vec!["a", "c"]);

        // A fatal (storage) error aborts the batch too.
        let (e, re) = job(insert("e"), |_| {});
        let (f, rf) = job(
            |_: &WriteTransaction| -> Result<(), StoreError> {
                Err(StoreError::Corrupt("bad record".into()))
            },
            |_| {},
        );
        run_batch(&db, vec![e, f], &points());
        assert!(matches!(
            re.blocking_recv().expect("reply"),
            Err(StoreError::Batch(_))
        ));
        assert!(matches!(
            rf.blocking_recv().expect("reply"),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(keys(&db), vec!["a", "c"]);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
