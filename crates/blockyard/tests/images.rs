//! Import and export end to end: images made by qemu-img in every format import to the
//! same blocks as the raw original, exports pass qemu-img's own checks, and a qcow2
//! overlay's snapshot reads only what the overlay wrote.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, pseudo_text, run_tool};
use serde_json::Value;

/// The store's block size in these tests (`Fixture::init`).
const BLOCK: u64 = 64 << 10;

fn qemu_img(args: &[&str]) {
    run_tool(Command::new("qemu-img").args(args));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Converts `raw` to `format` with `options` (as `-o` takes them) into `name`.
fn convert(fx: &Fixture, raw: &Path, name: &str, format: &str, options: &[&str]) -> PathBuf {
    let out = fx.path(name);
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", format];
    if !options.is_empty() {
        args.push("-o");
    }
    let joined = options.join(",");
    if !options.is_empty() {
        args.push(&joined);
    }
    args.push(path_str(raw));
    args.push(path_str(&out));
    qemu_img(&args);
    out
}

fn import(fx: &Fixture, image: &Path, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["import", path_str(image), "--name", name];
    args.extend_from_slice(extra);
    fx.json(&args)
}

fn first_snapshot(document: &Value) -> (String, Value) {
    let snapshot = document["snapshots"][0].clone();
    let id = snapshot["snapshot"]
        .as_str()
        .expect("snapshot id")
        .to_owned();
    (id, snapshot)
}

/// Asserts two snapshots hold the same disk, block for block.
fn assert_same_disk(fx: &Fixture, first: &str, second: &str, what: &str) {
    let a = fx.json(&["snapshot", "show", first]);
    let b = fx.json(&["snapshot", "show", second]);
    assert_eq!(a["size"], b["size"], "{what}: sizes differ");
    let diff = fx.json(&["snapshot", "diff", first, second]);
    assert_eq!(
        diff["changed"],
        Value::Array(Vec::new()),
        "{what}: blocks differ"
    );
}

/// A raw ext4 image with a hole at the end and a zero-filled region written as data.
fn source_image(fx: &Fixture) -> PathBuf {
    let image = fx.ext4_image("source.img", 48, 7);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("grow");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; 1 << 20], 50 << 20).expect("zeros");
    std::os::unix::fs::FileExt::write_all_at(&file, &pseudo_text(300_000, 3), 60 << 20)
        .expect("tail data");
    image
}

#[test]
fn images_qemu_img_makes_in_every_format_import_to_the_raw_images_blocks() {
    let fx = Fixture::new();
    fx.init();
    let raw = source_image(&fx);
    let (raw_id, raw_snapshot) = first_snapshot(&import(&fx, &raw, "raw", &[]));
    assert_eq!(raw_snapshot["size"], 64 << 20);

    let cases: &[(&str, &str, &[&str])] = &[
        ("v2.qcow2", "qcow2", &["compat=0.10"]),
        ("v3.qcow2", "qcow2", &["compat=1.1", "cluster_size=4096"]),
        (
            "l2.qcow2",
            "qcow2",
            &["extended_l2=on", "cluster_size=128k"],
        ),
        ("zstd.qcow2", "qcow2", &["compression_type=zstd"]),
        ("sparse.vmdk", "vmdk", &["subformat=monolithicSparse"]),
        ("stream.vmdk", "vmdk", &["subformat=streamOptimized"]),
        ("flat.vmdk", "vmdk", &["subformat=monolithicFlat"]),
        ("split.vmdk", "vmdk", &["subformat=twoGbMaxExtentSparse"]),
        (
            "dynamic.vhd",
            "vpc",
            &["subformat=dynamic", "force_size=on"],
        ),
        ("fixed.vhd", "vpc", &["subformat=fixed", "force_size=on"]),
        ("dynamic.vhdx", "vhdx", &["subformat=dynamic"]),
        ("fixed.vhdx", "vhdx", &["subformat=fixed"]),
    ];
    for (name, format, options) in cases {
        let image = convert(&fx, &raw, name, format, options);
        let document = import(&fx, &image, name, &[]);
        let (id, snapshot) = first_snapshot(&document);
        assert_same_disk(&fx, &raw_id, &id, name);
        assert_eq!(
            snapshot["blocks"]["new"], 0,
            "{name}: an import with no lineage stores nothing the store has"
        );
        assert_eq!(
            document["snapshots"].as_array().map(Vec::len),
            Some(1),
            "{name}"
        );
    }

    // Compressed clusters, made by `convert -c`.
    let compressed = fx.path("compressed.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        path_str(&raw),
        path_str(&compressed),
    ]);
    let (id, _) = first_snapshot(&import(&fx, &compressed, "compressed", &[]));
    assert_same_disk(&fx, &raw_id, &id, "compressed qcow2");
}

