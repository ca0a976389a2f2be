//! The binary driven end to end on images made by mkfs.ext4, debugfs and qemu-img.

// Test images are small; their sizes fit every integer type.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, allocated, pseudo_text, random_bytes, run_tool};

const BLOCK: u64 = 64 << 10;

#[test]
fn an_ext4_image_snapshots_and_restores_identically_and_sparse() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.ext4_image("night1.img", 64, 1);

    let summary = fx.snapshot(&image, &["--description", "night 1", "--tag", "os=debian"]);
    let id = summary["snapshot"].as_str().expect("id").to_owned();
    let out = fx.path("restored.img");
    fx.ok(&["restore", &id, out.to_str().expect("path")]);

    assert!(id.starts_with("snap-") && id.len() == 37, "{id}");
    assert_eq!(summary["size"], 64 << 20);
    assert_eq!(summary["blocks"]["total"], (64 << 20) / BLOCK);
    let data = summary["blocks"]["data"].as_u64().expect("data");
    assert_eq!(
        summary["blocks"]["new"], data,
        "a fresh store has none of the blocks"
    );
    assert!(
        summary["bytes_stored"].as_u64() < summary["bytes_read"].as_u64(),
        "{summary}"
    );
    assert_eq!(
        std::fs::read(&out).expect("restored"),
        std::fs::read(&image).expect("image")
    );
    assert!(
        allocated(&out) <= allocated(&image) + BLOCK,
        "restore is not sparse"
    );
    let shown = fx.json(&["snapshot", "show", &id]);
    assert_eq!(shown["description"], "night 1");
    assert_eq!(shown["tags"]["os"], "debian");
}

#[test]
fn the_next_night_stores_only_changed_blocks_with_or_without_a_parent() {
    let fx = Fixture::new();
    fx.init();
    let night1 = fx.ext4_image("night1.img", 64, 2);
    let night2 = fx.path("night2.img");
    std::fs::copy(&night1, &night2).expect("copy");
    let new_file = fx.path("new-tool.bin");
    std::fs::write(&new_file, pseudo_text(700_000, 99)).expect("new file");
    let commands = fx.path("debugfs.cmds");
    std::fs::write(
        &commands,
        format!("write {} usr/new-tool.bin\n", new_file.display()),
    )
    .expect("commands");
    run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&commands)
            .arg(&night2),
    );
    let first = fx.snapshot(&night1, &[]);
    let first_id = first["snapshot"].as_str().expect("id");

    let with_parent = fx.snapshot(&night2, &["--parent", first_id]);
    let without_parent = fx.snapshot(&night2, &[]);

    let data = with_parent["blocks"]["data"].as_u64().expect("data");
    let new = with_parent["blocks"]["new"].as_u64().expect("new");
    assert!(new >= 700_000 / BLOCK && new < data / 2, "{with_parent}");
    assert_eq!(
        without_parent["blocks"]["new"], 0,
        "a rerun without lineage stores nothing new"
    );
    assert_eq!(without_parent["blocks"]["reused"], data);
    let second_id = with_parent["snapshot"].as_str().expect("id");
    let diff = fx.json(&["snapshot", "diff", first_id, second_id]);
    let changed = diff["changed"].as_array().expect("changed").len() as u64;
    assert!(
        changed >= new && changed < data,
        "{changed} changed, {new} new"
    );
}

#[test]
fn blocks_lists_exactly_the_indexes_written_into_a_qemu_img_image() {
    let fx = Fixture::new();
    fx.init();
    let writes = vec![
        (3 * BLOCK + 10, random_bytes(100, 1)),
        (40 * BLOCK, random_bytes(BLOCK as usize * 2, 2)),
    ];
    let image = fx.qemu_raw_image("disk.raw", 100 * BLOCK, &writes);
    let summary = fx.snapshot(&image, &[]);
    let id = summary["snapshot"].as_str().expect("id");

    let blocks = fx.json(&["snapshot", "blocks", id]);

    let indexes: Vec<u64> = blocks["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(|b| b["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indexes, vec![3, 40, 41]);
    assert_eq!(blocks["volume_size"], 100 * BLOCK);
    assert_eq!(summary["blocks"]["zero"], 97);
    assert_eq!(summary["bytes_read"], 3 * BLOCK, "holes are never read");
}

