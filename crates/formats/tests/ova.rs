//! OVA archives: listing members, reading the descriptor, and opening the disks, with
//! archives made by GNU tar around disks made by qemu-img, and hand-built hostile ones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blockyard_formats::ova::{self, MAX_DESCRIPTOR_LEN, MAX_ENTRIES, MAX_EXTENDED_HEADER_LEN};
use blockyard_formats::{
    ByteSource, DiskReader, ExtentKind, FileResolver, FileSource, Format, FormatError,
    MemorySource, Resolver,
};

const VMDK_URL: &str = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

// ---------------------------------------------------------------------------------------------
// Helpers: tools, descriptors, and a tar writer for archives GNU tar will not make.

fn run(command: &mut Command) {
    let output = command.output().expect("the tool runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn qemu_img(args: &[&str]) {
    run(Command::new("qemu-img").args(args));
}

fn qemu_io(image: &Path, format: &str, commands: &[&str]) {
    let mut command = Command::new("qemu-io");
    command.args(["-f", format]);
    for line in commands {
        command.args(["-c", line]);
    }
    run(command.arg(image));
}

/// A raw disk of `size` bytes with `writes` (qemu-io commands) applied.
fn raw_disk(dir: &Path, name: &str, size: u64, writes: &[&str]) -> PathBuf {
    let path = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        path_str(&path),
        &size.to_string(),
    ]);
    qemu_io(&path, "raw", writes);
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// `tar` over `members` of `dir`, in that order, into `dir/<name>`.
fn tar(dir: &Path, name: &str, format: &str, members: &[&str]) -> PathBuf {
    let mut command = Command::new("tar");
    command
        .current_dir(dir)
        .arg(format!("--format={format}"))
        .args(["-cf", name])
        .args(members);
    run(&mut command);
    dir.join(name)
}