#[test]
fn exports_in_every_format_pass_qemu_img_check_and_compare() {
    let fx = Fixture::new();
    fx.init();
    let raw = source_image(&fx);
    let (id, _) = first_snapshot(&import(&fx, &raw, "raw", &[]));

    let cases: &[(&str, &[&str], &str, bool)] = &[
        ("out.raw", &["--format", "raw"], "raw", false),
        ("out.qcow2", &[], "qcow2", true),
        ("out-c.qcow2", &["--compress"], "qcow2", true),
        ("out.vmdk", &[], "vmdk", true),
        (
            "out-s.vmdk",
            &["--subformat", "streamOptimized"],
            "vmdk",
            true,
        ),
        ("out.vhd", &[], "vpc", false),
        ("out-f.vhd", &["--subformat", "fixed"], "vpc", false),
        ("out.vhdx", &[], "vhdx", true),
    ];
    for (name, options, qemu_format, checkable) in cases {
        let out = fx.path(name);
        let mut args = vec!["export", id.as_str(), path_str(&out)];
        args.extend_from_slice(options);
        let summary = fx.json(&args);
        assert_eq!(summary["size"], 64 << 20, "{name}");
        if *checkable {
            qemu_img(&["check", "-q", "-f", qemu_format, path_str(&out)]);
        }
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            qemu_format,
            path_str(&raw),
            path_str(&out),
        ]);

        // And blockyard reads back what it wrote.
        let (back, _) = first_snapshot(&import(&fx, &out, name, &[]));
        assert_same_disk(&fx, &id, &back, name);
    }

    // Holes stay holes: the sparse exports take far less space than the disk.
    let allocated = common::allocated(&fx.path("out.qcow2"));
    assert!(
        allocated < 40 << 20,
        "out.qcow2 allocates {allocated} bytes"
    );
}

#[test]
fn stream_friendly_formats_export_to_standard_output() {
    let fx = Fixture::new();
    fx.init();
    let raw = source_image(&fx);
    let (id, _) = first_snapshot(&import(&fx, &raw, "raw", &[]));
    for (format, subformat, qemu_format) in [
        ("vmdk", "streamOptimized", "vmdk"),
        ("qcow2", "", "qcow2"),
        ("vhd", "dynamic", "vpc"),
    ] {
        let mut args = vec!["export", id.as_str(), "-", "--format", format];
        if !subformat.is_empty() {
            args.extend(["--subformat", subformat]);
        }
        let output = fx.run(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let out = fx.path(&format!("stdout.{format}"));
        std::fs::write(&out, &output.stdout).expect("write");
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            qemu_format,
            path_str(&raw),
            path_str(&out),
        ]);
    }

    let refused = fx.fails(&[
        "export",
        id.as_str(),
        "-",
        "--format",
        "qcow2",
        "--compress",
    ]);
    assert!(refused.contains("file output"), "{refused}");
}

/// A base image snapshotted, and a qcow2 overlay on it with `writes` applied by qemu-io.
fn overlay(fx: &Fixture, size_mib: u64, writes: &[&str]) -> (PathBuf, String, PathBuf) {
    let base = fx.path(&format!("base-{size_mib}.raw"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        path_str(&base),
        &format!("{size_mib}M"),
    ]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&base)
        .expect("open");
    for i in 0..16u64 {
        std::os::unix::fs::FileExt::write_all_at(&file, &pseudo_text(200_000, i), i << 20)
            .expect("write base");
    }
    let (base_id, _) = first_snapshot(&import(fx, &base, "base", &[]));
    let top = fx.path(&format!("top-{size_mib}.qcow2"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        path_str(&base),
        "-F",
        "raw",
        path_str(&top),
    ]);
    for write in writes {
        run_tool(Command::new("qemu-io").args(["-f", "qcow2", "-c", write, path_str(&top)]));
    }
    (base, base_id, top)
}

#[test]
fn a_qcow2_overlay_snapshot_reads_only_what_the_overlay_wrote() {
    let fx = Fixture::new();
    fx.init();
    let writes = [
        "write -P 0x5a 1M 64k",
        "write -P 0x33 3200k 8k",
        "write -z 8M 128k",
    ];
    for size_mib in [64u64, 1024] {
        let (_, base_id, top) = overlay(&fx, size_mib, &writes);
        let summary = fx.snapshot(&top, &["--parent", &base_id]);
        // Three touched blocks (64 KiB, a partial one, and two zeroed): at most four blocks
        // are read whatever the disk's size.
        let read = summary["bytes_read"].as_u64().expect("bytes_read");
        assert!(read <= 4 * BLOCK, "{size_mib} MiB disk: read {read} bytes");
        let id = summary["snapshot"].as_str().expect("id");

        // It holds exactly what qemu reads through the overlay.
        let flat = fx.path(&format!("flat-{size_mib}.raw"));
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            "raw",
            path_str(&top),
            path_str(&flat),
        ]);
        let (full_id, _) = first_snapshot(&import(&fx, &flat, "flat", &[]));
        assert_same_disk(&fx, &full_id, id, "overlay snapshot");
        assert!(read > 0);
    }
}