#[test]
fn an_encrypted_store_needs_its_key_and_hides_the_data() {
    let fx = Fixture::new();
    let key = fx.path("master.key");
    std::fs::write(&key, random_bytes(32, 7)).expect("key");
    let key_arg = key.to_str().expect("path");
    fx.ok(&[
        "--key-file",
        key_arg,
        "store",
        "init",
        "--encrypt",
        "--block-size",
        "64K",
    ]);
    let marker = b"blockyard-secret-marker-".repeat(3000);
    let image = fx.qemu_raw_image("disk.raw", 8 * BLOCK, &[(BLOCK, marker.clone())]);

    let summary = fx.json(&[
        "--key-file",
        key_arg,
        "snapshot",
        "create",
        image.to_str().expect("p"),
    ]);
    let no_key = fx.fails(&["snapshot", "list"]);
    let wrong = fx.path("wrong.key");
    std::fs::write(&wrong, random_bytes(32, 8)).expect("key");
    let wrong_key = fx.fails(&["--key-file", wrong.to_str().expect("p"), "snapshot", "list"]);

    assert!(
        no_key.contains("encrypted") && no_key.contains("--key-file"),
        "{no_key}"
    );
    assert!(wrong_key.contains("does not open"), "{wrong_key}");
    assert_eq!(summary["blocks"]["data"], 2);
    for entry in walk(&fx.store()) {
        let bytes = std::fs::read(&entry).expect("read object");
        assert!(
            !bytes.windows(24).any(|w| w == &marker[..24]),
            "{} holds plaintext",
            entry.display()
        );
    }
}

#[test]
fn passphrase_and_key_command_stores_open_with_their_secret() {
    let fx = Fixture::new();
    fx.command(&[
        "--passphrase-env",
        "YARD_PASS",
        "store",
        "init",
        "--encrypt",
    ])
    .env("YARD_PASS", "correct horse battery staple")
    .output()
    .expect("run");
    let ok = fx
        .command(&["--passphrase-env", "YARD_PASS", "snapshot", "list"])
        .env("YARD_PASS", "correct horse battery staple")
        .output()
        .expect("run");
    let bad = fx
        .command(&["--passphrase-env", "YARD_PASS", "snapshot", "list"])
        .env("YARD_PASS", "wrong")
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!bad.status.success());

    let other = Fixture::new();
    let command = "printf '%s\\n' 0123456789abcdef0123456789abcdef";
    other.ok(&["--key-command", command, "store", "init", "--encrypt"]);
    other.ok(&["--key-command", command, "snapshot", "list"]);
    let failing = other.fails(&["--key-command", "exit 3", "snapshot", "list"]);
    assert!(failing.contains("key command"), "{failing}");
}

#[test]
fn a_named_store_in_the_config_file_is_found_by_name() {
    let fx = Fixture::new();
    let yard = fx.path("frankfurt-yard");
    std::fs::write(
        fx.path("blockyard.toml"),
        format!(
            "default_store = \"frankfurt\"\n[stores.frankfurt]\nurl = \"{}\"\n",
            yard.display()
        ),
    )
    .expect("config");

    let by_name = Command::new(env!("CARGO_BIN_EXE_blockyard"))
        .current_dir(fx.dir.path())
        .env_remove("BLOCKYARD_STORE")
        .args(["--store", "frankfurt", "store", "init"])
        .output()
        .expect("run");
    let by_default = Command::new(env!("CARGO_BIN_EXE_blockyard"))
        .current_dir(fx.dir.path())
        .env_remove("BLOCKYARD_STORE")
        .args(["--json", "store", "info"])
        .output()
        .expect("run");

    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    assert!(yard.join("config").is_file());
    let info: serde_json::Value = serde_json::from_slice(&by_default.stdout).expect("json");
    assert_eq!(info["store"], yard.display().to_string());
}

