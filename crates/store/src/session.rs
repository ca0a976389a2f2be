//! Writer sessions: the lease a writer holds so that garbage collection never deletes what
//! it is about to reference.
//!
//! ```text
//! sessions/<id>    {"purpose", "host", "pid", "started"}: rewritten every heartbeat
//! ```
//!
//! A session starts by writing its object; the store's time of that write is the session's
//! start. It then reads the condemned lists of every gc run that is marked and not done.
//! Every run marked after the start waits for the session to end (or to miss heartbeats for
//! the session timeout), so only the runs read here can hurt it, and for those the session
//! revives what it depends on: before it reuses or uploads a condemned object it writes a
//! revived marker into the run, then looks for the run's `sweeping` marker. The run writes
//! `sweeping` before it lists the markers, so one of the two always sees the other: either
//! the run spares the object, or the session sees the sweep and waits for it to finish
//! before looking at the object again. See `docs/architecture.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockyard_crypto::ObjectId;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::condemned::{self, Condemned, Kind};
use crate::error::{Result, StoreError};
use crate::raw::{RawStore, store_second};

/// How often a session rewrites its object.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// A session whose object is older than this by the store's clock is taken for dead; a
/// sweep whose marker is that old has stalled.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a session waits between looks at a sweep it must outlast.
const SWEEP_POLL: Duration = Duration::from_millis(250);

/// The folder holding sessions.
pub(crate) fn sessions() -> Path {
    Path::from("sessions")
}

fn session_path(id: &str) -> Path {
    Path::from(format!("sessions/{id}"))
}

/// What a session object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionBody {
    pub(crate) purpose: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// The store's time of the session's first write; absent in that first write.
    #[serde(default)]
    pub(crate) started: Option<DateTime<Utc>>,
}

/// A live session. Dropping it stops the heartbeat and removes its object in the
/// background; [`Session::end`] does so and waits.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// One object revived in one run: the run's place in the session's list, and the object.
type Revival = (usize, Kind, ObjectId);

