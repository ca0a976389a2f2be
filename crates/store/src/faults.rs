//! Failures on purpose: an object store that drops, delays or refuses requests by plan.
//!
//! [`FaultInjector`] sits between a backend and the [`ResilientStore`](crate::ResilientStore)
//! above it, so that what it injects is retried exactly as a real failure would be:
//!
//! ```text
//!  Store ──→ ResilientStore ──→ FaultInjector ──→ backend
//! ```
//!
//! A [`FaultPlan`] says what to inject. Every request (a listing counts as one, when it is
//! first polled) waits `delay` plus a random part of `delay_jitter`, then fails with
//! probability `error_rate`, or always when the plan says the store is `down`. A failure
//! never reaches the backend and looks like a reset connection: an `object_store` `Generic`
//! error whose source is an `io::Error` of kind `ConnectionReset`, whose message says it
//! was injected.
//!
//! The dice come from a random generator seeded by the plan, so one plan always makes the
//! same sequence of decisions; which request meets which decision still depends on the
//! order concurrent requests arrive in.
//!
//! On any location, the options `inject_error_rate`, `inject_delay_ms`,
//! `inject_delay_jitter_ms`, `inject_seed` and `inject_down` set a plan (see
//! [`Location::with_option`](crate::Location::with_option)).

use std::fmt;
use std::io;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, StoreError};

/// The option that sets [`FaultPlan::error_rate`], a number from 0 to 1.
const ERROR_RATE: &str = "inject_error_rate";
/// The option that sets [`FaultPlan::delay`], in milliseconds.
const DELAY_MS: &str = "inject_delay_ms";
/// The option that sets [`FaultPlan::delay_jitter`], in milliseconds.
const DELAY_JITTER_MS: &str = "inject_delay_jitter_ms";
/// The option that sets [`FaultPlan::seed`].
const SEED: &str = "inject_seed";
/// The option that sets [`FaultPlan::down`], `true` or `false`.
const DOWN: &str = "inject_down";

/// What a [`FaultInjector`] does to each request. The default injects nothing.
///
/// Parsed from text as comma-separated `key=value` pairs, the keys being the location
/// options with or without their `inject_` prefix: `error_rate=0.2,seed=7,delay_ms=5`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultPlan {
    /// The share of requests that fail, from 0 (none) to 1 (all).
    pub error_rate: f64,
    /// How long every request waits before it runs or fails.
    pub delay: Duration,
    /// Up to this much more waiting, drawn anew for each request.
    pub delay_jitter: Duration,
    /// Seeds the dice, so that a run can be repeated.
    pub seed: u64,
    /// Every request fails: the store is unreachable.
    pub down: bool,
}

impl PartialEq for FaultPlan {
    fn eq(&self, other: &Self) -> bool {
        // Compared bit for bit, which makes equality total (a NaN rate equals itself), so
        // that `Location`, which holds a plan, can be `Eq`.
        self.error_rate.to_bits() == other.error_rate.to_bits()
            && self.delay == other.delay
            && self.delay_jitter == other.delay_jitter
            && self.seed == other.seed
            && self.down == other.down
    }
}

impl Eq for FaultPlan {}

impl FaultPlan {
    /// Whether `key` is one of the location options that set a fault plan.
    pub fn is_option(key: &str) -> bool {
        [ERROR_RATE, DELAY_MS, DELAY_JITTER_MS, SEED, DOWN].contains(&key)
    }

    /// Sets the field that the location option `key` names; the value is checked.
    pub fn set_option(&mut self, key: &str, value: &str) -> Result<()> {
        self.apply(key, value).map_err(StoreError::InvalidArgument)
    }

    /// Checks that the plan can be run: the error rate is a number from 0 to 1.
    pub fn validate(&self) -> Result<()> {
        check_rate(self.error_rate).map_err(StoreError::InvalidArgument)
    }

    /// Whether the plan injects nothing at all.
    fn is_quiet(&self) -> bool {
        self.error_rate == 0.0 && self.delay.is_zero() && self.delay_jitter.is_zero() && !self.down
    }

    fn apply(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let value = value.trim();
        let millis = |value: &str| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{key} must be a whole number of milliseconds, not {value:?}"))
        };
        match key {
            ERROR_RATE => {
                let rate = value.parse::<f64>().map_err(|_| {
                    format!("{ERROR_RATE} must be a number from 0 to 1, not {value:?}")
                })?;
                check_rate(rate)?;
                self.error_rate = rate;
            }
            DELAY_MS => self.delay = millis(value)?,
            DELAY_JITTER_MS => self.delay_jitter = millis(value)?,
            SEED => {
                self.seed = value.parse().map_err(|_| {
                    format!("{SEED} must be a whole number from 0 to 2^64-1, not {value:?}")
                })?;
            }
            DOWN => {
                self.down = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{DOWN} must be true or false, not {value:?}")),
                };
            }
            _ => {
                return Err(format!(
                    "unknown fault option {key}; the options are {ERROR_RATE}, {DELAY_MS}, \
                     {DELAY_JITTER_MS}, {SEED} and {DOWN}"
                ));
            }
        }
        Ok(())
    }
}