#[test]
fn without_any_store_setting_the_user_data_directory_is_used() {
    let fx = Fixture::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_blockyard"));
    command
        .current_dir(fx.dir.path())
        .env_remove("BLOCKYARD_STORE")
        .env("XDG_DATA_HOME", fx.path("data"))
        .env("XDG_CONFIG_HOME", fx.path("config"))
        .args(["store", "init"]);

    run_tool(&mut command);

    assert!(fx.path("data/blockyard/store/config").is_file());
}

#[test]
fn the_store_variable_names_the_store() {
    let fx = Fixture::new();
    let yard = fx.path("env-yard");
    let mut command = Command::new(env!("CARGO_BIN_EXE_blockyard"));
    command
        .current_dir(fx.dir.path())
        .env("BLOCKYARD_STORE", &yard)
        .args(["store", "init"]);

    run_tool(&mut command);

    assert!(yard.join("config").is_file());
}

#[test]
fn user_mistakes_get_one_line_errors_that_say_what_to_do() {
    let fx = Fixture::new();
    let image = fx.qemu_raw_image("disk.raw", 4 * BLOCK, &[]);

    let no_store = fx.fails(&["snapshot", "create", image.to_str().expect("p")]);
    fx.init();
    let missing = fx.fails(&["snapshot", "create", "/nonexistent/disk.img"]);
    let directory = fx.fails(&["snapshot", "create", fx.dir.path().to_str().expect("p")]);
    let bad_id = fx.fails(&["snapshot", "show", "snap-xyz"]);
    let unknown = fx.fails(&["snapshot", "show", "snap-0123456789abcdef0123456789abcdef"]);
    let twice = fx.fails(&["store", "init"]);
    let char_device = fx.fails(&["snapshot", "create", "/dev/zero"]);

    assert!(no_store.contains("blockyard store init"), "{no_store}");
    assert!(
        missing.contains("/nonexistent/disk.img") && missing.contains("No such file"),
        "{missing}"
    );
    assert!(directory.contains("is a directory"), "{directory}");
    assert!(bad_id.contains("snap- followed by 32"), "{bad_id}");
    assert!(unknown.contains("not found"), "{unknown}");
    assert!(twice.contains("already exists"), "{twice}");
    assert!(char_device.contains("character device"), "{char_device}");
    for message in [
        no_store,
        missing,
        directory,
        bad_id,
        unknown,
        twice,
        char_device,
    ] {
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
        assert!(message.starts_with("error: "), "{message}");
    }
}

#[test]
fn a_store_from_a_newer_blockyard_is_refused_with_upgrade_advice() {
    let fx = Fixture::new();
    fx.init();
    let config_path = fx.store().join("config");
    let original = std::fs::read_to_string(&config_path).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&original).expect("json");

    config["version"] = 99.into();
    std::fs::write(&config_path, config.to_string()).expect("write");
    let newer = fx.fails(&["snapshot", "list"]);
    let mut config: serde_json::Value = serde_json::from_str(&original).expect("json");
    config["required_features"]
        .as_array_mut()
        .expect("features")
        .push("teleport".into());
    std::fs::write(&config_path, config.to_string()).expect("write");
    let feature = fx.fails(&["snapshot", "list"]);

    assert!(
        newer.contains("version 99") && newer.contains("upgrade"),
        "{newer}"
    );
    assert!(
        feature.contains("teleport") && feature.contains("upgrade"),
        "{feature}"
    );
}