#[test]
fn a_snapshot_stands_in_for_a_backing_file_this_machine_lacks() {
    let fx = Fixture::new();
    fx.init();
    let (base, base_id, top) = overlay(&fx, 64, &["write -P 0x77 5M 256k"]);
    let flat = fx.path("flat.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "raw",
        path_str(&top),
        path_str(&flat),
    ]);
    std::fs::remove_file(&base).expect("remove base");

    let missing = fx.fails(&["import", path_str(&top), "--name", "top"]);
    assert!(missing.contains("base-64.raw"), "{missing}");

    let (id, _) = first_snapshot(&import(
        &fx,
        &top,
        "top",
        &["--backing-snapshot", base_id.as_str()],
    ));
    let (full_id, _) = first_snapshot(&import(&fx, &flat, "flat", &[]));
    assert_same_disk(&fx, &full_id, &id, "chain ending in a snapshot");
}

#[test]
fn an_ova_becomes_one_snapshot_per_disk_in_ovf_order() {
    let fx = Fixture::new();
    fx.init();
    let first = fx.qemu_raw_image("first.raw", 8 << 20, &[(0, pseudo_text(100_000, 1))]);
    let second = fx.qemu_raw_image("second.raw", 4 << 20, &[(1 << 20, pseudo_text(50_000, 2))]);
    convert(
        &fx,
        &first,
        "disk-a.vmdk",
        "vmdk",
        &["subformat=streamOptimized"],
    );
    convert(
        &fx,
        &second,
        "disk-b.vmdk",
        "vmdk",
        &["subformat=streamOptimized"],
    );
    // The OVF lists disk-b first; the tar holds disk-a first.
    let ovf = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="file-a" ovf:href="disk-a.vmdk"/>
    <File ovf:id="file-b" ovf:href="disk-b.vmdk"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="system" ovf:fileRef="file-b" ovf:capacity="4194304"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:diskId="data" ovf:fileRef="file-a" ovf:capacity="8388608"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A VM</Info></VirtualSystem>
</Envelope>
"#;
    std::fs::write(fx.path("vm.ovf"), ovf).expect("ovf");
    run_tool(Command::new("tar").current_dir(fx.dir.path()).args([
        "--format=ustar",
        "-cf",
        "vm.ova",
        "vm.ovf",
        "disk-a.vmdk",
        "disk-b.vmdk",
    ]));
    let (first_id, _) = first_snapshot(&import(&fx, &first, "first", &[]));
    let (second_id, _) = first_snapshot(&import(&fx, &second, "second", &[]));

    let document = import(&fx, &fx.path("vm.ova"), "vm", &[]);
    assert_eq!(document["format"], "ova");
    let snapshots = document["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[0]["device"], "system");
    assert_eq!(snapshots[1]["device"], "data");
    let system = snapshots[0]["snapshot"].as_str().expect("id");
    let data = snapshots[1]["snapshot"].as_str().expect("id");
    assert_same_disk(&fx, &second_id, system, "system disk");
    assert_same_disk(&fx, &first_id, data, "data disk");
}

#[test]
fn a_damaged_image_is_refused_with_the_field_at_fault_and_the_store_is_untouched() {
    let fx = Fixture::new();
    fx.init();
    let raw = fx.qemu_raw_image("disk.raw", 8 << 20, &[(0, pseudo_text(100_000, 1))]);
    let image = convert(&fx, &raw, "disk.qcow2", "qcow2", &[]);
    let mut bytes = std::fs::read(&image).expect("read");
    // Header field l1_size (offset 36) set to 2^31 - 1 entries: far past the file.
    bytes[36..40].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let bad = fx.path("bad.qcow2");
    std::fs::write(&bad, &bytes).expect("write");

    let error = fx.fails(&["import", path_str(&bad), "--name", "bad"]);
    assert!(
        error.contains("qcow2") && error.contains("bad.qcow2"),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{error}");

    let truncated = fx.path("short.qcow2");
    std::fs::write(&truncated, &std::fs::read(&image).expect("read")[..1000]).expect("write");
    let error = fx.fails(&["import", path_str(&truncated), "--name", "short"]);
    assert!(error.contains("short.qcow2"), "{error}");

    let list = fx.json(&["snapshot", "list"]);
    assert_eq!(list["snapshots"], Value::Array(Vec::new()));
    fx.ok(&["check"]);
}