fn file_xml(id: &str, href: &str, size: Option<u64>) -> String {
    let size = size.map_or_else(String::new, |size| format!(r#" ovf:size="{size}""#));
    format!(r#"<File ovf:id="{id}" ovf:href="{href}"{size}/>"#)
}

fn disk_xml(id: &str, file_ref: &str, capacity: u64, format: Option<&str>) -> String {
    let format = format.map_or_else(String::new, |url| format!(r#" ovf:format="{url}""#));
    format!(
        r#"<Disk ovf:diskId="{id}" ovf:fileRef="{file_ref}" ovf:capacity="{capacity}"{format}/>"#
    )
}

fn ovf(files: &[String], disks: &[String]) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    {}
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    {}
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>
</Envelope>
"#,
        files.join("\n    "),
        disks.join("\n    ")
    )
}

/// An OVF naming one raw disk `disk.img` of `size` bytes.
fn one_disk_ovf(size: u64) -> String {
    ovf(
        &[file_xml("file1", "disk.img", Some(size))],
        &[disk_xml("disk1", "file1", size, None)],
    )
}

/// Writes tar archives byte by byte, for names and fields GNU tar refuses to write.
#[derive(Default)]
struct TarWriter {
    bytes: Vec<u8>,
}

impl TarWriter {
    /// A POSIX ustar header: `name` (at most 100 bytes), `typeflag`, `size` in octal.
    fn header(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name); // name
        header[100..108].copy_from_slice(b"0000644\0"); // mode
        header[108..116].copy_from_slice(b"0000000\0"); // uid
        header[116..124].copy_from_slice(b"0000000\0"); // gid
        header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes()); // size
        header[136..148].copy_from_slice(b"00000000000\0"); // mtime
        header[156] = typeflag; // typeflag
        header[257..263].copy_from_slice(b"ustar\0"); // magic
        header[263..265].copy_from_slice(b"00"); // version
        Self::seal(&mut header);
        header
    }

    /// Sets the checksum field: the sum of the header's bytes, the field read as spaces.
    fn seal(header: &mut [u8; 512]) {
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn push_header(&mut self, header: &[u8; 512]) -> &mut Self {
        self.bytes.extend_from_slice(header);
        self
    }

    /// Appends `data` padded to whole blocks.
    fn push_data(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        let padded = self.bytes.len().next_multiple_of(512);
        self.bytes.resize(padded, 0);
        self
    }

    fn entry(&mut self, name: &str, typeflag: u8, data: &[u8]) -> &mut Self {
        let header = Self::header(name.as_bytes(), typeflag, data.len() as u64);
        self.push_header(&header).push_data(data)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, b'0', data)
    }

    /// A pax extended header holding `records` (`key=value` pairs).
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // The length counts itself; try the digits until the total agrees.
            let body = key.len() + value.len() + 3;
            let mut length = body + 1;
            while length != body + length.to_string().len() {
                length = body + length.to_string().len();
            }
            data.extend_from_slice(format!("{length} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.entry("PaxHeaders/x", b'x', &data)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.extend_from_slice(&[0u8; 1024]);
        bytes
    }
}

/// Opens nothing: disks must find what they name inside the archive.
struct Refuse;

impl Resolver for Refuse {
    fn open_file(&self, _from: &str, name: &str) -> Result<Arc<dyn ByteSource>, FormatError> {
        panic!("the disk asked for {name:?} outside the archive")
    }

    fn open_backing(
        &self,
        _from: &str,
        name: &str,
        _format: Option<Format>,
        _depth: usize,
    ) -> Result<Box<dyn DiskReader>, FormatError> {
        panic!("the disk asked for backing disk {name:?} outside the archive")
    }
}

fn memory(bytes: Vec<u8>) -> Arc<dyn ByteSource> {
    Arc::new(MemorySource::new("test.ova", bytes))
}

fn file_source(path: &Path) -> Arc<dyn ByteSource> {
    Arc::new(FileSource::open(path).expect("open"))
}

fn open_err(bytes: Vec<u8>) -> FormatError {
    ova::open(memory(bytes)).expect_err("the archive is refused")
}

/// The field a `Corrupt` error names; panics on any other error.
fn corrupt_field(error: &FormatError) -> &'static str {
    match error {
        FormatError::Corrupt { field, format, .. } => {
            assert_eq!(*format, "OVA", "{error}");
            field
        }
        other => panic!("expected a Corrupt error, got {other}"),
    }
}

fn assert_unsupported(error: &FormatError, words: &str) {
    match error {
        FormatError::Unsupported { feature, .. } => {
            assert!(feature.contains(words), "{error}");
        }
        other => panic!("expected an Unsupported error, got {other}"),
    }
}

/// Reads the whole disk and checks every extent: Zero extents read as zeros and the bytes
/// equal `expected`.
fn assert_reads_as(reader: &mut dyn DiskReader, expected: &[u8]) -> Vec<ExtentKind> {
    assert_eq!(reader.size(), expected.len() as u64);
    let mut kinds = Vec::new();
    let mut offset = 0u64;
    while offset < reader.size() {
        let extent = reader.extent_at(offset).expect("extent");
        assert!(
            extent.offset <= offset && extent.end() > offset,
            "{extent:?} at {offset}"
        );
        let end = extent.end().min(reader.size());
        let start = usize::try_from(offset).expect("small");
        let stop = usize::try_from(end).expect("small");
        if extent.kind == ExtentKind::Zero {
            assert!(
                expected[start..stop].iter().all(|&b| b == 0),
                "zero extent {extent:?}"
            );
        }
        let bytes = reader.read_vec(offset, stop - start).expect("read");
        assert!(
            bytes == expected[start..stop],
            "bytes differ in {offset}..{end}"
        );
        kinds.push(extent.kind);
        offset = end;
    }
    kinds
}

/// `qemu-img convert -O raw` of `image`: what a reader of it must return.
fn qemu_raw(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("expected.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "raw",
        path_str(image),
        path_str(&raw),
    ]);
    std::fs::read(raw).expect("read converted")
}

// ---------------------------------------------------------------------------------------------
// Archives made by tar.

