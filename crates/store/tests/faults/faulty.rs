//! An in-memory object store that fails, or holds a write in flight, when a test says so.
//!
//! Faults are aimed by path prefix (`blocks/`, `manifests/`, `snapshots/`, `config`), so that
//! one kind of object breaks while the rest of the store keeps working. Only single puts and
//! gets (heads included) are faulted: listing, deleting and copying pass straight through,
//! and multipart uploads are refused outright, because the store under test never starts
//! one and a silent pass-through would let such a write dodge every fault.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tokio::sync::oneshot;

/// How an injected failure looks to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A backend error with a plain message as its source: a dropped connection, a 503.
    Unavailable,
    /// A backend error whose source is an `io::Error` of kind `StorageFull` (ENOSPC), as a
    /// full local disk gives.
    DiskFull,
}

impl Failure {
    fn error(self, op: &str, path: &Path) -> object_store::Error {
        let source: Box<dyn StdError + Send + Sync> = match self {
            Self::Unavailable => format!("injected failure to {op} {path}").into(),
            Self::DiskFull => Box::new(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            )),
        };
        object_store::Error::Generic {
            store: "faulty",
            source,
        }
    }
}

/// The object store. Share it as an `Arc<FaultyStore>` to arm faults and, cloned into an
/// `Arc<dyn ObjectStore>`, to open a `Store` on.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: InMemory,
    faults: Mutex<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    failing_puts: Vec<FailingPuts>,
    /// Prefixes whose every get fails, and how.
    failing_gets: Vec<(String, Failure)>,
    /// Gates waiting for the next put under their prefix, oldest first.
    gates: Vec<(String, Gate)>,
    /// Every put that reached the backing store, in order.
    stored: Vec<Path>,
}

#[derive(Debug)]
struct FailingPuts {
    prefix: String,
    remaining: usize,
    failure: Failure,
}

/// What a put meets on its way in.
enum Fate {
    Store,
    Fail(Failure),
    Hold(Gate),
}

impl FaultyStore {
    pub(crate) fn new() -> Self {
        Self {
            inner: InMemory::new(),
            faults: Mutex::new(Faults::default()),
        }
    }

    /// Fails the next `count` puts under `prefix`; `usize::MAX` fails every one.
    pub(crate) fn fail_puts(&self, prefix: &str, count: usize, failure: Failure) {
        self.faults().failing_puts.push(FailingPuts {
            prefix: prefix.to_owned(),
            remaining: count,
            failure,
        });
    }

    /// Fails every get and head under `prefix` from now on.
    pub(crate) fn fail_gets(&self, prefix: &str, failure: Failure) {
        self.faults()
            .failing_gets
            .push((prefix.to_owned(), failure));
    }

    /// Holds the next put under `prefix` before it reaches the backing store, until the
    /// returned handle lets it go or fails it. A held put takes no `fail_puts` count.
    pub(crate) fn hold_next_put(&self, prefix: &str) -> HeldPut {
        let (arrived_tx, arrived) = oneshot::channel();
        let (verdict, verdict_rx) = oneshot::channel();
        let gate = Gate {
            arrived: arrived_tx,
            verdict: verdict_rx,
        };
        self.faults().gates.push((prefix.to_owned(), gate));
        HeldPut { arrived, verdict }
    }

    /// How many puts under `prefix` reached the backing store.
    pub(crate) fn puts_stored(&self, prefix: &str) -> usize {
        self.faults()
            .stored
            .iter()
            .filter(|path| path.as_ref().starts_with(prefix))
            .count()
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A test that panicked while arming a fault leaves plain data behind.
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fate_of_put(&self, path: &Path) -> Fate {
        let mut faults = self.faults();
        let under = |prefix: &str| path.as_ref().starts_with(prefix);
        if let Some(at) = faults.gates.iter().position(|(prefix, _)| under(prefix)) {
            return Fate::Hold(faults.gates.remove(at).1);
        }
        let failing = faults
            .failing_puts
            .iter_mut()
            .find(|f| f.remaining > 0 && under(&f.prefix));
        match failing {
            Some(failing) => {
                failing.remaining -= 1;
                Fate::Fail(failing.failure)
            }
            None => Fate::Store,
        }
    }

    fn get_failure(&self, path: &Path) -> Option<Failure> {
        self.faults()
            .failing_gets
            .iter()
            .find(|(prefix, _)| path.as_ref().starts_with(prefix.as_str()))
            .map(|(_, failure)| *failure)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let failure = match self.fate_of_put(location) {
            Fate::Store => None,
            Fate::Fail(failure) => Some(failure),
            Fate::Hold(gate) => gate.hold(location).await,
        };
        if let Some(failure) = failure {
            return Err(failure.error("write", location));
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.faults().stored.push(location.clone());
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(object_store::Error::NotSupported {
            source: "the faulty store faults single puts only".into(),
        })
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if let Some(failure) = self.get_failure(location) {
            return Err(failure.error("read", location));
        }
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// The store's side of a held put.
#[derive(Debug)]
struct Gate {
    arrived: oneshot::Sender<Path>,
    verdict: oneshot::Receiver<Verdict>,
}

#[derive(Debug)]
enum Verdict {
    Proceed,
    Fail(Failure),
}

impl Gate {
    /// Announces the put and waits for the verdict: the failure to return, if any. A handle
    /// dropped without a verdict lets the put proceed, so that a failed test cannot hang.
    async fn hold(self, path: &Path) -> Option<Failure> {
        // Nobody waiting for the arrival is no reason to stop: the verdict still decides.
        let _ = self.arrived.send(path.clone());
        match self.verdict.await {
            Ok(Verdict::Fail(failure)) => Some(failure),
            Ok(Verdict::Proceed) | Err(_) => None,
        }
    }
}

/// The test's side of a held put.
#[derive(Debug)]
pub(crate) struct HeldPut {
    arrived: oneshot::Receiver<Path>,
    verdict: oneshot::Sender<Verdict>,
}

impl HeldPut {
    /// Waits until a put is held, and returns its path.
    pub(crate) async fn arrival(&mut self) -> Path {
        (&mut self.arrived)
            .await
            .expect("the faulty store dropped a gate before any put reached it")
    }

    /// Lets the held put reach the backing store.
    pub(crate) fn proceed(self) {
        // A put whose caller has gone has nothing left to decide.
        let _ = self.verdict.send(Verdict::Proceed);
    }

    /// Fails the held put.
    pub(crate) fn fail(self, failure: Failure) {
        let _ = self.verdict.send(Verdict::Fail(failure));
    }
}
