//! Store locations and the object-store backends behind them.
//!
//! | location                  | backend                                    |
//! |---------------------------|--------------------------------------------|
//! | `/path`, `./path`, `path` | local file system (the embedded default)   |
//! | `file:///path`            | local file system                          |
//! | `memory://`               | in-process memory, for tests               |
//! | `s3://bucket/prefix`      | S3 or an S3-compatible server              |
//!
//! S3 settings come from the usual `AWS_*` environment variables (`AWS_ENDPOINT`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`) and from
//! options given with the location, which win.
//!
//! Any location can also be made to fail on purpose, for tests and drills: the options
//! `inject_error_rate`, `inject_delay_ms`, `inject_delay_jitter_ms`, `inject_seed` and
//! `inject_down` put a [`FaultInjector`] with that [`FaultPlan`] between the backend and the
//! retries, so that injected faults are retried as real ones are:
//!
//! ```text
//!  backend ──→ FaultInjector (only with a plan) ──→ ResilientStore ──→ Store
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

use crate::error::{Result, StoreError};
use crate::faults::{FaultInjector, FaultPlan};
use crate::resilient::ResilientStore;

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on a local file system.
    Local(PathBuf),
    /// Process memory; gone when the process ends.
    Memory,
    /// A bucket and a key prefix on an S3-compatible server.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing slashes; may be empty.
        prefix: String,
        /// Backend settings (`endpoint`, `region`, `allow_http`, ...), named as the `aws_*`
        /// keys of the object_store crate without the `aws_` part.
        options: BTreeMap<String, String>,
    },
    /// Another location whose requests fail or wait on purpose, as `plan` says. Made by
    /// [`with_option`](Self::with_option) from the `inject_*` options; named and shown as
    /// the location it wraps.
    Faulty {
        /// The location whose backend the faults are injected into.
        inner: Box<Location>,
        /// What to inject.
        plan: FaultPlan,
    },
}

impl FromStr for Location {
    type Err = StoreError;

    fn from_str(input: &str) -> Result<Self> {
        let bad = |reason: &str| StoreError::BadLocation {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(bad("it is empty"));
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Ok(Self::Local(PathBuf::from(input)));
        };
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "a file:// location needs an absolute path, as file:///srv/x",
                    ));
                }
                Ok(Self::Local(PathBuf::from(rest)))
            }
            "memory" => Ok(Self::Memory),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(
                        "an s3:// location needs a bucket, as s3://bucket/prefix",
                    ));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                    options: BTreeMap::new(),
                })
            }
            other => Err(bad(&format!(
                "unknown scheme {other}://; use a path, file://, s3:// or memory://"
            ))),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Memory => f.write_str("memory://"),
            Self::S3 { bucket, prefix, .. } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
            // Faults are a way of reaching the store, not part of its name.
            Self::Faulty { inner, .. } => inner.fmt(f),
        }
    }
}

impl Location {
    /// Adds an option. The `inject_*` options (see [`FaultPlan`]) apply to every location
    /// and make it [`Faulty`](Self::Faulty); the others are backend options of S3 stores
    /// (`endpoint`, `region`, `allow_http`, ...).
    pub fn with_option(self, key: &str, value: &str) -> Result<Self> {
        if FaultPlan::is_option(key) {
            let (inner, mut plan) = match self {
                Self::Faulty { inner, plan } => (inner, plan),
                other => (Box::new(other), FaultPlan::default()),
            };
            if let Err(error) = plan.set_option(key, value) {
                return Err(StoreError::BadLocation {
                    input: inner.to_string(),
                    reason: error.to_string(),
                });
            }
            return Ok(Self::Faulty { inner, plan });
        }
        match self {
            Self::S3 {
                bucket,
                prefix,
                mut options,
            } => {
                options.insert(key.to_owned(), value.to_owned());
                Ok(Self::S3 {
                    bucket,
                    prefix,
                    options,
                })
            }
            Self::Faulty { inner, plan } => Ok(Self::Faulty {
                inner: Box::new((*inner).with_option(key, value)?),
                plan,
            }),
            other => Err(StoreError::BadLocation {
                input: other.to_string(),
                reason: format!("option {key} applies only to s3:// stores"),
            }),
        }
    }

    /// The local folder, for a local store.
    pub fn local_path(&self) -> Option<&FsPath> {
        match self {
            Self::Local(path) => Some(path),
            Self::Faulty { inner, .. } => inner.local_path(),
            _ => None,
        }
    }

    /// Whether the backend's listings come in name order (byte order of the keys). S3
    /// answers in that order and memory keeps its objects sorted; a local folder lists in
    /// whatever order its directories hold their entries.
    pub(crate) fn lists_in_name_order(&self) -> bool {
        match self {
            Self::Local(_) => false,
            Self::Memory | Self::S3 { .. } => true,
            Self::Faulty { inner, .. } => inner.lists_in_name_order(),
        }
    }