#[test]
fn restore_will_not_overwrite_a_file_unless_forced() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.qemu_raw_image("disk.raw", 4 * BLOCK, &[(0, random_bytes(1000, 3))]);
    let id = fx.snapshot_id(&image);
    let out = fx.path("out.img");
    std::fs::write(&out, b"precious").expect("write");

    let refused = fx.fails(&["restore", &id, out.to_str().expect("p")]);
    let kept = std::fs::read(&out).expect("read");
    fx.ok(&["restore", &id, out.to_str().expect("p"), "--force"]);

    assert!(refused.contains("--force"), "{refused}");
    assert_eq!(kept, b"precious");
    assert_eq!(
        std::fs::read(&out).expect("read"),
        std::fs::read(&image).expect("read")
    );
}

#[test]
fn check_with_read_data_names_the_snapshot_a_damaged_block_breaks() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.qemu_raw_image("disk.raw", 8 * BLOCK, &[(2 * BLOCK, random_bytes(5000, 4))]);
    let id = fx.snapshot_id(&image);
    let block = walk(&fx.store().join("blocks")).pop().expect("one block");
    let mut bytes = std::fs::read(&block).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&block, bytes).expect("tamper");

    fx.ok(&["check"]);
    let output = fx.run(&["--json", "check", "--read-data"]);

    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["damaged_snapshots"][0], id);
    let restore = fx.fails(&["restore", &id, fx.path("out").to_str().expect("p")]);
    assert!(restore.contains("damaged"), "{restore}");
}