#[test]
fn disks_come_back_in_descriptor_order_with_their_member_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_raw = raw_disk(dir.path(), "a.raw", 4 << 20, &["write -P 0x5a 1M 64k"]);
    let a = dir.path().join("a.vmdk");
    let options = ["-o", "subformat=streamOptimized"];
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "vmdk",
        options[0],
        options[1],
        path_str(&a_raw),
        path_str(&a),
    ]);
    let b = raw_disk(dir.path(), "b.img", 1 << 20, &["write -P 0x33 4k 8k"]);
    let a_len = std::fs::metadata(&a).expect("a").len();
    // The descriptor lists b first; the archive holds a first.
    let descriptor = ovf(
        &[
            file_xml("fa", "a.vmdk", Some(a_len)),
            file_xml("fb", "b.img", None),
        ],
        &[
            disk_xml("disk-b", "fb", 1 << 20, None),
            disk_xml("disk-a", "fa", 4 << 20, Some(VMDK_URL)),
        ],
    );
    std::fs::write(dir.path().join("vm.ovf"), descriptor).expect("ovf");
    let ova_path = tar(
        dir.path(),
        "vm.ova",
        "ustar",
        &["vm.ovf", "a.vmdk", "b.img"],
    );

    let archive = ova::open(file_source(&ova_path)).expect("open");

    assert_eq!(archive.descriptor_name, "vm.ovf");
    assert_eq!(archive.manifest_name, None);
    let names: Vec<_> = archive.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["vm.ovf", "a.vmdk", "b.img"]);
    let ids: Vec<_> = archive.disks.iter().map(|d| d.disk_id.as_str()).collect();
    assert_eq!(ids, ["disk-b", "disk-a"]);
    let (disk_b, disk_a) = (&archive.disks[0], &archive.disks[1]);
    assert_eq!((disk_b.href.as_str(), disk_b.format), ("b.img", None));
    assert_eq!(
        (disk_a.href.as_str(), disk_a.format),
        ("a.vmdk", Some(Format::Vmdk))
    );
    assert_eq!(disk_a.capacity, Some(4 << 20));
    assert_eq!(disk_a.file_id.as_deref(), Some("fa"));
    for (disk, file) in [(disk_b, &b), (disk_a, &a)] {
        let expected = std::fs::read(file).expect("read member file");
        assert_eq!(disk.source.len(), expected.len() as u64);
        let window = disk
            .source
            .read_vec(0, expected.len())
            .expect("read window");
        assert!(
            window == expected,
            "{} differs from {}",
            disk.source.name(),
            file.display()
        );
        assert!(
            disk.source
                .name()
                .ends_with(&format!("vm.ova:{}", disk.href))
        );
    }
}

#[test]
fn a_raw_disk_member_reads_as_qemu_converts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 3 << 20;
    let disk = raw_disk(
        dir.path(),
        "disk.img",
        size,
        &["write -P 0x5a 1M 64k", "write -P 7 0 1"],
    );
    std::fs::write(dir.path().join("vm.ovf"), one_disk_ovf(size)).expect("ovf");
    let ova_path = tar(dir.path(), "vm.ova", "ustar", &["vm.ovf", "disk.img"]);

    let archive = ova::open(file_source(&ova_path)).expect("open");
    let mut reader = archive.disks[0].open(&FileResolver).expect("open disk");

    assert_reads_as(&mut *reader, &qemu_raw(&disk));
}

/// A one-disk archive of `image` (named `member` in it) with format URL `url`.
fn one_image_archive(dir: &Path, image: &Path, member: &str, url: Option<&str>) -> PathBuf {
    let size = std::fs::metadata(image).expect("image").len();
    let descriptor = ovf(
        &[file_xml("f", member, Some(size))],
        &[disk_xml("d", "f", 0, url)],
    );
    std::fs::write(dir.join("vm.ovf"), descriptor).expect("ovf");
    tar(dir, "vm.ova", "ustar", &["vm.ovf", member])
}

#[test]
fn a_qcow2_disk_member_reads_as_qemu_converts_it_with_holes_as_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&image), "8M"]);
    qemu_io(
        &image,
        "qcow2",
        &["write -P 0x5a 1M 64k", "write -P 0x21 6M 4k"],
    );
    let url = "http://www.gnome.org/~markmc/qcow-image-format.html";
    let ova_path = one_image_archive(dir.path(), &image, "disk.qcow2", Some(url));

    let archive = ova::open(file_source(&ova_path)).expect("open");
    assert_eq!(archive.disks[0].format, Some(Format::Qcow2));
    let mut reader = archive.disks[0].open(&Refuse).expect("open disk");

    let kinds = assert_reads_as(&mut *reader, &qemu_raw(&image));
    assert!(kinds.contains(&ExtentKind::Zero) && kinds.contains(&ExtentKind::Data));
}