fn check_rate(rate: f64) -> std::result::Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "{ERROR_RATE} must be a number from 0 to 1, not {rate}"
        ))
    }
}

impl FromStr for FaultPlan {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self> {
        let mut plan = Self::default();
        for pair in input
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
        {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(StoreError::InvalidArgument(format!(
                    "fault plan entry {pair:?} is not key=value, as error_rate=0.2"
                )));
            };
            let key = key.trim();
            let key = if key.starts_with("inject_") {
                key.to_owned()
            } else {
                format!("inject_{key}")
            };
            plan.set_option(&key, value)?;
        }
        Ok(plan)
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error_rate={},delay_ms={},delay_jitter_ms={},seed={},down={}",
            self.error_rate,
            self.delay.as_millis(),
            self.delay_jitter.as_millis(),
            self.seed,
            self.down
        )
    }
}

/// An object store that injects the faults of a [`FaultPlan`] into the requests it passes
/// to the store it wraps, for tests and drills. A fault is met before the request reaches
/// the wrapped store, which never sees a failed request.
#[derive(Debug)]
pub struct FaultInjector {
    inner: Arc<dyn ObjectStore>,
    dice: Mutex<Dice>,
}

/// The plan and the generator that decides each request's fate.
#[derive(Debug)]
struct Dice {
    plan: FaultPlan,
    rng: StdRng,
}

impl Dice {
    fn new(plan: FaultPlan) -> Self {
        Self {
            plan,
            rng: StdRng::seed_from_u64(plan.seed),
        }
    }
}

/// One request's fate.
#[derive(Debug, Clone, Copy)]
struct Fate {
    delay: Duration,
    fail: bool,
    down: bool,
}

impl FaultInjector {
    /// Wraps `inner`, injecting the faults of `plan`, which must be valid.
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> Result<Self> {
        plan.validate()?;
        Ok(Self {
            inner,
            dice: Mutex::new(Dice::new(plan)),
        })
    }

    /// The plan in force.
    pub fn plan(&self) -> FaultPlan {
        self.dice().plan
    }

    /// Puts `plan` in force from the next request on, its dice seeded afresh: a test can
    /// take a store down, or bring it back, while it is open.
    pub fn set_plan(&self, plan: FaultPlan) -> Result<()> {
        plan.validate()?;
        *self.dice() = Dice::new(plan);
        Ok(())
    }

    fn dice(&self) -> MutexGuard<'_, Dice> {
        // The dice hold plain data, whole after any panic.
        self.dice.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides the fate of the next request.
    fn roll(&self) -> Fate {
        let mut dice = self.dice();
        let plan = dice.plan;
        if plan.is_quiet() {
            return Fate {
                delay: Duration::ZERO,
                fail: false,
                down: false,
            };
        }
        let jitter = if plan.delay_jitter.is_zero() {
            Duration::ZERO
        } else {
            let most = u64::try_from(plan.delay_jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(dice.rng.random_range(0..=most))
        };
        let fail = plan.down || dice.rng.random::<f64>() < plan.error_rate;
        Fate {
            delay: plan.delay.saturating_add(jitter),
            fail,
            down: plan.down,
        }
    }

    /// Waits and fails as the next request's fate says.
    async fn enter(&self, op: &str, path: &Path) -> object_store::Result<()> {
        self.roll().meet(op, path).await
    }

    /// `listing` with the fate of one request met when it is first polled.
    fn listing(
        &self,
        prefix: Option<&Path>,
        listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let fate = self.roll();
        let path = prefix.cloned().unwrap_or_default();
        async move {
            match fate.meet("list", &path).await {
                Ok(()) => listing,
                Err(error) => stream::once(async { Err(error) }).boxed(),
            }
        }
        .flatten_stream()
        .boxed()
    }
}

impl Fate {
    async fn meet(self, op: &str, path: &Path) -> object_store::Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if !self.fail {
            return Ok(());
        }
        let why = if self.down {
            "the store is down"
        } else {
            "connection reset"
        };
        Err(object_store::Error::Generic {
            store: "FaultInjector",
            source: Box::new(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("injected fault: {why} ({op} {path})"),
            )),
        })
    }
}

