//! Helpers shared by the integration tests: a store in a temporary folder, images made with
//! the real tools (mkfs.ext4, qemu-img, debugfs), and a way to run the binary.

#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

/// A temporary folder holding a store and test images.
pub struct Fixture {
    pub dir: TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// `blockyard --store <store> ARGS`, with no config file or environment leaking in.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_at(&self.store(), args)
    }

    /// `blockyard --store <store> ARGS` for another store than the fixture's own.
    pub fn command_at(&self, store: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_blockyard"));
        command
            .current_dir(self.dir.path())
            .env_remove("BLOCKYARD_STORE")
            .env_remove("BLOCKYARD_CONFIG")
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("HOME", self.path("home"))
            .arg("--store")
            .arg(store)
            .args(args);
        command
    }

    /// Runs the binary and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run blockyard")
    }

    /// Runs the binary, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_at(&self.store(), args)
    }

    /// Runs the binary on `store`, asserts success and returns stdout.
    pub fn ok_at(&self, store: &Path, args: &[&str]) -> String {
        let output = self
            .command_at(store, args)
            .output()
            .expect("run blockyard");
        assert!(
            output.status.success(),
            "blockyard {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Runs the binary with --json, asserts success and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON {stdout:?}: {e}"))
    }

    /// Runs the binary, asserts failure and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "blockyard {args:?} should have failed"
        );
        String::from_utf8(output.stderr).expect("utf-8 stderr")
    }

    pub fn init(&self) {
        self.ok(&["store", "init", "--block-size", "64K"]);
    }

    /// Snapshots `image` and returns the JSON summary.
    pub fn snapshot(&self, image: &Path, extra: &[&str]) -> Value {
        let mut args = vec!["snapshot", "create", image.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// Snapshots `image` and returns the new snapshot's id.
    pub fn snapshot_id(&self, image: &Path) -> String {
        let summary = self.snapshot(image, &[]);
        summary["snapshot"]
            .as_str()
            .expect("a snapshot id")
            .to_owned()
    }

    /// An ext4 image of `size_mib` MiB made by mkfs.ext4 -d from a tree of generated files.
    pub fn ext4_image(&self, name: &str, size_mib: u64, seed: u64) -> PathBuf {
        let tree = self.path(&format!("{name}.tree"));
        std::fs::create_dir_all(tree.join("usr/lib")).expect("tree");
        std::fs::create_dir_all(tree.join("etc")).expect("tree");
        for i in 0..24u64 {
            let bytes = pseudo_text(200_000 + i * 9_000, seed + i);
            std::fs::write(tree.join(format!("usr/lib/lib{i}.so")), bytes).expect("file");
        }
        for i in 0..40u64 {
            std::fs::write(
                tree.join(format!("etc/conf{i}")),
                pseudo_text(900, seed * 31 + i),
            )
            .expect("file");
        }
        let image = self.path(name);
        run_tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&tree)
                .arg(&image)
                .arg(format!("{size_mib}M")),
        );
        image
    }

    /// A sparse raw image made by `qemu-img create`, with `writes` applied at offsets.
    pub fn qemu_raw_image(&self, name: &str, size: u64, writes: &[(u64, Vec<u8>)]) -> PathBuf {
        let image = self.path(name);
        run_tool(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "raw"])
                .arg(&image)
                .arg(size.to_string()),
        );
        let file = File::options()
            .write(true)
            .open(&image)
            .expect("open image");
        for (offset, bytes) in writes {
            file.write_all_at(bytes, *offset).expect("write image");
        }
        image
    }
}

/// Runs an external tool and insists it succeeds.
pub fn run_tool(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deterministic bytes that compress like text or code: words drawn from a small
/// vocabulary by a xorshift generator.
pub fn pseudo_text(len: u64, seed: u64) -> Vec<u8> {
    let len = usize::try_from(len).expect("test data fits in memory");
    const WORDS: [&str; 12] = [
        "block", "yard", "image", "kernel", "build", "fn ", "0x1f", "\n", "return", "struct", "{",
        "}",
    ];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes()[7] as usize % WORDS.len();
        out.extend_from_slice(WORDS[word].as_bytes());
        out.extend_from_slice(&state.to_le_bytes()[..2]);
    }
    out.truncate(len);
    out
}

/// Bytes that do not compress.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

/// Bytes the file occupies on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}