#[test]
fn a_stream_optimized_vmdk_member_reads_as_qemu_converts_it_with_holes_as_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_disk(dir.path(), "disk.raw", 8 << 20, &["write -P 0x5a 1M 64k"]);
    let image = dir.path().join("disk.vmdk");
    let subformat = "subformat=streamOptimized";
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "vmdk",
        "-o",
        subformat,
        path_str(&raw),
        path_str(&image),
    ]);
    let ova_path = one_image_archive(dir.path(), &image, "disk.vmdk", Some(VMDK_URL));

    let archive = ova::open(file_source(&ova_path)).expect("open");
    let mut reader = archive.disks[0].open(&Refuse).expect("open disk");

    let kinds = assert_reads_as(&mut *reader, &qemu_raw(&image));
    assert!(kinds.contains(&ExtentKind::Zero) && kinds.contains(&ExtentKind::Data));
}

#[test]
fn a_disk_labelled_vmdk_that_holds_qcow2_opens_as_qcow2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&image), "1M"]);
    qemu_io(&image, "qcow2", &["write -P 0x77 0 4k"]);
    let ova_path = one_image_archive(dir.path(), &image, "disk.qcow2", Some(VMDK_URL));

    let archive = ova::open(file_source(&ova_path)).expect("open");
    let mut reader = archive.disks[0].open(&Refuse).expect("open disk");

    assert_reads_as(&mut *reader, &qemu_raw(&image));
}

#[test]
fn a_backing_file_named_by_a_disk_member_is_read_from_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path_str(&base), "4M"]);
    qemu_io(&base, "qcow2", &["write -P 0x11 0 1M"]);
    let top = dir.path().join("top.qcow2");
    let backing = ["-b", "base.qcow2", "-F", "qcow2"];
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        backing[0],
        backing[1],
        backing[2],
        backing[3],
        path_str(&top),
    ]);
    qemu_io(&top, "qcow2", &["write -P 0x22 512k 64k"]);
    let descriptor = ovf(
        &[file_xml("t", "top.qcow2", None)],
        &[disk_xml("d", "t", 0, None)],
    );
    std::fs::write(dir.path().join("vm.ovf"), descriptor).expect("ovf");
    let ova_path = tar(
        dir.path(),
        "vm.ova",
        "ustar",
        &["vm.ovf", "top.qcow2", "base.qcow2"],
    );
    let expected = qemu_raw(&top);
    std::fs::remove_file(&base).expect("only the archive's copy remains");

    let archive = ova::open(file_source(&ova_path)).expect("open");
    let mut reader = archive.disks[0].open(&Refuse).expect("open disk");

    assert_reads_as(&mut *reader, &expected);
}

#[test]
fn extent_files_named_by_a_vmdk_descriptor_are_read_from_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.vmdk");
    let subformat = "subformat=monolithicFlat";
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        subformat,
        path_str(&image),
        "2M",
    ]);
    qemu_io(&image, "vmdk", &["write -P 0x3c 64k 8k"]);
    let descriptor = ovf(
        &[file_xml("f", "disk.vmdk", None)],
        &[disk_xml("d", "f", 0, None)],
    );
    std::fs::write(dir.path().join("vm.ovf"), descriptor).expect("ovf");
    let members = ["vm.ovf", "disk.vmdk", "disk-flat.vmdk"];
    let ova_path = tar(dir.path(), "vm.ova", "ustar", &members);
    let expected = qemu_raw(&image);

    let archive = ova::open(file_source(&ova_path)).expect("open");
    let mut reader = archive.disks[0].open(&Refuse).expect("open disk");

    assert_reads_as(&mut *reader, &expected);
}

