//! Retries of transient object-store failures, and counts of the requests made.
//!
//! ```text
//!  Store / RawStore ──→ ResilientStore ──→ FaultInjector ──→ backend
//!                       retries, counts    with a plan only   local, memory, S3
//! ```
//!
//! [`ResilientStore`] wraps any object store. A call that fails in a way that may pass (a
//! dropped connection, a timeout, an HTTP 5xx or 429) is tried again after an exponential
//! backoff with full jitter: the delay before retry `n` is drawn uniformly from zero to
//! `min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2^(n-1))`, so that many clients failing together
//! do not retry together. A call is tried at most [`RETRY_MAX_ATTEMPTS`] times and never
//! sleeps past [`RETRY_MAX_ELAPSED`]; the error it then returns names the attempts made.
//!
//! Only calls that may safely run twice are retried:
//!
//! - reads (`get`, `get_range(s)`, `head`, `list_with_delimiter`): they change nothing;
//! - `put` and `put_opts` in `Overwrite` mode: every object is named by its content or
//!   written once, so a second PUT writes the same bytes;
//! - `delete`: a `NotFound` on a retry means an earlier attempt deleted the object, which
//!   counts as success;
//! - `copy`: copying the same source again gives the same object;
//! - `list` and `list_with_offset` until their first entry: a listing restarted after
//!   handing out entries would hand them out twice, so later errors pass through.
//!
//! Not retried: `put_opts` in `Create` or `Update` mode (a retry after a lost answer would
//! meet its own first write and report a conflict that is not one), `rename` and
//! `copy_if_not_exists` (a second attempt finds the first one's result), and multipart
//! uploads (their parts go straight to the inner store, which this layer never sees).
//!
//! The S3 client of `object_store` already retries its own HTTP requests (10 retries within
//! 3 minutes by default). This layer sits above it and sees only what that client gave up
//! on, so for S3 it mostly adds retries of a body that broke off mid-transfer; the time
//! budget keeps the two layers from multiplying: an attempt that alone took longer than
//! [`RETRY_MAX_ELAPSED`] is not repeated.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;
use tracing::debug;

/// The longest backoff before the first retry. Short, because most transient failures
/// (a reset connection, a throttled request) pass within tens of milliseconds.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(50);

/// The longest backoff before any retry: the doubling stops here, so that a backend that
/// comes back is noticed within seconds.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Attempts per call, the first included. With the delays above, eight attempts wait at
/// most 6.35 s in all (3.2 s on average), long enough to ride out a restarting server and
/// short enough that a store that is really gone is reported before anyone wonders.
pub const RETRY_MAX_ATTEMPTS: u32 = 8;

/// No retry starts after this long since a call's first attempt: a bound on the time one
/// call can take even when every attempt is slow to fail.
pub const RETRY_MAX_ELAPSED: Duration = Duration::from_secs(60);

/// Bodies up to this many bytes are read whole inside the retry loop, so that a connection
/// that breaks while a body is arriving is retried like one that broke before. It covers
/// the largest sealed block (blocks are at most 64 MiB, and sealing adds less than 1 MiB);
/// bigger bodies, and local files, are handed out as they come.
const BUFFERED_BODY_LIMIT: u64 = 65 << 20;

/// How [`ResilientStore`] retries: attempts, backoff and time budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling of the first backoff; each later one doubles it.
    pub base_delay: Duration,
    /// The ceiling no backoff exceeds.
    pub max_delay: Duration,
    /// Attempts per call, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// No retry starts once the call has taken this long.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: RETRY_BASE_DELAY,
            max_delay: RETRY_MAX_DELAY,
            max_attempts: RETRY_MAX_ATTEMPTS,
            max_elapsed: RETRY_MAX_ELAPSED,
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (1 for the first): uniform between zero and
    /// `min(max_delay, base_delay * 2^(retry-1))` ("full jitter").
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
        let ceiling = self.base_delay.saturating_mul(doubling).min(self.max_delay);
        // Sampled in nanoseconds; a ceiling too large for u64 (centuries) is clamped.
        let ceiling = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

