//! The command line.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

/// Ship machine images to CI fleets: block-level snapshots in a deduplicating, compressed,
/// encrypted store on local disk or S3.
#[derive(Debug, Parser)]
#[command(name = "blockyard", version, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The store: a name from the config file, a path, file:///path, s3://bucket/prefix or
    /// memory://. Default: the config file's default_store, else a store in the user's data
    /// directory.
    #[arg(long, global = true, env = "BLOCKYARD_STORE", value_name = "STORE")]
    pub(crate) store: Option<String>,

    /// The config file. Default: ./blockyard.toml, else blockyard/config.toml in the user's
    /// config directory.
    #[arg(long, global = true, env = "BLOCKYARD_CONFIG", value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) key: KeyArgs,

    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// No progress bars.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,

    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// Where the master key of an encrypted store comes from; at most one.
#[derive(Debug, Args, Clone, Default)]
#[group(multiple = false)]
pub(crate) struct KeyArgs {
    /// Read the master key from a file (at least 16 bytes; a trailing newline is ignored).
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,

    /// Take a passphrase from this environment variable; it is stretched with Argon2id.
    #[arg(long, global = true, value_name = "VAR")]
    pub(crate) passphrase_env: Option<String>,

    /// Run this shell command and use its standard output as the master key (a KMS or Vault
    /// client, for example).
    #[arg(long, global = true, value_name = "CMD")]
    pub(crate) key_command: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or inspect a store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Create, list, inspect, compare and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Write a snapshot out as a raw disk: a sparse file or a block device.
    Restore(RestoreArgs),
    /// Write an image to a file, fetching only the blocks that neither the file (an older
    /// version) nor a seed file nor the block cache holds.
    Pull(PullArgs),
    /// Import a disk image (raw, qcow2, VMDK, VHD, VHDX or OVA) from a file or an s3:// URL:
    /// one snapshot per disk.
    Import(ImportArgs),
    /// Write a snapshot out as a disk image: raw, qcow2, VMDK, VHD or VHDX, to a file,
    /// standard output (-) or an s3:// URL.
    Export(ExportArgs),
    /// Verify the store's structure and, with --read-data, its blocks.
    Check(CheckArgs),
    /// Copy a snapshot to other stores, moving only the blocks each one lacks.
    Copy(CopyArgs),
    /// Manage an encrypted store's master-key slots and data keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Register machine images from snapshots, find them by family, and manage them.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Deleted snapshots and deregistered images: list, restore, purge.
    #[command(subcommand)]
    Recycle(RecycleCommand),
    /// Deregister a family's old images and delete the snapshots no image uses (into the
    /// recycle bin); never a protected image, never the family's latest.
    Retain(RetainArgs),
    /// Delete the blocks and segments no snapshot references (not even one in the recycle
    /// bin), safely while other machines write to the store.
    Gc(GcArgs),
    /// Run the nightly pipelines of a pipeline file: update the base on a volume, snapshot
    /// it, register it, copy it to every region, promote it everywhere, apply retention and
    /// report; --check only validates the file.
    Bake(BakeArgs),
    /// Show the report of a bake run as text, as JSON with --json, or as an HTML page with
    /// a timeline and charts with --html.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The run's report, which bake writes to runs/RUN.json in its work folder.
    #[arg(value_name = "RUN.json")]
    pub(crate) file: PathBuf,
    /// Write the report as one self-contained HTML page to this file, and print its path
    /// instead of the report.
    #[arg(long, value_name = "OUT.html")]
    pub(crate) html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct BakeArgs {
    /// The pipeline file (TOML; see the README's Pipelines section).
    #[arg(value_name = "PIPELINE.toml")]
    pub(crate) file: PathBuf,
    /// Parse and validate the file against the config file's stores, print the pipelines,
    /// and run nothing.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) check: bool,
    /// Only the pipeline of this name.
    #[arg(long, value_name = "NAME", conflicts_with = "resume")]
    pub(crate) only: Option<String>,
    /// Carry on run RUN (its id, or the path of its report) where it stopped: regions that
    /// received the image are not copied to again, and nothing finished is redone.
    #[arg(long, value_name = "RUN")]
    pub(crate) resume: Option<String>,
    /// The folder for run reports, update logs and volumes [default: .bake beside the
    /// pipeline file].
    #[arg(long, value_name = "DIR")]
    pub(crate) work: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// Never condemn what is younger than this, and delete what is condemned no sooner
    /// than this after: 10m, 1h, 0s.
    #[arg(
        long,
        default_value = "10m",
        value_name = "DUR",
        value_parser = crate::units::parse_duration
    )]
    pub(crate) grace: std::time::Duration,
    /// Say what would be condemned; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Do not wait for older writer sessions or the grace: condemn, and leave the deleting
    /// to a later gc.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Take a writer session that has not beaten its heartbeat for this long for dead.
    #[arg(
        long,
        default_value = "5m",
        value_name = "DUR",
        value_parser = crate::units::parse_duration
    )]
    pub(crate) session_timeout: std::time::Duration,
    /// Deletes in flight at once.
    #[arg(long, default_value_t = blockyard_store::DEFAULT_DELETE_CONCURRENCY)]
    pub(crate) concurrency: usize,
}