#[test]
fn the_dispatcher_opens_an_archive_of_one_disk_as_that_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 1 << 20;
    let disk = raw_disk(dir.path(), "disk.img", size, &["write -P 0x11 8k 4k"]);
    std::fs::write(dir.path().join("vm.ovf"), one_disk_ovf(size)).expect("ovf");
    let ova_path = tar(dir.path(), "vm.ova", "ustar", &["vm.ovf", "disk.img"]);
    let source = file_source(&ova_path);
    assert_eq!(
        blockyard_formats::detect(&*source).expect("detect"),
        Format::Ova
    );

    let mut reader = blockyard_formats::open(source, None, &FileResolver).expect("open");

    assert_reads_as(&mut *reader, &std::fs::read(disk).expect("read"));
}

#[test]
fn the_dispatcher_refuses_an_archive_of_two_disks_and_names_the_importer() {
    let dir = tempfile::tempdir().expect("tempdir");
    raw_disk(dir.path(), "a.img", 65536, &["write -P 1 0 4k"]);
    raw_disk(dir.path(), "b.img", 65536, &["write -P 2 0 4k"]);
    let descriptor = ovf(
        &[file_xml("fa", "a.img", None), file_xml("fb", "b.img", None)],
        &[
            disk_xml("a", "fa", 65536, None),
            disk_xml("b", "fb", 65536, None),
        ],
    );
    std::fs::write(dir.path().join("vm.ovf"), descriptor).expect("ovf");
    let ova_path = tar(dir.path(), "vm.ova", "ustar", &["vm.ovf", "a.img", "b.img"]);

    let error = blockyard_formats::open(file_source(&ova_path), None, &FileResolver)
        .expect_err("two disks");

    assert_unsupported(&error, "2 disks");
    assert!(error.to_string().contains("OVA importer"), "{error}");
}

#[test]
fn gnu_and_pax_archives_find_members_with_long_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long_dir = "a-directory-name-long-enough-that-the-path-passes-one-hundred-bytes";
    std::fs::create_dir(dir.path().join(long_dir)).expect("mkdir");
    let href = format!("{long_dir}/and-a-disk-file-name-that-is-long-as-well.img");
    let disk = raw_disk(dir.path(), &href, 65536, &["write -P 0x42 4k 4k"]);
    let descriptor = ovf(
        &[file_xml("f", &href, Some(65536))],
        &[disk_xml("d", "f", 65536, None)],
    );
    std::fs::write(dir.path().join("vm.ovf"), descriptor).expect("ovf");
    let expected = std::fs::read(&disk).expect("read");

    for format in ["gnu", "posix", "ustar"] {
        let name = format!("{format}.ova");
        let ova_path = tar(dir.path(), &name, format, &["vm.ovf", &href]);

        let archive = ova::open(file_source(&ova_path)).expect(format);

        assert_eq!(archive.disks.len(), 1, "{format}");
        let window = archive.disks[0]
            .source
            .read_vec(0, expected.len())
            .expect("read");
        assert!(window == expected, "{format}: the member window differs");
    }
}

/// Writes `vm.ovf`, a manifest of `manifest_line` and a raw disk, and tars them.
fn archive_with_manifest(dir: &Path, manifest: &str) -> PathBuf {
    raw_disk(dir, "disk.img", 65536, &["write -P 9 0 4k"]);
    std::fs::write(dir.join("vm.ovf"), one_disk_ovf(65536)).expect("ovf");
    std::fs::write(dir.join("vm.mf"), manifest).expect("mf");
    tar(dir, "vm.ova", "ustar", &["vm.ovf", "vm.mf", "disk.img"])
}

fn digest(tool: &str, file: &Path) -> String {
    let output = Command::new(tool).arg(file).output().expect("digest tool");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    text.split_whitespace().next().expect("digest").to_owned()
}

#[test]
fn a_manifest_holding_the_descriptors_digest_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ovf_path = dir.path().join("vm.ovf");
    std::fs::write(&ovf_path, one_disk_ovf(65536)).expect("ovf");
    for (tool, algorithm) in [("sha256sum", "SHA256"), ("sha1sum", "SHA1")] {
        let line = format!("{algorithm}(vm.ovf)= {}\n", digest(tool, &ovf_path));

        let archive =
            ova::open(file_source(&archive_with_manifest(dir.path(), &line))).expect(algorithm);

        assert_eq!(archive.manifest_name.as_deref(), Some("vm.mf"));
        assert_eq!(archive.disks.len(), 1);
    }
}