impl fmt::Display for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultInjector({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultInjector {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.enter("put", location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // Only the start of an upload is faulted; its parts go to the backend's upload.
        self.enter("start an upload", location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.enter("get", location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.enter("get", location).await?;
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.enter("get", location).await?;
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.enter("head", location).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.enter("delete", location).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.listing(prefix, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.listing(prefix, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.enter("list", &prefix.cloned().unwrap_or_default())
            .await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.enter("copy", to).await?;
        self.inner.copy(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.enter("rename", to).await?;
        self.inner.rename(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.enter("copy", to).await?;
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.enter("rename", to).await?;
        self.inner.rename_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn a_plan_parses_from_key_value_pairs_with_or_without_the_prefix() {
        let plan: FaultPlan = "error_rate=0.25, inject_delay_ms=7,delay_jitter_ms=3,seed=42"
            .parse()
            .expect("parse");

        let expected = FaultPlan {
            error_rate: 0.25,
            delay: Duration::from_millis(7),
            delay_jitter: Duration::from_millis(3),
            seed: 42,
            down: false,
        };
        assert_eq!(plan, expected);
        assert_eq!(
            plan.to_string().parse::<FaultPlan>().expect("reparse"),
            plan
        );
        assert_eq!(
            "".parse::<FaultPlan>().expect("empty"),
            FaultPlan::default()
        );
    }

    #[test]
    fn an_error_rate_above_one_is_refused_saying_the_range() {
        let error = "error_rate=1.5"
            .parse::<FaultPlan>()
            .expect_err("1.5 is no rate");

        assert_eq!(
            error.to_string(),
            "inject_error_rate must be a number from 0 to 1, not 1.5"
        );
    }

    #[test]
    fn malformed_values_and_unknown_keys_are_refused_naming_the_option() {
        let cases = [
            ("error_rate=-0.1", "from 0 to 1"),
            ("error_rate=NaN", "from 0 to 1"),
            ("error_rate=often", "not \"often\""),
            ("delay_ms=1.5", "whole number of milliseconds"),
            ("seed=-1", "inject_seed"),
            ("down=yes", "true or false"),
            ("loss=0.1", "unknown fault option inject_loss"),
            ("error_rate", "not key=value"),
        ];
        for (input, expected) in cases {
            let error = input.parse::<FaultPlan>().expect_err(input);
            assert!(error.to_string().contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn a_plan_built_by_hand_is_validated_by_the_injector() {
        let plan = FaultPlan {
            error_rate: 2.0,
            ..FaultPlan::default()
        };

        let made = FaultInjector::new(Arc::new(InMemory::new()), plan);

        assert!(made.is_err_and(|e| e.to_string().contains("from 0 to 1")));
    }

    #[tokio::test]
    async fn a_store_that_is_down_fails_every_request_as_a_reset_connection() {
        let plan = FaultPlan {
            down: true,
            ..FaultPlan::default()
        };
        let faults = FaultInjector::new(Arc::new(InMemory::new()), plan).expect("injector");
        let path = Path::from("config");

        let put = faults.put(&path, b"x".to_vec().into()).await;
        let listed: object_store::Result<Vec<ObjectMeta>> = faults.list(None).try_collect().await;

        for error in [put.expect_err("put"), listed.expect_err("list")] {
            let object_store::Error::Generic { source, .. } = &error else {
                panic!("not a generic error: {error:?}");
            };
            let io = source.downcast_ref::<io::Error>().expect("an io::Error");
            assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
            assert!(io.to_string().contains("injected fault"), "{io}");
        }
    }

    #[tokio::test]
    async fn one_seed_fails_the_same_requests_and_the_rate_is_kept() {
        let plan = FaultPlan {
            error_rate: 0.3,
            seed: 9,
            ..FaultPlan::default()
        };
        let run = || async {
            let faults = FaultInjector::new(Arc::new(InMemory::new()), plan).expect("injector");
            let mut failed = Vec::new();
            for n in 0..1000 {
                let path = Path::from(format!("blocks/{n}"));
                failed.push(faults.put(&path, b"x".to_vec().into()).await.is_err());
            }
            failed
        };

        let first = run().await;
        let second = run().await;

        assert_eq!(first, second);
        let failures = first.iter().filter(|failed| **failed).count();
        assert!((240..360).contains(&failures), "{failures} of 1000 failed");
    }

    #[tokio::test]
    async fn a_new_plan_brings_a_store_that_was_down_back() {
        let down = FaultPlan {
            down: true,
            ..FaultPlan::default()
        };
        let faults = FaultInjector::new(Arc::new(InMemory::new()), down).expect("injector");
        let path = Path::from("config");
        assert!(
            faults
                .head(&path)
                .await
                .is_err_and(|e| e.to_string().contains("down"))
        );

        faults.set_plan(FaultPlan::default()).expect("set plan");
        let head = faults.head(&path).await;

        assert!(
            matches!(head, Err(object_store::Error::NotFound { .. })),
            "{head:?}"
        );
        assert_eq!(faults.plan(), FaultPlan::default());
    }
}