#[test]
fn a_killed_snapshot_commits_nothing_and_a_rerun_reuses_what_landed() {
    let fx = Fixture::new();
    fx.init();
    // Enough incompressible data (48 MiB) that the snapshot is still running when killed.
    let data: Vec<(u64, Vec<u8>)> = (0..48)
        .map(|i| (i * 16 * BLOCK, random_bytes(16 * BLOCK as usize, i + 10)))
        .collect();
    let image = fx.qemu_raw_image("big.raw", 800 * BLOCK, &data);
    let mut child = fx
        .command(&["snapshot", "create", image.to_str().expect("p")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while walk(&fx.store().join("blocks")).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");

    let listed = fx.json(&["snapshot", "list"]);
    let rerun = fx.snapshot(&image, &[]);

    assert_eq!(
        listed["snapshots"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    let reused = rerun["blocks"]["reused"].as_u64().expect("reused");
    assert!(reused >= 1, "nothing reused: {rerun}");
    assert_eq!(rerun["blocks"]["data"], 768);
    fx.ok(&["check", "--read-data"]);
}

#[test]
fn ctrl_c_stops_with_exit_code_130_and_commits_nothing() {
    let fx = Fixture::new();
    fx.init();
    let data: Vec<(u64, Vec<u8>)> = (0..48)
        .map(|i| (i * 4 * BLOCK, random_bytes(4 * BLOCK as usize, i + 60)))
        .collect();
    let image = fx.qemu_raw_image("big.raw", 200 * BLOCK, &data);
    let child = fx
        .command(&["snapshot", "create", image.to_str().expect("p")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while walk(&fx.store().join("blocks")).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    run_tool(Command::new("kill").arg("-INT").arg(child.id().to_string()));
    let output = child.wait_with_output().expect("wait");

    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        // The snapshot won the race and finished before the signal arrived: then it must be
        // committed whole.
        assert_eq!(
            fx.json(&["snapshot", "list"])["snapshots"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    } else {
        assert_eq!(output.status.code(), Some(130), "{stderr}");
        assert!(
            stderr.contains("interrupted") && stderr.contains("reused"),
            "{stderr}"
        );
        assert_eq!(
            fx.json(&["snapshot", "list"])["snapshots"]
                .as_array()
                .map(Vec::len),
            Some(0)
        );
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_leaves_the_store_usable() {
    let fx = Fixture::new();
    let mount = fx.store();
    std::fs::create_dir_all(&mount).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let _unmount = Unmount(mount.clone());
    fx.init();
    let data: Vec<(u64, Vec<u8>)> = (0..4)
        .map(|i| (i * 32 * BLOCK, random_bytes(32 * BLOCK as usize, i + 90)))
        .collect();
    let image = fx.qemu_raw_image("big.raw", 160 * BLOCK, &data);

    let full = fx.fails(&["snapshot", "create", image.to_str().expect("p")]);
    let small = fx.qemu_raw_image("small.raw", 4 * BLOCK, &[(0, random_bytes(100, 1))]);
    let listed = fx.json(&["snapshot", "list"]);

    assert!(full.contains("disk is full"), "{full}");
    assert_eq!(full.trim_end().lines().count(), 1, "{full}");
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(0));
    // Deleting the half-written blocks makes room; the store itself was never damaged.
    std::fs::remove_dir_all(mount.join("blocks")).expect("clean");
    fx.snapshot(&small, &[]);
    fx.ok(&["check", "--read-data"]);
}

#[test]
fn delete_removes_one_snapshot_and_keeps_the_others_readable() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.qemu_raw_image("disk.raw", 4 * BLOCK, &[(0, random_bytes(9000, 5))]);
    let first = fx.snapshot_id(&image);
    let second = fx.snapshot_id(&image);

    fx.ok(&["snapshot", "delete", &first]);

    let listed = fx.json(&["snapshot", "list"]);
    let ids: Vec<&str> = listed["snapshots"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["snapshot"].as_str())
        .collect();
    assert_eq!(ids, vec![second.as_str()]);
    assert!(
        fx.fails(&["snapshot", "show", &first])
            .contains("not found")
    );
    fx.ok(&["restore", &second, fx.path("out").to_str().expect("p")]);
}

#[test]
fn a_loop_block_device_is_snapshotted_and_restored_in_place() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.ext4_image("night1.img", 16, 5);
    let target = fx.qemu_raw_image("target.raw", 16 << 20, &[(0, random_bytes(1 << 20, 6))]);
    let Some(source_device) = LoopDevice::attach(&image) else {
        eprintln!("skipped: attaching a loop device needs root and a loop driver");
        return;
    };
    let target_device = LoopDevice::attach(&target).expect("second loop device");

    let summary = fx.snapshot(&source_device.0, &[]);
    let id = summary["snapshot"].as_str().expect("id");
    fx.ok(&["restore", id, target_device.0.to_str().expect("p")]);
    drop(target_device);

    assert_eq!(summary["size"], 16 << 20);
    // The target's old random megabyte must be gone where the image has zeros.
    assert_eq!(
        std::fs::read(&target).expect("target"),
        std::fs::read(&image).expect("image")
    );
}

/// A loop device attached to a file, detached on drop.
struct LoopDevice(std::path::PathBuf);

impl LoopDevice {
    fn attach(file: &std::path::Path) -> Option<Self> {
        let output = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let path = String::from_utf8(output.stdout).ok()?;
        Some(Self(path.trim().into()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn a_damaged_commit_record_is_listed_as_damaged_and_can_be_deleted() {
    let fx = Fixture::new();
    fx.init();
    let image = fx.qemu_raw_image("disk.raw", 4 * BLOCK, &[(0, random_bytes(500, 9))]);
    let good = fx.snapshot_id(&image);
    let bad = fx.snapshot_id(&image);
    std::fs::write(fx.store().join("snapshots").join(&bad), b"garbage").expect("damage");

    let listed = fx.json(&["snapshot", "list"]);
    fx.ok(&["snapshot", "delete", &bad]);
    let after = fx.json(&["snapshot", "list"]);

    let rows = listed["snapshots"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["snapshot"], good.as_str());
    assert_eq!(rows[1]["snapshot"], bad.as_str());
    assert!(
        rows[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("damaged")),
        "{listed}"
    );
    assert_eq!(after["snapshots"].as_array().map(Vec::len), Some(1));
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