#[test]
fn a_descriptor_that_disagrees_with_its_manifest_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = format!("SHA256(vm.ovf)= {}\n", "ab".repeat(32));

    let error = ova::open(file_source(&archive_with_manifest(dir.path(), &line)))
        .expect_err("wrong digest");

    assert_eq!(corrupt_field(&error), "manifest digest");
}

#[test]
fn an_archive_cut_short_is_refused_naming_the_size_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    raw_disk(dir.path(), "disk.img", 1 << 20, &["write -P 0x5a 0 64k"]);
    std::fs::write(dir.path().join("vm.ovf"), one_disk_ovf(1 << 20)).expect("ovf");
    let ova_path = tar(dir.path(), "vm.ova", "ustar", &["vm.ovf", "disk.img"]);
    let mut bytes = std::fs::read(&ova_path).expect("read");
    bytes.truncate(bytes.len() / 2);

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "size");
}

// ---------------------------------------------------------------------------------------------
// Hand-built archives: one test per kind of damage.

/// A valid archive of `vm.ovf` naming one raw disk and the disk, as a writer to extend.
fn valid_archive(data: &[u8]) -> TarWriter {
    let mut tar = TarWriter::default();
    tar.file("vm.ovf", one_disk_ovf(data.len() as u64).as_bytes())
        .file("disk.img", data);
    tar
}

#[test]
fn a_hand_built_archive_reads_back_its_disk() {
    let data: Vec<u8> = (0..8192u32)
        .map(|i| u8::try_from(i % 251).expect("byte"))
        .collect();
    let descriptor_len = one_disk_ovf(8192).len() as u64;

    let archive = ova::open(memory(valid_archive(&data).finish())).expect("open");
    let mut reader = archive.disks[0].open(&FileResolver).expect("open disk");

    let disk_offset = 512 + descriptor_len.next_multiple_of(512) + 512;
    assert_eq!(archive.members[1].data_offset, disk_offset);
    assert_reads_as(&mut *reader, &data);
}

#[test]
fn member_names_that_climb_out_of_the_archive_are_refused() {
    for name in [
        "../evil.img",
        "a/../../evil.img",
        "/etc/evil.img",
        "C:\\evil.img",
    ] {
        let bytes = valid_archive(b"disk").file(name, b"x").finish();

        let error = open_err(bytes);

        assert_eq!(corrupt_field(&error), "name", "{name}");
        assert!(error.to_string().contains("evil.img"), "{error}");
    }
}

#[test]
fn a_nul_byte_in_a_pax_path_is_refused() {
    let bytes = valid_archive(b"disk")
        .pax(&[("path", b"disk.img\0.ovf")])
        .file("other", b"x")
        .finish();

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "name");
    assert!(error.to_string().contains("NUL"), "{error}");
}

#[test]
fn a_pax_path_names_the_member_after_it() {
    let long = format!("{}/disk.img", "d".repeat(150));
    let descriptor = ovf(
        &[file_xml("f", &long, Some(4))],
        &[disk_xml("d", "f", 4, None)],
    );
    let bytes = TarWriter::default()
        .file("vm.ovf", descriptor.as_bytes())
        .pax(&[("path", long.as_bytes())])
        .file("short-name", b"disk")
        .finish();

    let archive = ova::open(memory(bytes)).expect("open");

    assert_eq!(
        archive.disks[0].source.read_vec(0, 4).expect("read"),
        b"disk"
    );
}

#[test]
fn a_member_that_appears_twice_is_refused() {
    let bytes = valid_archive(b"disk").file("./disk.img", b"other").finish();

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "name");
    assert!(error.to_string().contains("twice"), "{error}");
}

#[test]
fn a_member_size_past_the_end_of_the_archive_is_refused() {
    let mut tar = valid_archive(b"disk");
    tar.push_header(&TarWriter::header(b"big.img", b'0', 1 << 32));

    let error = open_err(tar.finish());

    assert_eq!(corrupt_field(&error), "size");
}

#[test]
fn a_damaged_header_checksum_is_refused() {
    let mut bytes = valid_archive(b"disk").finish();
    bytes[10] ^= 1;

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "chksum");
}