    /// Connects to the backend, with the faults of a [`Faulty`](Self::Faulty) location and
    /// retries on top. A local folder must exist unless `create` is set.
    pub(crate) fn connect(&self, create: bool) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(ResilientStore::new(self.connect_backend(create)?)))
    }

    /// Connects to the backend, with the faults of a [`Faulty`](Self::Faulty) location but
    /// without retries: what `Store::open_on` and its siblings take, as they add the
    /// retries themselves.
    pub(crate) fn connect_backend(&self, create: bool) -> Result<Arc<dyn ObjectStore>> {
        match self {
            Self::Faulty { inner, plan } => {
                let backend = inner.connect_backend(create)?;
                tracing::info!(store = %inner, %plan, "injecting faults into the store's requests");
                Ok(Arc::new(FaultInjector::new(backend, *plan)?))
            }
            Self::Local(path) => {
                if create {
                    std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
                        op: "create the store folder",
                        path: path.display().to_string(),
                        source,
                    })?;
                } else if !path.is_dir() {
                    return Err(StoreError::NotAStore {
                        location: self.to_string(),
                    });
                }
                let store = LocalFileSystem::new_with_prefix(path).map_err(StoreError::backend(
                    "open",
                    &object_store::path::Path::from(""),
                ))?;
                Ok(Arc::new(store))
            }
            Self::Memory => Ok(Arc::new(InMemory::new())),
            Self::S3 {
                bucket,
                prefix,
                options,
            } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in options {
                    let config_key = AmazonS3ConfigKey::from_str(&format!("aws_{key}"))
                        .or_else(|_| AmazonS3ConfigKey::from_str(key))
                        .map_err(|_| StoreError::BadLocation {
                            input: self.to_string(),
                            reason: format!("unknown S3 option {key}"),
                        })?;
                    builder = builder.with_config(config_key, value);
                }
                let s3 = builder.build().map_err(|source| StoreError::Backend {
                    op: "configure",
                    path: self.to_string(),
                    source,
                })?;
                if prefix.is_empty() {
                    Ok(Arc::new(s3))
                } else {
                    Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_and_file_urls_are_local() {
        assert_eq!(
            "/srv/yard".parse::<Location>().ok(),
            Some(Location::Local("/srv/yard".into()))
        );
        assert_eq!(
            "yard".parse::<Location>().ok(),
            Some(Location::Local("yard".into()))
        );
        assert_eq!(
            "file:///srv/yard".parse::<Location>().ok(),
            Some(Location::Local("/srv/yard".into()))
        );
    }

    #[test]
    fn s3_urls_split_bucket_and_prefix() {
        let location: Location = "s3://images/eu/night/".parse().expect("parse");
        let Location::S3 { bucket, prefix, .. } = &location else {
            panic!("not s3")
        };
        assert_eq!(bucket, "images");
        assert_eq!(prefix, "eu/night");
        assert_eq!(location.to_string(), "s3://images/eu/night");
    }

    #[test]
    fn unknown_schemes_and_relative_file_urls_are_refused() {
        assert!("gs://bucket".parse::<Location>().is_err());
        assert!("file://relative".parse::<Location>().is_err());
        assert!("s3://".parse::<Location>().is_err());
        assert!("".parse::<Location>().is_err());
    }

    fn faulty(location: &str, options: &[(&str, &str)]) -> Result<Location> {
        let mut location: Location = location.parse()?;
        for (key, value) in options {
            location = location.with_option(key, value)?;
        }
        Ok(location)
    }

    #[test]
    fn fault_options_make_any_location_faulty_and_gather_in_one_plan() {
        let options = [
            ("inject_error_rate", "0.2"),
            ("inject_delay_ms", "15"),
            ("inject_delay_jitter_ms", "5"),
            ("inject_seed", "7"),
            ("inject_down", "true"),
        ];
        let plan = FaultPlan {
            error_rate: 0.2,
            delay: std::time::Duration::from_millis(15),
            delay_jitter: std::time::Duration::from_millis(5),
            seed: 7,
            down: true,
        };

        for input in ["/srv/yard", "memory://", "s3://images/night"] {
            let location = faulty(input, &options).expect(input);

            let expected = Location::Faulty {
                inner: Box::new(input.parse().expect(input)),
                plan,
            };
            assert_eq!(location, expected);
        }
    }

    #[test]
    fn a_faulty_location_is_named_as_its_inner_location_and_keeps_its_folder() {
        let local = faulty("/srv/yard", &[("inject_error_rate", "0.5")]).expect("local");
        let s3 = faulty("s3://images/night", &[("inject_down", "false")]).expect("s3");

        assert_eq!(local.to_string(), "/srv/yard");
        assert_eq!(local.local_path(), Some(FsPath::new("/srv/yard")));
        assert_eq!(s3.to_string(), "s3://images/night");
        assert_eq!(s3.local_path(), None);
    }

    #[test]
    fn backend_options_of_a_faulty_s3_location_go_to_the_s3_location() {
        let location = faulty(
            "s3://images",
            &[("inject_seed", "3"), ("region", "eu-west-1")],
        )
        .expect("parse");

        let Location::Faulty { inner, plan } = location else {
            panic!("not faulty: {location:?}")
        };
        let Location::S3 { options, .. } = *inner else {
            panic!("not s3: {inner:?}")
        };
        assert_eq!(plan.seed, 3);
        assert_eq!(options.get("region").map(String::as_str), Some("eu-west-1"));
    }

    #[test]
    fn backend_options_of_a_faulty_local_location_are_still_refused() {
        let result = faulty("/srv/yard", &[("inject_seed", "3"), ("region", "eu")]);

        let error = result.expect_err("a local store has no region");
        assert!(
            error.to_string().contains("applies only to s3:// stores"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_fault_option_is_refused_naming_the_location_and_the_range() {
        let error = faulty("memory://", &[("inject_error_rate", "1.5")]).expect_err("1.5");

        assert_eq!(
            error.to_string(),
            "bad store location \"memory://\": inject_error_rate must be a number from 0 \
             to 1, not 1.5"
        );
    }

    #[tokio::test]
    async fn a_faulty_location_connects_through_its_injector() {
        let location = faulty("memory://", &[("inject_down", "true")]).expect("parse");

        let objects = location.connect_backend(true).expect("connect");
        let head = objects
            .head(&object_store::path::Path::from("config"))
            .await;

        assert!(
            objects.to_string().starts_with("FaultInjector("),
            "{objects}"
        );
        let error = head.expect_err("the store is down");
        assert!(error.to_string().contains("injected fault"), "{error}");
    }
}
