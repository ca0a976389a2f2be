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
        }
    }
}

impl Location {
    /// Adds a backend option (for S3: `endpoint`, `region`, `allow_http`, ...).
    pub fn with_option(mut self, key: &str, value: &str) -> Result<Self> {
        match &mut self {
            Self::S3 { options, .. } => {
                options.insert(key.to_owned(), value.to_owned());
                Ok(self)
            }
            _ => Err(StoreError::BadLocation {
                input: self.to_string(),
                reason: format!("option {key} applies only to s3:// stores"),
            }),
        }
    }

    /// The local folder, for a local store.
    pub fn local_path(&self) -> Option<&FsPath> {
        match self {
            Self::Local(path) => Some(path),
            _ => None,
        }
    }

    /// Connects to the backend. A local folder must exist unless `create` is set.
    pub(crate) fn connect(&self, create: bool) -> Result<Arc<dyn ObjectStore>> {
        match self {
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
}