#[test]
fn a_non_octal_size_field_is_refused() {
    let mut header = TarWriter::header(b"vm.ovf", b'0', 0);
    header[124..136].copy_from_slice(b"0000000009x\0");
    TarWriter::seal(&mut header);
    let bytes = TarWriter::default().push_header(&header).finish();

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "size");
}

#[test]
fn an_archive_of_more_entries_than_the_limit_is_refused() {
    let mut tar = valid_archive(b"disk");
    for index in 0..MAX_ENTRIES {
        tar.file(&format!("f{index}"), b"");
    }

    let error = open_err(tar.finish());

    assert_eq!(corrupt_field(&error), "header");
    assert!(error.to_string().contains("entries"), "{error}");
}

#[test]
fn a_pax_header_above_the_limit_is_refused() {
    let huge = vec![b'a'; usize::try_from(MAX_EXTENDED_HEADER_LEN).expect("small")];
    let bytes = valid_archive(b"disk")
        .pax(&[("comment", &huge)])
        .file("other", b"x")
        .finish();

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "size");
}

#[test]
fn a_gnu_sparse_member_is_unsupported() {
    let bytes = valid_archive(b"disk")
        .entry("sparse.img", b'S', b"")
        .finish();

    let error = open_err(bytes);

    assert_unsupported(&error, "sparse");
}

#[test]
fn a_descriptor_above_the_size_limit_is_refused() {
    let limit = usize::try_from(MAX_DESCRIPTOR_LEN).expect("small");
    let mut descriptor = one_disk_ovf(4).into_bytes();
    descriptor.resize(limit + 1, b' ');
    let bytes = TarWriter::default()
        .file("vm.ovf", &descriptor)
        .file("disk.img", b"disk")
        .finish();

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "descriptor");
    assert!(error.to_string().contains("limit"), "{error}");
}

#[test]
fn an_archive_without_a_descriptor_or_with_two_is_refused() {
    let error = open_err(TarWriter::default().file("disk.img", b"disk").finish());
    assert_eq!(corrupt_field(&error), "descriptor");

    let error = open_err(
        valid_archive(b"disk")
            .file("other.OVF", b"<Envelope/>")
            .finish(),
    );
    assert_eq!(corrupt_field(&error), "descriptor");
    assert!(error.to_string().contains("ambiguous"), "{error}");
}

#[test]
fn a_descriptor_that_is_not_xml_is_refused() {
    let bytes = TarWriter::default()
        .file("vm.ovf", b"<Envelope><References></Envelope>")
        .finish();

    assert_eq!(corrupt_field(&open_err(bytes)), "descriptor");
}

/// An archive of a descriptor with `files` and `disks` and a 4-byte member `disk.img`.
fn archive_of(files: &[String], disks: &[String]) -> Vec<u8> {
    TarWriter::default()
        .file("vm.ovf", ovf(files, disks).as_bytes())
        .file("disk.img", b"disk")
        .finish()
}

#[test]
fn a_disk_whose_file_ref_names_no_file_is_refused() {
    let bytes = archive_of(
        &[file_xml("f", "disk.img", None)],
        &[disk_xml("d", "missing", 4, None)],
    );

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "Disk ovf:fileRef");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn a_chunked_disk_file_is_unsupported() {
    let file = r#"<File ovf:id="f" ovf:href="disk.img" ovf:chunkSize="2"/>"#.to_owned();
    let bytes = archive_of(&[file], &[disk_xml("d", "f", 4, None)]);

    assert_unsupported(&open_err(bytes), "chunkSize");
}

#[test]
fn a_gzip_compressed_disk_file_is_unsupported_with_advice() {
    let file = r#"<File ovf:id="f" ovf:href="disk.img" ovf:compression="gzip"/>"#.to_owned();
    let bytes = archive_of(&[file], &[disk_xml("d", "f", 4, None)]);

    let error = open_err(bytes);

    assert_unsupported(&error, "gzip");
    assert!(error.to_string().contains("gunzip"), "{error}");
}

#[test]
fn a_disk_file_at_a_url_is_refused_as_outside_the_archive() {
    let bytes = archive_of(
        &[file_xml("f", "http://example.com/disk.img", None)],
        &[disk_xml("d", "f", 4, None)],
    );

    let error = open_err(bytes);

    assert_unsupported(&error, "outside the archive");
    assert!(
        error.to_string().contains("http://example.com/disk.img"),
        "{error}"
    );
}