/// Requests of one kind: the attempts that got an answer and those that failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AttemptCounts {
    /// Attempts the backend answered, "not found" and failed preconditions included: the
    /// request itself worked.
    pub succeeded: u64,
    /// Attempts that ended in any other error.
    pub failed: u64,
}

impl AttemptCounts {
    /// Every attempt, succeeded or failed.
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// The requests a store has made of its backend, by kind, retries included.
///
/// One call counts once even when the backend serves it with several requests (a listing
/// of many pages, `get_ranges` of scattered ranges, a multipart upload, of which only the
/// start is seen here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Reads of objects or of parts of them.
    pub get: AttemptCounts,
    /// Reads of object metadata: existence checks.
    pub head: AttemptCounts,
    /// Writes of whole objects.
    pub put: AttemptCounts,
    /// Listings.
    pub list: AttemptCounts,
    /// Deletions.
    pub delete: AttemptCounts,
    /// Copies, renames and multipart uploads started.
    pub other: AttemptCounts,
    /// Attempts that repeated a call after a transient failure; they are counted among the
    /// attempts above as well.
    pub retries: u64,
}

impl RequestCounts {
    /// Every attempt of every kind; retries are attempts, so they are in it once.
    pub fn total(&self) -> u64 {
        [
            self.get,
            self.head,
            self.put,
            self.list,
            self.delete,
            self.other,
        ]
        .iter()
        .map(AttemptCounts::total)
        .sum()
    }
}

/// The kinds [`RequestCounts`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Get,
    Head,
    Put,
    List,
    Delete,
    Other,
}

/// How many kinds [`RequestKind`] has.
const KIND_COUNT: usize = RequestKind::Other as usize + 1;

/// Live counters behind [`RequestCounts`], shared by a store and its clones.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    /// Succeeded and failed attempts, in [`RequestKind`] order.
    kinds: [[AtomicU64; 2]; KIND_COUNT],
    retries: AtomicU64,
}