#[derive(Debug)]
struct Inner {
    raw: RawStore,
    id: String,
    started: DateTime<Utc>,
    body: Bytes,
    /// The runs that were marked and not done when the session started.
    runs: Vec<(String, Condemned)>,
    /// What this session has revived, or is reviving, by run.
    revived: Mutex<HashMap<Revival, Arc<OnceCell<()>>>>,
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl Session {
    /// Starts a session on `raw` for `purpose` (shown to whoever lists sessions).
    pub async fn begin(raw: &RawStore, purpose: &str) -> Result<Self> {
        Self::begin_with(raw, purpose, HEARTBEAT, DEFAULT_SESSION_TIMEOUT).await
    }

    /// Starts a session with its own heartbeat period and the timeout it assumes gc uses.
    pub(crate) async fn begin_with(
        raw: &RawStore,
        purpose: &str,
        heartbeat: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let id = format!("ses-{}", ulid::Ulid::new().to_string().to_lowercase());
        let path = session_path(&id);
        let mut body = SessionBody {
            purpose: purpose.to_owned(),
            host: hostname(),
            pid: std::process::id(),
            started: None,
        };
        raw.put(&path, encode(&body)?).await?;
        let started = raw.last_modified(&path).await?;
        body.started = Some(started);
        let body = encode(&body)?;

        let mut runs = Vec::new();
        for (run, state) in condemned::run_states(raw).await? {
            if state.marked.is_some() && !state.done {
                let condemned = condemned::read_condemned(raw, &run, state.lists).await?;
                if !condemned.is_empty() {
                    runs.push((run, condemned));
                }
            }
        }

        let beat = tokio::spawn({
            let raw = raw.clone();
            let body = body.clone();
            async move {
                loop {
                    tokio::time::sleep(heartbeat).await;
                    if let Err(e) = raw.put(&path, body.clone()).await {
                        tracing::warn!("session heartbeat failed: {e}");
                    }
                }
            }
        });
        tracing::debug!(session = %id, %started, runs = runs.len(), "session started");
        Ok(Self {
            inner: Arc::new(Inner {
                raw: raw.clone(),
                id,
                started,
                body,
                runs,
                revived: Mutex::new(HashMap::new()),
                heartbeat: Mutex::new(Some(beat)),
                timeout,
            }),
        })
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// When the session started, by the store's clock.
    pub fn started(&self) -> DateTime<Utc> {
        self.inner.started
    }

    /// Whether some run this session knows of condemned the object.
    pub(crate) fn is_condemned(&self, kind: Kind, id: &ObjectId) -> bool {
        self.inner
            .runs
            .iter()
            .any(|(_, condemned)| condemned.contains(kind, id))
    }

    /// Makes sure that no run this session knows of will delete the object from now on.
    /// Call it before deciding, from the object's presence, to reuse or upload it; look at
    /// its presence only after this returns.
    pub(crate) async fn protect(&self, kind: Kind, id: &ObjectId) -> Result<()> {
        for (index, (run, condemned)) in self.inner.runs.iter().enumerate() {
            if !condemned.contains(kind, id) {
                continue;
            }
            // Tasks of one session that need the same object share one revival, and each
            // returns only once it is complete; a failed one is tried again by the next.
            let cell = Arc::clone(
                lock(&self.inner.revived)
                    .entry((index, kind, *id))
                    .or_default(),
            );
            cell.get_or_try_init(|| async {
                let raw = &self.inner.raw;
                raw.put(&condemned::revived_path(run, kind, id), Bytes::new())
                    .await?;
                if raw.exists(&condemned::sweeping_path(run)).await? {
                    self.outlast_sweep(run).await?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until the run has finished deleting, or its sweep has stalled for the session
    /// timeout (a run that resumes reads the markers again before it deletes anything).
    async fn outlast_sweep(&self, run: &str) -> Result<()> {
        let raw = &self.inner.raw;
        let timeout =
            chrono::Duration::from_std(self.inner.timeout).unwrap_or(chrono::Duration::MAX);
        tracing::info!(
            run,
            "waiting for a garbage collection run to finish deleting"
        );
        loop {
            if raw.exists(&condemned::done_path(run)).await? {
                return Ok(());
            }
            let Some(sweeping) = raw
                .last_modified_if_any(&condemned::sweeping_path(run))
                .await?
            else {
                // The run was finished and cleared away meanwhile.
                return Ok(());
            };
            let now = self.beat().await?;
            if now - sweeping > timeout {
                return Ok(());
            }
            tokio::time::sleep(SWEEP_POLL).await;
        }
    }

    /// Rewrites the session object now; returns the store's time of the write.
    async fn beat(&self) -> Result<DateTime<Utc>> {
        let path = session_path(&self.inner.id);
        self.inner.raw.put(&path, self.inner.body.clone()).await?;
        self.inner.raw.last_modified(&path).await
    }

    /// Checks, just before a commit point, that gc has not judged the session dead: a
    /// heartbeat first, then a look for the tombstone. gc writes the tombstone before it
    /// looks at the heartbeat a last time, so either it sees this heartbeat and waits, or
    /// this look sees the tombstone and the commit is refused.
    pub async fn confirm(&self) -> Result<()> {
        self.beat().await?;
        if self
            .inner
            .raw
            .exists(&condemned::expired_path(&self.inner.id))
            .await?
        {
            return Err(StoreError::SessionExpired {
                session: self.inner.id.clone(),
            });
        }
        Ok(())
    }

    /// Ends the session: stops the heartbeat and removes its object.
    pub async fn end(&self) -> Result<()> {
        if let Some(beat) = lock(&self.inner.heartbeat).take() {
            beat.abort();
        }
        self.inner.raw.delete(&session_path(&self.inner.id)).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(beat) = lock(&self.heartbeat).take() else {
            return;
        };
        beat.abort();
        // Ended without `end`: remove the object if a runtime is still there to do it;
        // otherwise it expires.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let raw = self.raw.clone();
            let path = session_path(&self.id);
            handle.spawn(async move {
                let _ = raw.delete(&path).await;
            });
        }
    }
}

/// A session object as gc sees it.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub(crate) id: String,
    pub(crate) started: DateTime<Utc>,
    pub(crate) last_beat: DateTime<Utc>,
    pub(crate) purpose: String,
}

/// Every session object in the store.
pub(crate) async fn list_sessions(raw: &RawStore) -> Result<Vec<SessionInfo>> {
    let mut found = Vec::new();
    for meta in raw.list(&sessions()).await? {
        let Some(id) = meta.location.filename() else {
            continue;
        };
        let body = match raw.get(&meta.location).await? {
            Some(bytes) => serde_json::from_slice::<SessionBody>(&bytes).ok(),
            // Ended between the listing and the read.
            None => continue,
        };
        let last_beat = store_second(meta.last_modified);
        let started = match &body {
            Some(SessionBody {
                started: Some(started),
                ..
            }) => (*started).min(last_beat),
            // Only the first write has happened: it is the start.
            Some(_) => last_beat,
            // Unreadable: taken to be as old as can be, so gc waits for it to expire.
            None => DateTime::<Utc>::MIN_UTC,
        };
        found.push(SessionInfo {
            id: id.to_owned(),
            started,
            last_beat,
            purpose: body.map(|b| b.purpose).unwrap_or_default(),
        });
    }
    Ok(found)
}

fn encode(body: &SessionBody) -> Result<Bytes> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| StoreError::Task(e.to_string()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
