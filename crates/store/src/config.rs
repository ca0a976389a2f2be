//! The `config` object: what a reader must know before touching anything else.
//!
//! It is JSON so that a person can read it with `cat` or `aws s3 cp - `. It is written once by
//! `init` and never changed afterwards, except by future explicit migration commands.

use std::collections::BTreeSet;

use blockyard_crypto::DomainId;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// The store format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Features this build understands. A store whose config requires anything else is refused,
/// so that an old binary never misreads a store a newer one has changed.
pub(crate) const KNOWN_FEATURES: &[&str] = &["zstd", "aes-256-gcm-siv", "blake3-keyed-ids"];

/// Default block size: 512 KiB, the block size of the EBS direct APIs.
pub const DEFAULT_BLOCK_SIZE: u64 = 512 << 10;

/// Positions per manifest segment. At 512 KiB blocks a segment covers 2 GiB of disk; a
/// 100 GiB snapshot has 50 segments, each at most 4096 * 32 bytes of ids.
pub const SEGMENT_BLOCKS: u32 = 4096;

/// The store's config object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Always `"blockyard"`.
    pub format: String,
    /// The format version; see [`FORMAT_VERSION`].
    pub version: u32,
    /// Features a reader must have to use the store.
    pub required_features: BTreeSet<String>,
    /// Block size in bytes: a power of two from 4 KiB to 64 MiB.
    pub block_size: u64,
    /// Positions per manifest segment.
    pub segment_blocks: u32,
    /// The key domain of the store.
    pub key_domain: KeyDomainConfig,
    /// zstd level used for new blocks.
    pub compression_level: i32,
}

/// The public half of a store's key domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyDomainConfig {
    /// The domain's public id; stores with the same id share ciphertext verbatim.
    pub id: DomainId,
    /// Whether blocks are encrypted.
    pub encrypted: bool,
    /// The data key new envelopes are sealed with.
    pub current_key_id: u32,
    /// For an unencrypted store only: the domain secret in clear, which keys the block ids.
    /// Encrypted stores keep it wrapped in `keys/slots/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_secret: Option<String>,
}

impl StoreConfig {
    /// Parses and validates a config object's bytes.
    pub(crate) fn parse(bytes: &[u8], location: &str) -> Result<Self> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: "config",
            name: location.to_owned(),
            reason,
        };
        // Read the version first, so that a newer store with a different shape still gets the
        // "upgrade blockyard" message rather than a parse error.
        #[derive(Deserialize)]
        struct Probe {
            format: String,
            version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not a blockyard config: {e}")))?;
        if probe.format != "blockyard" {
            return Err(corrupt(format!(
                "format is {:?}, not \"blockyard\"",
                probe.format
            )));
        }
        if probe.version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                location: location.to_owned(),
                found: probe.version,
                supported: FORMAT_VERSION,
            });
        }

        let config: Self = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let missing: Vec<&str> = config
            .required_features
            .iter()
            .map(String::as_str)
            .filter(|f| !KNOWN_FEATURES.contains(f))
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::MissingFeatures {
                location: location.to_owned(),
                missing: missing.join(", "),
            });
        }
        validate_block_size(config.block_size)?;
        if config.segment_blocks == 0 || config.segment_blocks > 1 << 20 {
            return Err(corrupt(format!(
                "segment size {} is out of range",
                config.segment_blocks
            )));
        }
        if config.key_domain.encrypted && config.key_domain.current_key_id == 0 {
            return Err(corrupt(
                "an encrypted store's data key id must be at least 1".to_owned(),
            ));
        }
        if config.key_domain.encrypted == config.key_domain.plaintext_secret.is_some() {
            return Err(corrupt("the key domain's secret is misplaced".to_owned()));
        }
        Ok(config)
    }
}

/// Checks that a block size is usable: a power of two from 4 KiB to 64 MiB.
pub(crate) fn validate_block_size(block_size: u64) -> Result<()> {
    let ok = block_size.is_power_of_two()
        && (blockyard_formats::MIN_BLOCK_SIZE..=blockyard_formats::MAX_BLOCK_SIZE)
            .contains(&block_size);
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "block size {block_size} is not a power of two from 4 KiB to 64 MiB"
        )))
    }
}