#[test]
fn hrefs_that_name_no_member_or_climb_out_are_refused() {
    for href in ["other.img", "../disk.img", "/disk.img"] {
        let bytes = archive_of(&[file_xml("f", href, None)], &[disk_xml("d", "f", 4, None)]);

        let error = open_err(bytes);

        assert_eq!(corrupt_field(&error), "File ovf:href", "{href}");
    }
}

#[test]
fn a_percent_encoded_href_finds_its_member() {
    let descriptor = ovf(
        &[file_xml("f", "my%20disk.img", Some(4))],
        &[disk_xml("d", "f", 4, None)],
    );
    let bytes = TarWriter::default()
        .file("vm.ovf", descriptor.as_bytes())
        .file("./my disk.img", b"disk")
        .finish();

    let archive = ova::open(memory(bytes)).expect("open");

    assert_eq!(
        archive.disks[0].source.read_vec(0, 4).expect("read"),
        b"disk"
    );
}

#[test]
fn a_file_size_that_disagrees_with_the_member_is_refused() {
    let bytes = archive_of(
        &[file_xml("f", "disk.img", Some(5))],
        &[disk_xml("d", "f", 4, None)],
    );

    assert_eq!(corrupt_field(&open_err(bytes)), "File ovf:size");
}

#[test]
fn a_link_member_cannot_be_a_disk() {
    let bytes = TarWriter::default()
        .file("vm.ovf", one_disk_ovf(0).as_bytes())
        .entry("disk.img", b'2', b"")
        .finish();

    let error = open_err(bytes);

    assert_eq!(corrupt_field(&error), "File ovf:href");
    assert!(error.to_string().contains("not a file"), "{error}");
}

#[test]
fn repeated_file_and_disk_ids_are_refused() {
    let file = file_xml("f", "disk.img", None);
    let error = open_err(archive_of(
        &[file.clone(), file.clone()],
        &[disk_xml("d", "f", 4, None)],
    ));
    assert_eq!(corrupt_field(&error), "File ovf:id");

    let disk = disk_xml("d", "f", 4, None);
    let error = open_err(archive_of(&[file], &[disk.clone(), disk]));
    assert_eq!(corrupt_field(&error), "Disk ovf:diskId");
}

#[test]
fn a_capacity_in_unknown_units_is_refused() {
    let disk = r#"<Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="4"
        ovf:capacityAllocationUnits="furlongs"/>"#
        .to_owned();
    let bytes = archive_of(&[file_xml("f", "disk.img", None)], &[disk]);

    assert_eq!(corrupt_field(&open_err(bytes)), "Disk ovf:capacity");
}

#[test]
fn a_blank_disk_reads_as_zeros_of_its_capacity() {
    let disk = r#"<Disk ovf:diskId="scratch" ovf:capacity="2"
        ovf:capacityAllocationUnits="byte * 2^20"/>"#
        .to_owned();
    let bytes = archive_of(&[], &[disk]);

    let archive = ova::open(memory(bytes)).expect("open");
    let blank = &archive.disks[0];
    let mut reader = blank.open(&FileResolver).expect("open blank");

    assert!(blank.is_blank());
    assert_eq!(blank.capacity, Some(2 << 20));
    let kinds = assert_reads_as(&mut *reader, &vec![0u8; 2 << 20]);
    assert_eq!(kinds, [ExtentKind::Zero]);
}

#[test]
fn an_ova_inside_an_ova_is_refused() {
    let inner = valid_archive(b"disk").finish();
    let descriptor = ovf(
        &[file_xml("f", "inner.ova", None)],
        &[disk_xml("d", "f", 4, None)],
    );
    let bytes = TarWriter::default()
        .file("vm.ovf", descriptor.as_bytes())
        .file("inner.ova", &inner)
        .finish();
    let archive = ova::open(memory(bytes)).expect("the listing is fine");

    let error = archive.disks[0].open(&FileResolver).expect_err("nested");

    assert_unsupported(&error, "inside an OVA");
}