#[derive(Debug, Args)]
pub(crate) struct RetainArgs {
    /// The family.
    #[arg(long)]
    pub(crate) family: String,
    /// Keep this many of the newest images.
    #[arg(long, value_name = "N")]
    pub(crate) keep_last: usize,
    /// Also keep images registered within this long: 7d, 12h.
    #[arg(long, value_name = "DUR", value_parser = crate::units::parse_duration)]
    pub(crate) keep_within: Option<std::time::Duration>,
    /// Say what would go, and deregister and delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RecycleCommand {
    /// What the recycle bin holds, oldest deletion first.
    List,
    /// Bring a snapshot or image back.
    Restore {
        /// The snapshot or image id.
        id: String,
    },
    /// Remove for good what was deleted at least WINDOW ago, by the store's clock.
    Purge {
        /// How long deleted items stay: 7d, 12h, 30m, 0s.
        #[arg(long, default_value = "7d", value_parser = crate::units::parse_duration)]
        older_than: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Register an image from snapshots.
    Register(RegisterArgs),
    /// List images, oldest first.
    List {
        /// Only images of this family.
        #[arg(long)]
        family: Option<String>,
        /// Only images with this tag, as key=value; may be repeated.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::units::parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Show one image: img-…, FAMILY@latest or FAMILY@N (N = 1 is the latest).
    Show {
        /// The image.
        image: String,
    },
    /// Remove an image's record (its snapshots stay); refused while it is protected.
    Deregister {
        /// The image.
        image: String,
    },
    /// Protect an image from deregistration.
    Protect {
        /// The image.
        image: String,
    },
    /// Lift an image's protection.
    Unprotect {
        /// The image.
        image: String,
    },
    /// Deprecate an image from a time on: FAMILY@latest skips it from then.
    Deprecate {
        /// The image.
        image: String,
        /// When, as RFC 3339 (2026-12-24T00:00:00Z) or `now`.
        #[arg(long, value_name = "TIME", value_parser = crate::units::parse_time)]
        at: chrono::DateTime<chrono::Utc>,
    },
    /// Record that an account may use the image.
    Share {
        /// The image.
        image: String,
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Withdraw an account's share.
    Unshare {
        /// The image.
        image: String,
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Make an image its family's latest.
    Promote {
        /// The image.
        image: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The image's name.
    #[arg(long)]
    pub(crate) name: String,
    /// The family it belongs to.
    #[arg(long)]
    pub(crate) family: Option<String>,
    /// A disk, as DEVICE=SNAP; repeat for more, in boot order.
    #[arg(long = "snapshot", value_name = "DEVICE=SNAP", required = true,
          value_parser = crate::units::parse_tag)]
    pub(crate) snapshots: Vec<(String, String)>,
    /// The architecture: x86_64 or aarch64.
    #[arg(long, default_value = "x86_64", value_parser = crate::units::parse_architecture)]
    pub(crate) arch: blockyard_store::Architecture,
    /// The boot mode: uefi or bios.
    #[arg(long, default_value = "uefi", value_parser = crate::units::parse_boot_mode)]
    pub(crate) boot_mode: blockyard_store::BootMode,
    /// Free text.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// A tag, as key=value; may be repeated.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::units::parse_tag)]
    pub(crate) tags: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Create a store. With --encrypt, the master key comes from --key-file,
    /// --passphrase-env or --key-command.
    Init(InitArgs),
    /// Show a store's settings.
    Info,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Where to create the store; default: the --store store.
    pub(crate) location: Option<String>,
    /// Block size, as 512K, 1M or bytes: a power of two from 4K to 64M.
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub(crate) block_size: Option<u64>,
    /// Encrypt the store.
    #[arg(long, conflicts_with = "like")]
    pub(crate) encrypt: bool,
    /// Join the key domain of this store (a name from the config file or a location): the
    /// same block ids, block size and encryption, so copies between the two move sealed
    /// objects as they are and need no key. The new store's own master key comes from
    /// --key-file, --passphrase-env or --key-command; SOURCE's from the --like-* options.
    #[arg(long, value_name = "SOURCE", conflicts_with = "block_size")]
    pub(crate) like: Option<String>,
    #[command(flatten)]
    pub(crate) like_key: LikeKeyArgs,
}

/// The master key of the store named by --like; at most one.
#[derive(Debug, Args, Clone, Default)]
#[group(multiple = false)]
pub(crate) struct LikeKeyArgs {
    /// Read the --like store's master key from a file.
    #[arg(long, value_name = "PATH", requires = "like")]
    pub(crate) like_key_file: Option<PathBuf>,
    /// Take the --like store's passphrase from this environment variable.
    #[arg(long, value_name = "VAR", requires = "like")]
    pub(crate) like_passphrase_env: Option<String>,
    /// Run this shell command for the --like store's master key.
    #[arg(long, value_name = "CMD", requires = "like")]
    pub(crate) like_key_command: Option<String>,
}

impl LikeKeyArgs {
    pub(crate) fn to_key_args(&self) -> KeyArgs {
        KeyArgs {
            key_file: self.like_key_file.clone(),
            passphrase_env: self.like_passphrase_env.clone(),
            key_command: self.like_key_command.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The snapshot.
    pub(crate) snapshot: String,
    /// The source store (a name from the config file or a location); default: --store.
    /// Its master key comes from --key-file, --passphrase-env or --key-command, or from its
    /// entry in the config file, and is needed only for a copy into another key domain.
    #[arg(long, value_name = "STORE")]
    pub(crate) from: Option<String>,
    /// The destination stores, separated by commas or given more than once. Their master
    /// keys come from their config file entries or the --to-* options, and are needed only
    /// for a copy into another key domain.
    #[arg(long, value_name = "STORE", value_delimiter = ',', required = true)]
    pub(crate) to: Vec<String>,
    #[command(flatten)]
    pub(crate) to_key: ToKeyArgs,
    /// Blocks read from the source at once, and uploads in flight per destination.
    #[arg(long, value_name = "N", default_value_t = blockyard_store::DEFAULT_COPY_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub(crate) concurrency: usize,
    /// Upload rate limit per destination, in bytes per second: 50M, 1G/s, 800K.
    #[arg(long, value_name = "RATE", value_parser = crate::units::parse_rate)]
    pub(crate) bandwidth: Option<u64>,
}

/// The master key of every --to store that has none in the config file; at most one.
#[derive(Debug, Args, Clone, Default)]
#[group(multiple = false)]
pub(crate) struct ToKeyArgs {
    /// Read the destinations' master key from a file.
    #[arg(long, value_name = "PATH")]
    pub(crate) to_key_file: Option<PathBuf>,
    /// Take the destinations' passphrase from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub(crate) to_passphrase_env: Option<String>,
    /// Run this shell command for the destinations' master key.
    #[arg(long, value_name = "CMD")]
    pub(crate) to_key_command: Option<String>,
}

impl ToKeyArgs {
    pub(crate) fn to_key_args(&self) -> KeyArgs {
        KeyArgs {
            key_file: self.to_key_file.clone(),
            passphrase_env: self.to_passphrase_env.clone(),
            key_command: self.to_key_command.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// List the master-key slots and the current data key.
    List,
    /// Add a master-key slot; the store opens with the existing key (--key-file, ...).
    Add(NewKeyArgs),
    /// Remove a master-key slot; the last one is refused.
    Remove {
        /// The slot, as `key list` prints it.
        slot: String,
    },
    /// Make a new data key current for blocks sealed from now on; nothing is rewritten.
    Rotate,
}

/// The master key a new slot opens the store with; exactly one.
#[derive(Debug, Args, Clone, Default)]
#[group(required = true, multiple = false)]
pub(crate) struct NewKeyArgs {
    /// Read the new master key from a file.
    #[arg(long, value_name = "PATH")]
    pub(crate) new_key_file: Option<PathBuf>,
    /// Take the new passphrase from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub(crate) new_passphrase_env: Option<String>,
    /// Run this shell command for the new master key.
    #[arg(long, value_name = "CMD")]
    pub(crate) new_key_command: Option<String>,
}

impl NewKeyArgs {
    pub(crate) fn to_key_args(&self) -> KeyArgs {
        KeyArgs {
            key_file: self.new_key_file.clone(),
            passphrase_env: self.new_passphrase_env.clone(),
            key_command: self.new_key_command.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Snapshot a disk image or block device; with --parent and an overlay, only its changes.
    Create(CreateArgs),
    /// List snapshots, oldest first.
    List,
    /// Show one snapshot's record.
    Show {
        /// The snapshot.
        snapshot: String,
    },
    /// List the block indexes that hold data.
    Blocks {
        /// The snapshot.
        snapshot: String,
    },
    /// List the block indexes whose content differs between two snapshots.
    Diff {
        /// The first snapshot.
        first: String,
        /// The second snapshot.
        second: String,
    },
    /// Delete a snapshot's record; blocks no other snapshot uses are left for gc.
    Delete {
        /// The snapshot.
        snapshot: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// A disk image (any format import reads), a block device, or an s3:// URL.
    pub(crate) source: String,
    /// The image's format; default: recognised from its magic numbers.
    #[arg(long, value_name = "FORMAT")]
    pub(crate) format: Option<blockyard_formats::Format>,
    /// A snapshot this one probably shares blocks with; makes the dedup check cheaper. For a
    /// copy-on-write overlay (qcow2, differencing VHD) it is the overlay's backing disk: only
    /// what the overlay stores is read, and every other block is taken from SNAP.
    #[arg(long, value_name = "SNAP")]
    pub(crate) parent: Option<String>,
    /// Free text stored with the snapshot.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// A tag, as key=value; may be repeated.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::units::parse_tag)]
    pub(crate) tags: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot.
    pub(crate) snapshot: String,
    /// A file to create (sparse) or a block device to overwrite.
    pub(crate) output: PathBuf,
    /// Replace OUTPUT if it is an existing file.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// The snapshot or image: snap-…, img-…, FAMILY@latest, FAMILY@N, IMAGE:DEVICE.
    pub(crate) snapshot: String,
    /// The file to write. When it exists as a raw image (an older version), its blocks are
    /// reused where they still fit; it is replaced once the pull is complete.
    pub(crate) output: PathBuf,
    /// The store to pull from (a name from the config file or a location); default: --store.
    #[arg(long, value_name = "STORE")]
    pub(crate) from: Option<String>,
    /// A raw disk image that probably shares blocks with the image, read by position and
    /// then by content; may be repeated.
    #[arg(long = "seed", value_name = "FILE")]
    pub(crate) seeds: Vec<PathBuf>,
    /// A folder of blocks that pulls on this machine share: read before the store, filled
    /// with what is fetched.
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    /// The cache's bound; the least recently used blocks go first: 10G, 500M.
    #[arg(long, value_name = "SIZE", default_value = "10G", requires = "cache",
          value_parser = crate::units::parse_size)]
    pub(crate) cache_size: u64,
    /// The format to write: raw (sparse) or qcow2.
    #[arg(long, value_name = "FORMAT", default_value = "raw")]
    pub(crate) format: blockyard_formats::Format,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The image: a path, file:///path or s3://bucket/key.
    pub(crate) source: String,
    /// The image's format; default: recognised from its magic numbers.
    #[arg(long, value_name = "FORMAT")]
    pub(crate) format: Option<blockyard_formats::Format>,
    /// The image's name.
    #[arg(long)]
    pub(crate) name: String,
    /// The family the image belongs to.
    #[arg(long)]
    pub(crate) family: Option<String>,
    /// A snapshot that stands in for a backing file the image's chain names but this
    /// machine does not have (the chain was made on a copy of that snapshot).
    #[arg(long, value_name = "SNAP")]
    pub(crate) backing_snapshot: Option<String>,
    /// The architecture the image boots on: x86_64 or aarch64.
    #[arg(long, default_value = "x86_64", value_parser = crate::units::parse_architecture)]
    pub(crate) arch: blockyard_store::Architecture,
    /// How the image boots: uefi or bios.
    #[arg(long, default_value = "uefi", value_parser = crate::units::parse_boot_mode)]
    pub(crate) boot_mode: blockyard_store::BootMode,
    /// Free text stored with each snapshot.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// A tag, as key=value; may be repeated.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::units::parse_tag)]
    pub(crate) tags: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The snapshot.
    pub(crate) snapshot: String,
    /// A file to create, - for standard output, or s3://bucket/key.
    pub(crate) output: String,
    /// The format to write; default: from OUTPUT's extension, else raw.
    #[arg(long, value_name = "FORMAT")]
    pub(crate) format: Option<blockyard_formats::Format>,
    /// vmdk: streamOptimized or monolithicSparse (default); vhd: dynamic (default) or fixed.
    #[arg(long, value_name = "SUBFORMAT")]
    pub(crate) subformat: Option<String>,
    /// qcow2: compress clusters (needs a file output).
    #[arg(long)]
    pub(crate) compress: bool,
    /// Replace OUTPUT if it is an existing file.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Read every block and verify its authentication tag and id.
    #[arg(long)]
    pub(crate) read_data: bool,
    /// With --read-data, read only this percentage of blocks, chosen at random.
    #[arg(
        long,
        value_name = "PERCENT",
        requires = "read_data",
        value_parser = crate::units::parse_percent
    )]
    pub(crate) sample: Option<f64>,
}