impl RequestCounters {
    /// The counts so far. Each counter is read on its own, so counts taken while requests
    /// run may be a moment apart from each other.
    pub(crate) fn snapshot(&self) -> RequestCounts {
        let read = |kind: RequestKind| {
            let [succeeded, failed] = &self.kinds[kind as usize];
            AttemptCounts {
                succeeded: succeeded.load(Ordering::Relaxed),
                failed: failed.load(Ordering::Relaxed),
            }
        };
        RequestCounts {
            get: read(RequestKind::Get),
            head: read(RequestKind::Head),
            put: read(RequestKind::Put),
            list: read(RequestKind::List),
            delete: read(RequestKind::Delete),
            other: read(RequestKind::Other),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    fn record<T>(&self, kind: RequestKind, result: &object_store::Result<T>) {
        let answered = match result {
            Ok(_) => true,
            Err(error) => is_answer(error),
        };
        self.count(kind, answered);
    }

    fn count(&self, kind: RequestKind, answered: bool) {
        let slot = usize::from(!answered);
        self.kinds[kind as usize][slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// Wraps `objects` in a [`ResilientStore`] of the default policy; returns it with its
/// counters.
pub(crate) fn resilient(
    objects: Arc<dyn ObjectStore>,
) -> (Arc<dyn ObjectStore>, Arc<RequestCounters>) {
    let store = ResilientStore::new(objects);
    let counters = Arc::clone(&store.counters);
    (Arc::new(store), counters)
}

/// An object store that retries transient failures of the one it wraps, and counts the
/// requests it makes.
///
/// Retried are reads, whole-object PUTs in overwrite mode, deletes, copies, and listings
/// until their first entry; creates, conditional updates, renames and multipart uploads are
/// not, since a retry could meet its own lost first attempt. What counts as transient is
/// written where it is decided, at `is_transient` in this file; `docs/architecture.md`
/// ("Retries and fault injection") gives the reasoning.
///
/// `Store::open_on`, `Store::init_on` and `RawStore::open_on` wrap the object store they are
/// given in one of these; give them the bare backend, or retries would nest. Clones share
/// their counters. Cancelling a call (dropping its future) cancels its retries too.
#[derive(Debug, Clone)]
pub struct ResilientStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    counters: Arc<RequestCounters>,
}

impl ResilientStore {
    /// Wraps `inner` with the default [`RetryPolicy`].
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self::with_policy(inner, RetryPolicy::default())
    }

    /// Wraps `inner` with `policy`.
    pub fn with_policy(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            counters: Arc::default(),
        }
    }

    /// The requests made through this store and its clones so far.
    pub fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Runs `attempt` (given the attempt number, from 1) until it succeeds, fails for good,
    /// or the policy says stop.
    async fn run<T, F, Fut>(&self, call: Call<'_>, mut attempt: F) -> object_store::Result<T>
    where
        F: FnMut(u32) -> Fut + Send,
        Fut: Future<Output = object_store::Result<T>> + Send,
        T: Send,
    {
        let started = Instant::now();
        let mut number = 1;
        loop {
            let result = attempt(number).await;
            self.counters.record(call.kind, &result);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !call.retry || !is_transient(&error) {
                return Err(error);
            }

            let elapsed = started.elapsed();
            let delay = self.policy.backoff(number, &mut rand::rng());
            let out_of_time = elapsed.saturating_add(delay) > self.policy.max_elapsed;
            if number >= self.policy.max_attempts || out_of_time {
                return Err(gave_up(error, number, elapsed));
            }
            debug!(
                op = call.op,
                path = %call.path,
                attempt = number,
                delay_ms = delay.as_millis(),
                error = %error,
                "retrying after a transient failure"
            );
            tokio::time::sleep(delay).await;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            number += 1;
        }
    }

    /// A listing opened by `open` on the inner store, reopened while its first poll fails
    /// transiently; once it has given an entry, its errors pass through as they come.
    fn list_retrying<F>(&self, prefix: Option<&Path>, open: F) -> BoxStream<'static, ListEntry>
    where
        F: Fn(&dyn ObjectStore) -> BoxStream<'static, ListEntry> + Send + Sync + 'static,
    {
        let this = self.clone();
        let path = prefix.cloned().unwrap_or_default();
        let first = async move {
            let call = Call::new("list", RequestKind::List, &path, true);
            let opened = this
                .run(call, |_| {
                    let mut listing = open(this.inner.as_ref());
                    async move {
                        match listing.next().await {
                            Some(Err(error)) => Err(error),
                            Some(Ok(meta)) => Ok((Some(meta), listing)),
                            None => Ok((None, listing)),
                        }
                    }
                })
                .await;
            match opened {
                Ok((None, _)) => stream::empty().boxed(),
                Ok((Some(first), rest)) => {
                    let counters = Arc::clone(&this.counters);
                    let rest = rest.inspect_err(move |_| counters.count(RequestKind::List, false));
                    stream::once(async { Ok(first) }).chain(rest).boxed()
                }
                Err(error) => stream::once(async { Err(error) }).boxed(),
            }
        };
        first.flatten_stream().boxed()
    }
}

/// One item of a listing.
type ListEntry = object_store::Result<ObjectMeta>;

/// What [`ResilientStore::run`] needs to know of a call.
struct Call<'a> {
    /// The operation, for the log.
    op: &'static str,
    kind: RequestKind,
    path: &'a Path,
    /// Whether the call may run twice.
    retry: bool,
}

impl<'a> Call<'a> {
    fn new(op: &'static str, kind: RequestKind, path: &'a Path, retry: bool) -> Self {
        Self {
            op,
            kind,
            path,
            retry,
        }
    }
}

impl fmt::Display for ResilientStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resilient({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ResilientStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        // A retried create or conditional update could meet its own first attempt, which
        // succeeded before its answer was lost, and report a conflict that is not one.
        let retry = matches!(opts.mode, PutMode::Overwrite);
        let call = Call::new("put", RequestKind::Put, location, retry);
        self.run(call, |_| {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // The parts go straight to the inner store's upload; repeating only its start would
        // buy little, and a part cannot be retried here without holding its bytes.
        let call = Call::new("start an upload", RequestKind::Other, location, false);
        self.run(call, |_| {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let kind = if options.head {
            RequestKind::Head
        } else {
            RequestKind::Get
        };
        let call = Call::new("get", kind, location, true);
        self.run(call, |_| {
            let options = options.clone();
            async move {
                let head = options.head;
                let result = self.inner.get_opts(location, options).await?;
                if head {
                    Ok(result)
                } else {
                    buffer_small_body(result).await
                }
            }
        })
        .await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        let call = Call::new("get", RequestKind::Get, location, true);
        self.run(call, |_| self.inner.get_range(location, range.clone()))
            .await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let call = Call::new("get", RequestKind::Get, location, true);
        self.run(call, |_| self.inner.get_ranges(location, ranges))
            .await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        let call = Call::new("head", RequestKind::Head, location, true);
        self.run(call, |_| self.inner.head(location)).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let call = Call::new("delete", RequestKind::Delete, location, true);
        self.run(call, |attempt| async move {
            match self.inner.delete(location).await {
                // An earlier attempt deleted it and lost the answer.
                Err(object_store::Error::NotFound { .. }) if attempt > 1 => Ok(()),
                other => other,
            }
        })
        .await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, ListEntry> {
        let owned = prefix.cloned();
        self.list_retrying(prefix, move |inner| inner.list(owned.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, ListEntry> {
        let owned = prefix.cloned();
        let offset = offset.clone();
        self.list_retrying(prefix, move |inner| {
            inner.list_with_offset(owned.as_ref(), &offset)
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let path = prefix.cloned().unwrap_or_default();
        let call = Call::new("list", RequestKind::List, &path, true);
        self.run(call, |_| self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let call = Call::new("copy", RequestKind::Other, to, true);
        self.run(call, |_| self.inner.copy(from, to)).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        // A rename whose answer was lost has already moved the source away.
        let call = Call::new("rename", RequestKind::Other, to, false);
        self.run(call, |_| self.inner.rename(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let call = Call::new("copy", RequestKind::Other, to, false);
        self.run(call, |_| self.inner.copy_if_not_exists(from, to))
            .await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        let call = Call::new("rename", RequestKind::Other, to, false);
        self.run(call, |_| self.inner.rename_if_not_exists(from, to))
            .await
    }
}

/// Reads a streamed body of up to [`BUFFERED_BODY_LIMIT`] bytes whole, so that its failure
/// fails the attempt (and is retried) instead of reaching the caller later.
async fn buffer_small_body(result: GetResult) -> object_store::Result<GetResult> {
    let len = result.range.end.saturating_sub(result.range.start);
    if !matches!(result.payload, GetResultPayload::Stream(_)) || len > BUFFERED_BODY_LIMIT {
        return Ok(result);
    }
    let meta = result.meta.clone();
    let range = result.range.clone();
    let attributes = result.attributes.clone();
    let body = result.bytes().await?;
    Ok(GetResult {
        payload: GetResultPayload::Stream(stream::once(async { Ok(body) }).boxed()),
        meta,
        range,
        attributes,
    })
}

/// Whether the error is a definite answer about the object rather than a failed request.
fn is_answer(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

/// Kinds of I/O error that say the request, not the object or the caller, failed.
const TRANSIENT_IO: [io::ErrorKind; 6] = [
    io::ErrorKind::TimedOut,
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::ConnectionAborted,
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::Interrupted,
];

/// Whether trying the same request again may succeed.
///
/// Conservative: only a `Generic` error qualifies, and only when its source chain shows a
/// transport failure. Every other variant (`NotFound`, `AlreadyExists`, `Precondition`,
/// `NotModified`, `PermissionDenied`, `Unauthenticated`, `InvalidPath`, `NotSupported`,
/// `NotImplemented`, `UnknownConfigurationKey`, `JoinError`) is an answer or a mistake that
/// a retry would only repeat. In the chain, these count as transient:
///
/// - an `io::Error` of a kind in [`TRANSIENT_IO`] (a local file system, or the socket
///   under an HTTP client);
/// - an `object_store` [`HttpError`] of kind `Connect`, `Request`, `Timeout` or
///   `Interrupted`: the request did not get through or its answer did not get back;
/// - an HTTP status of 5xx, 429 (too many requests) or 408 (request timeout), or an S3
///   `SlowDown` or `InternalError` body. `object_store` keeps the type that carries the
///   status private, so these are recognised by the message it prints for them ("Server
///   returned non-2xx status code: 503 ...", "Server returned error response: ...").
///
/// An error that already went through a `ResilientStore` and was given up on is never
/// transient again, so that stacked wrappers cannot multiply each other's attempts.
pub(crate) fn is_transient(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::Generic { source, .. } => chain_is_transient(source.as_ref()),
        _ => false,
    }
}

fn chain_is_transient(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<GaveUp>() {
            return false;
        }
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if TRANSIENT_IO.contains(&io_error.kind()) {
                return true;
            }
            // `io::Error::source` skips the error it wraps; look at that one itself.
            next = io_error
                .get_ref()
                .map(|inner| inner as &(dyn StdError + 'static));
            continue;
        }
        if let Some(http) = error.downcast_ref::<HttpError>()
            && matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        {
            return true;
        }
        if message_is_transient(&error.to_string()) {
            return true;
        }
        next = error.source();
    }
    false
}

/// Whether a message is `object_store`'s report of a transient HTTP answer.
fn message_is_transient(message: &str) -> bool {
    const STATUS: &str = "Server returned non-2xx status code: ";
    const RESPONSE: &str = "Server returned error response: ";
    if let Some(at) = message.find(STATUS) {
        let rest = &message[at + STATUS.len()..];
        let status: Option<u16> = rest.get(..3).and_then(|digits| digits.parse().ok());
        if let Some(status) = status
            && ((500..600).contains(&status) || status == 429 || status == 408)
        {
            return true;
        }
    }
    (message.contains(STATUS) || message.contains(RESPONSE))
        && (message.contains("SlowDown") || message.contains("InternalError"))
}

/// The last transient failure of a call that ran out of attempts.
#[derive(Debug)]
struct GaveUp {
    attempts: u32,
    elapsed: Duration,
    source: Box<dyn StdError + Send + Sync>,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempts in {:.1?}",
            self.attempts, self.elapsed
        )
    }
}

impl StdError for GaveUp {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// `error`, the last of `attempts`, wrapped to say that the call was given up on. The store
/// name of a `Generic` error is kept.
fn gave_up(error: object_store::Error, attempts: u32, elapsed: Duration) -> object_store::Error {
    let (store, source): (&'static str, Box<dyn StdError + Send + Sync>) = match error {
        object_store::Error::Generic { store, source } => (store, source),
        other => ("ResilientStore", Box::new(other)),
    };
    object_store::Error::Generic {
        store,
        source: Box::new(GaveUp {
            attempts,
            elapsed,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use object_store::memory::InMemory;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn generic(source: impl StdError + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: Box::new(source),
        }
    }

    fn io_error(kind: io::ErrorKind) -> object_store::Error {
        generic(io::Error::new(kind, "test"))
    }

    /// A message-only error, as `object_store` wraps HTTP answers.
    #[derive(Debug)]
    struct Message(&'static str);

    impl fmt::Display for Message {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Message {}

    #[test]
    fn dropped_connections_timeouts_and_interruptions_are_transient() {
        for kind in TRANSIENT_IO {
            assert!(is_transient(&io_error(kind)), "{kind:?}");
        }
    }

    #[test]
    fn an_io_error_wrapped_in_another_is_found() {
        let inner = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        let wrapped = io::Error::other(inner);

        assert!(is_transient(&generic(wrapped)));
    }

    #[test]
    fn server_errors_throttling_and_slow_down_are_transient() {
        for message in [
            "Error performing GET in 2s - Server returned non-2xx status code: 503 Service \
             Unavailable: ",
            "Server returned non-2xx status code: 500 Internal Server Error: ",
            "Server returned non-2xx status code: 429 Too Many Requests: ",
            "Server returned error response: <Error><Code>SlowDown</Code></Error>",
        ] {
            assert!(is_transient(&generic(Message(message))), "{message}");
        }
    }

    #[test]
    fn client_errors_and_plain_messages_are_not_transient() {
        for message in [
            "Server returned non-2xx status code: 400 Bad Request: ",
            "Server returned non-2xx status code: 404 Not Found: ",
            "something failed",
            "SlowDown said by someone other than a server",
        ] {
            assert!(!is_transient(&generic(Message(message))), "{message}");
        }
    }

    #[test]
    fn full_disks_and_refused_permissions_are_not_transient() {
        for kind in [
            io::ErrorKind::StorageFull,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::NotFound,
            io::ErrorKind::InvalidData,
        ] {
            assert!(!is_transient(&io_error(kind)), "{kind:?}");
        }
    }

    #[test]
    fn answers_and_mistakes_are_never_transient() {
        let reset = || -> Box<dyn StdError + Send + Sync> {
            Box::new(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
        };
        let path = || "x".to_owned();
        let errors = [
            object_store::Error::NotFound {
                path: path(),
                source: reset(),
            },
            object_store::Error::AlreadyExists {
                path: path(),
                source: reset(),
            },
            object_store::Error::Precondition {
                path: path(),
                source: reset(),
            },
            object_store::Error::NotModified {
                path: path(),
                source: reset(),
            },
            object_store::Error::PermissionDenied {
                path: path(),
                source: reset(),
            },
            object_store::Error::Unauthenticated {
                path: path(),
                source: reset(),
            },
            object_store::Error::NotSupported { source: reset() },
            object_store::Error::NotImplemented,
            object_store::Error::UnknownConfigurationKey {
                store: "test",
                key: "x".to_owned(),
            },
        ];
        for error in errors {
            assert!(!is_transient(&error), "{error:?}");
        }
    }

    #[test]
    fn an_error_already_given_up_on_is_not_retried_again() {
        let error = gave_up(io_error(io::ErrorKind::ConnectionReset), 8, Duration::ZERO);

        assert!(!is_transient(&error));
        assert!(
            error.to_string().contains("gave up after 8 attempts"),
            "{error}"
        );
    }

    #[test]
    fn backoff_stays_under_its_doubling_ceiling_and_the_cap() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);

        for retry in 1..=40 {
            let ceiling = RETRY_BASE_DELAY
                .saturating_mul(2u32.saturating_pow(retry - 1))
                .min(RETRY_MAX_DELAY);
            for _ in 0..200 {
                let delay = policy.backoff(retry, &mut rng);
                assert!(delay <= ceiling, "retry {retry}: {delay:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn backoff_is_jittered_over_its_whole_range() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(11);

        let delays: Vec<Duration> = (0..1000).map(|_| policy.backoff(12, &mut rng)).collect();

        let low = delays.iter().filter(|d| **d < RETRY_MAX_DELAY / 4).count();
        let high = delays
            .iter()
            .filter(|d| **d > RETRY_MAX_DELAY * 3 / 4)
            .count();
        assert!(low > 150 && high > 150, "{low} low and {high} high of 1000");
    }

    /// Fails the first `failures` calls with a reset connection after performing them on
    /// an in-memory store, as when an answer is lost on its way back.
    #[derive(Debug)]
    struct LosesAnswers {
        inner: InMemory,
        failures: Mutex<u32>,
    }

    impl LosesAnswers {
        fn new(failures: u32) -> Arc<Self> {
            Arc::new(Self {
                inner: InMemory::new(),
                failures: Mutex::new(failures),
            })
        }

        fn outcome<T>(&self, result: object_store::Result<T>) -> object_store::Result<T> {
            let mut failures = self.failures.lock().expect("lock");
            if *failures == 0 {
                return result;
            }
            *failures -= 1;
            Err(io_error(io::ErrorKind::ConnectionReset))
        }
    }

    impl fmt::Display for LosesAnswers {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("LosesAnswers")
        }
    }

    #[async_trait]
    impl ObjectStore for LosesAnswers {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.outcome(self.inner.put_opts(location, payload, opts).await)
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.outcome(self.inner.get_opts(location, options).await)
        }

        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            // InMemory deletes a missing object without complaint; a file system does not.
            let existed = self.inner.head(location).await.is_ok();
            let result = self.inner.delete(location).await;
            let result = match result {
                Ok(()) if !existed => Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: Box::new(Message("no such object")),
                }),
                other => other,
            };
            self.outcome(result)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, ListEntry> {
            let listing = self.inner.list(prefix);
            match self.outcome(Ok(())) {
                Ok(()) => listing,
                Err(error) => stream::once(async { Err(error) }).boxed(),
            }
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }

        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// Retries without waiting, so that the tests run at full speed.
    fn quick(inner: Arc<dyn ObjectStore>, max_attempts: u32) -> ResilientStore {
        let policy = RetryPolicy {
            base_delay: Duration::from_micros(1),
            max_delay: Duration::from_micros(1),
            max_attempts,
            max_elapsed: Duration::from_secs(60),
        };
        ResilientStore::with_policy(inner, policy)
    }

    #[tokio::test]
    async fn a_put_whose_answers_were_lost_is_retried_and_counted() {
        let store = quick(LosesAnswers::new(2), 8);
        let path = Path::from("blocks/a");

        store
            .put(&path, b"data".to_vec().into())
            .await
            .expect("put");
        let read = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");

        assert_eq!(read.as_ref(), b"data");
        let counts = store.requests();
        assert_eq!(
            counts.put,
            AttemptCounts {
                succeeded: 1,
                failed: 2
            }
        );
        assert_eq!(
            counts.get,
            AttemptCounts {
                succeeded: 1,
                failed: 0
            }
        );
        assert_eq!(counts.retries, 2);
        assert_eq!(counts.total(), 4);
    }

    #[tokio::test]
    async fn a_delete_that_finds_nothing_on_a_retry_has_succeeded() {
        let flaky = LosesAnswers::new(0);
        let path = Path::from("snapshots/a");
        flaky
            .inner
            .put(&path, b"x".to_vec().into())
            .await
            .expect("put");
        *flaky.failures.lock().expect("lock") = 1;
        let store = quick(flaky, 8);

        let deleted = store.delete(&path).await;
        let again = store.delete(&path).await;

        assert!(deleted.is_ok(), "{deleted:?}");
        assert!(
            matches!(again, Err(object_store::Error::NotFound { .. })),
            "a first attempt that finds nothing is not a success: {again:?}"
        );
    }

    #[tokio::test]
    async fn a_create_is_not_retried() {
        let store = quick(LosesAnswers::new(1), 8);
        let path = Path::from("config");
        let create = PutOptions::from(PutMode::Create);

        let result = store.put_opts(&path, b"x".to_vec().into(), create).await;

        assert!(is_transient(&result.expect_err("the only attempt failed")));
        assert_eq!(
            store.requests().put,
            AttemptCounts {
                succeeded: 0,
                failed: 1
            }
        );
        assert_eq!(store.requests().retries, 0);
    }

    #[tokio::test]
    async fn a_call_that_keeps_failing_gives_up_naming_its_attempts() {
        let store = quick(LosesAnswers::new(u32::MAX), 3);

        let error = store
            .head(&Path::from("config"))
            .await
            .expect_err("every attempt fails");

        assert!(
            error.to_string().contains("gave up after 3 attempts"),
            "{error}"
        );
        let counts = store.requests();
        assert_eq!(
            counts.head,
            AttemptCounts {
                succeeded: 0,
                failed: 3
            }
        );
        assert_eq!(counts.retries, 2);
    }

    #[tokio::test]
    async fn a_listing_that_fails_before_its_first_entry_is_reopened() {
        let flaky = LosesAnswers::new(0);
        for name in ["snapshots/a", "snapshots/b", "snapshots/c"] {
            let path = Path::from(name);
            flaky
                .inner
                .put(&path, b"x".to_vec().into())
                .await
                .expect("put");
        }
        *flaky.failures.lock().expect("lock") = 2;
        let store = quick(flaky, 8);

        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.expect("list");

        let names: Vec<String> = listed.iter().map(|m| m.location.to_string()).collect();
        assert_eq!(names, ["snapshots/a", "snapshots/b", "snapshots/c"]);
        let counts = store.requests();
        assert_eq!(
            counts.list,
            AttemptCounts {
                succeeded: 1,
                failed: 2
            }
        );
        assert_eq!(counts.retries, 2);
    }

    #[tokio::test]
    async fn a_missing_object_is_an_answer_and_not_retried() {
        let store = quick(LosesAnswers::new(0), 8);

        let result = store.head(&Path::from("nothing")).await;

        assert!(
            matches!(result, Err(object_store::Error::NotFound { .. })),
            "{result:?}"
        );
        assert_eq!(
            store.requests().head,
            AttemptCounts {
                succeeded: 1,
                failed: 0
            }
        );
        assert_eq!(store.requests().retries, 0);
    }
}
