//! The config file, and how a command finds its store and master key.
//!
//! ```toml
//! default_store = "local"          # a name below, or a location
//!
//! [stores.local]
//! url = "/srv/blockyard"
//!
//! [stores.frankfurt]
//! url = "s3://images-eu/yard"
//! key_command = "vault kv get -field=key secret/blockyard"
//! options = { endpoint = "https://s3.eu-central-1.amazonaws.com", region = "eu-central-1" }
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use blockyard_crypto::MasterKey;
use blockyard_store::Location;
use serde::Deserialize;

use crate::cli::{Global, KeyArgs};

/// Longest key file or key-command output read; a key is 16 to a few hundred bytes, and this
/// keeps a mistaken path (a disk image) from being read into memory whole.
const MAX_KEY_BYTES: u64 = 64 << 10;

/// The config file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// The store used when neither --store nor $BLOCKYARD_STORE is given.
    pub(crate) default_store: Option<String>,
    /// Named stores.
    #[serde(default)]
    pub(crate) stores: BTreeMap<String, StoreEntry>,
}

/// One named store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreEntry {
    /// Its location.
    pub(crate) url: String,
    /// Its master key, as the --key-file option.
    pub(crate) key_file: Option<PathBuf>,
    /// Its passphrase variable, as the --passphrase-env option.
    pub(crate) passphrase_env: Option<String>,
    /// Its key command, as the --key-command option.
    pub(crate) key_command: Option<String>,
    /// Backend options (for S3: endpoint, region, allow_http, ...).
    #[serde(default)]
    pub(crate) options: BTreeMap<String, String>,
}

/// A store picked for a command, with the key settings that go with it.
#[derive(Debug)]
pub(crate) struct StoreChoice {
    pub(crate) location: Location,
    pub(crate) key: KeyArgs,
}

impl ConfigFile {
    /// Loads the config file named by --config, else the first that exists of
    /// ./blockyard.toml and the user's config directory; none at all is an empty config.
    pub(crate) fn load(explicit: Option<&Path>) -> Result<Self> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => match default_config_paths().into_iter().find(|p| p.is_file()) {
                Some(path) => path,
                None => return Ok(Self::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("the config file {} is not valid", path.display()))
    }

    /// Picks the store: --store (a name here or a location), else default_store, else the
    /// local store in the user's data directory. Key options given on the command line win
    /// over the store's own.
    pub(crate) fn choose(&self, global: &Global, explicit: Option<&str>) -> Result<StoreChoice> {
        let wanted = explicit
            .or(global.store.as_deref())
            .or(self.default_store.as_deref());
        let (location, entry_key) = match wanted {
            Some(name) => self.resolve(name)?,
            None => (Location::Local(default_store_path()?), KeyArgs::default()),
        };
        let key = if has_key(&global.key) {
            global.key.clone()
        } else {
            entry_key
        };
        Ok(StoreChoice { location, key })
    }

    /// Resolves a store named on the command line with its own key options: `key` when it
    /// names a key, else the store's entry in this file.
    pub(crate) fn choose_with_key(&self, name: &str, key: &KeyArgs) -> Result<StoreChoice> {
        let (location, entry_key) = self.resolve(name)?;
        let key = if has_key(key) { key.clone() } else { entry_key };
        Ok(StoreChoice { location, key })
    }

    /// The S3 options (endpoint, region, ...) of the first store in the config file that
    /// lives in the same bucket as the object URL `url`; none when no store does, and then
    /// the standard AWS_* variables apply.
    pub(crate) fn s3_options_for(&self, url: &str) -> BTreeMap<String, String> {
        let bucket_of = |u: &str| {
            u.strip_prefix("s3://")
                .map(|rest| rest.split('/').next().unwrap_or_default().to_owned())
        };
        let wanted = bucket_of(url);
        self.stores
            .values()
            .find(|entry| wanted.is_some() && bucket_of(&entry.url) == wanted)
            .map(|entry| entry.options.clone())
            .unwrap_or_default()
    }

    fn resolve(&self, name: &str) -> Result<(Location, KeyArgs)> {
        let Some(entry) = self.stores.get(name) else {
            return Ok((name.parse()?, KeyArgs::default()));
        };
        let mut location: Location = entry
            .url
            .parse()
            .with_context(|| format!("store {name} in the config file has a bad url"))?;
        for (key, value) in &entry.options {
            location = location.with_option(key, value)?;
        }
        let key = KeyArgs {
            key_file: entry.key_file.clone(),
            passphrase_env: entry.passphrase_env.clone(),
            key_command: entry.key_command.clone(),
        };
        if [
            key.key_file.is_some(),
            key.passphrase_env.is_some(),
            key.key_command.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
            > 1
        {
            bail!("store {name} in the config file names more than one master key source");
        }
        Ok((location, key))
    }
}

fn has_key(key: &KeyArgs) -> bool {
    key.key_file.is_some() || key.passphrase_env.is_some() || key.key_command.is_some()
}

fn default_config_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("blockyard.toml")];
    if let Some(dirs) = directories::ProjectDirs::from("", "", "blockyard") {
        paths.push(dirs.config_dir().join("config.toml"));
    }
    paths
}

fn default_store_path() -> Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "blockyard").ok_or_else(|| {
        anyhow!("cannot find a home directory for the default store; give --store")
    })?;
    Ok(dirs.data_dir().join("store"))
}

/// Reads the master key the options name, or `None` when they name none.
pub(crate) fn master_key(key: &KeyArgs) -> Result<Option<MasterKey>> {
    if let Some(path) = &key.key_file {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        warn_if_readable_by_others(&file, path);
        let mut bytes = Vec::new();
        file.take(MAX_KEY_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        if bytes.len() as u64 > MAX_KEY_BYTES {
            bail!(
                "the key file {} is larger than 64 KiB; is it really a key?",
                path.display()
            );
        }
        return key_from_bytes(bytes, &format!("the key file {}", path.display()));
    }
    if let Some(var) = &key.passphrase_env {
        let passphrase = std::env::var(var)
            .with_context(|| format!("the environment variable {var} holds no passphrase"))?;
        return Ok(Some(MasterKey::from_passphrase(passphrase)?));
    }
    if let Some(command) = &key.key_command {
        let output = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run the key command {command:?}"))?;
        if !output.status.success() {
            bail!("the key command {command:?} failed ({})", output.status);
        }
        if output.stdout.len() as u64 > MAX_KEY_BYTES {
            bail!("the key command {command:?} printed more than 64 KiB; is that a key?");
        }
        return key_from_bytes(output.stdout, &format!("the output of {command:?}"));
    }
    Ok(None)
}

fn key_from_bytes(mut bytes: Vec<u8>, what: &str) -> Result<Option<MasterKey>> {
    // `echo key > file` and commands that print a line add a newline that is not key.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    let key = MasterKey::from_key_bytes(bytes).with_context(|| format!("{what} is not a key"))?;
    Ok(Some(key))
}

fn warn_if_readable_by_others(file: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "the key file {} can be read by other users; chmod 600 it",
            path.display()
        );
    }
}
