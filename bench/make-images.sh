#!/usr/bin/env bash
# Builds the pair of disk images that bench/run.sh snapshots: two nights of one CI machine
# image.
#
#   night1.img  a sparse ext4 file system (default 4G) made by `mkfs.ext4 -d` from a tree of
#               real files copied from this machine: executables, documentation, a Python
#               standard library and the two big shared libraries of a Rust toolchain.
#   night2.img  a copy of night 1 changed in place with debugfs, the way a nightly rebuild
#               changes an image: new libraries, rebuilt binaries (each removed and written
#               again with some bytes changed), rewritten text files and a few deletions.
#
# The same machine gives the same file contents, and mkfs gets a fixed UUID, hash seed and
# clock, so two runs on one machine build images with the same data. Images already in
# OUTDIR are reused unless --rebuild is given or they were built with another SIZE.
#
# Usage: bench/make-images.sh [--rebuild] OUTDIR [SIZE]

set -euo pipefail

die() {
    echo "make-images: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 [--rebuild] OUTDIR [SIZE]   (SIZE as mkfs.ext4 takes it, default 4G)" >&2
    exit 2
}

rebuild=0
positional=()
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        -h | --help) usage ;;
        -*) echo "make-images: unknown flag $arg" >&2; usage ;;
        *) positional+=("$arg") ;;
    esac
done
[[ ${#positional[@]} -ge 1 && ${#positional[@]} -le 2 ]] || usage
out=${positional[0]}
size=${positional[1]:-4G}

for tool in mkfs.ext4 debugfs e2fsck cp dd find sort; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y e2fsprogs coreutils)"
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
summary_file=$out/images.txt

# The summary file is written last, so its presence means both images are complete.
if [[ $rebuild -eq 0 && -f $out/night1.img && -f $out/night2.img && -f $summary_file ]] \
    && grep -qx "size $size" "$summary_file"; then
    echo "make-images: reusing the images in $out (--rebuild builds them again)" >&2
    grep -v '^size ' "$summary_file"
    exit 0
fi
rm -f "$summary_file" "$out/night1.img" "$out/night2.img"

tree=$out/tree
scratch=$out/night2-files
rm -rf "$tree" "$scratch"
mkdir -p "$tree" "$scratch"
trap 'rm -rf "$tree" "$scratch"' EXIT

mib() {
    echo $(( ($1 + 524288) / 1048576 ))
}

# Sums the sizes of regular files under the given paths, each inode once.
tree_bytes() {
    find "$@" -type f -printf '%i %s\n' | sort -u | awk '{ s += $2 } END { print s + 0 }'
}

# --- Night 1: a tree of real files ------------------------------------------------------

copy_into_tree() {
    local src=$1 dest=$2
    if [[ ! -e $src ]]; then
        echo "make-images: $src is not on this machine, skipped" >&2
        return 0
    fi
    mkdir -p "$tree/$(dirname "$dest")"
    cp -a "$src" "$tree/$dest"
}

copy_into_tree /usr/bin usr/bin
copy_into_tree /usr/share/doc usr/share/doc
for dir in /usr/lib/python3.[0-9]*; do
    [[ -d $dir ]] && copy_into_tree "$dir" "usr/lib/$(basename "$dir")"
done

# A Rust toolchain's compiler driver and LLVM are the "large binaries" of a CI image.
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
toolchain_lib=$(find "$rustup_home/toolchains" -mindepth 2 -maxdepth 2 -name lib -type d \
    2>/dev/null | sort | head -n 1 || true)
if [[ -n $toolchain_lib ]]; then
    mkdir -p "$tree/opt/rust/lib"
    find "$toolchain_lib" -maxdepth 1 -type f \( -name 'librustc_driver-*.so' -o -name 'libLLVM*' \) \
        -exec cp -a {} "$tree/opt/rust/lib/" \;
else
    echo "make-images: no Rust toolchain under $rustup_home, the image has no large binaries" >&2
fi

tree_total=$(tree_bytes "$tree")
[[ $tree_total -ge $((200 * 1048576)) ]] \
    || die "only $(mib "$tree_total") MiB of files found on this machine; the images need 200+"
echo "make-images: night 1 tree holds $(mib "$tree_total") MiB of files" >&2

# A fixed UUID, hash seed and clock keep the file-system metadata the same from run to run.
E2FSPROGS_FAKE_TIME=1767225600 mkfs.ext4 -q -F \
    -U 6d1b4c5e-2f7a-4c1e-9b3d-0a5e8f7c6b21 -E hash_seed=0b8a7e2c-5d41-4f6b-a3c9-1e2d3f4a5b6c \
    -d "$tree" "$out/night1.img.part" "$size" >/dev/null || die "mkfs.ext4 failed"
e2fsck -fn "$out/night1.img.part" >/dev/null 2>&1 || die "night 1 image fails e2fsck"

# --- Night 2: the same image changed in place --------------------------------------------

cp --sparse=always "$out/night1.img.part" "$out/night2.img.part"
cmds=$scratch/debugfs.cmds
: >"$cmds"

# debugfs splits its commands on blanks, so only plainly named files take part.
plain_name() {
    [[ $1 =~ ^[A-Za-z0-9._+/-]+$ ]]
}

# New libraries: the largest distinct files of 1..40 MiB from the system library folder
# (not in night 1) until at least 64 MiB are added.
new_count=0
new_bytes=0
echo "mkdir /usr/lib/x86_64-linux-gnu" >>"$cmds"
while read -r bytes _inode path; do
    plain_name "$path" || continue
    echo "write $path /usr/lib/x86_64-linux-gnu/$(basename "$path")" >>"$cmds"
    new_count=$((new_count + 1))
    new_bytes=$((new_bytes + bytes))
    [[ $new_bytes -ge $((64 * 1048576)) ]] && break
done < <(find /usr/lib/x86_64-linux-gnu -maxdepth 2 -type f -size +1M -size -40M \
    -printf '%s %i %p\n' 2>/dev/null | sort -k1,1nr -k3,3 | sort -u -k2,2 -s \
    | sort -k1,1nr -k3,3)
[[ $new_count -gt 0 ]] || die "found no libraries under /usr/lib/x86_64-linux-gnu to add"

# Rebuilt binaries: the compiler driver and the two largest executables are removed and
# written again with 16 bytes changed every 8 MiB (a new version string, changed code).
patch_copy() {
    local src=$1 dest=$2 length offset
    cp "$src" "$dest"
    length=$(stat -c %s "$dest")
    for ((offset = 4096; offset < length; offset += 8388608)); do
        printf 'blockyard-night-2' | dd of="$dest" bs=1 seek="$offset" conv=notrunc status=none
    done
}

rewritten_count=0
rewritten_bytes=0
rewrite_binary() {
    local rel=$1 copy
    plain_name "$rel" || return 0
    copy=$scratch/bin-$rewritten_count
    patch_copy "$tree/$rel" "$copy"
    printf 'rm /%s\nwrite %s /%s\n' "$rel" "$copy" "$rel" >>"$cmds"
    rewritten_count=$((rewritten_count + 1))
    rewritten_bytes=$((rewritten_bytes + $(stat -c %s "$copy")))
}

while read -r rel; do
    rewrite_binary "$rel"
done < <(cd "$tree" && find opt/rust/lib -name 'librustc_driver-*.so' -type f 2>/dev/null | sort)
while read -r rel; do
    rewrite_binary "$rel"
done < <(cd "$tree" && find usr/bin -maxdepth 1 -type f -printf '%s %p\n' \
    | sort -k1,1nr -k2,2 | head -n 2 | cut -d' ' -f2)

# Rewritten text: the first 40 Python modules over 8 KiB get a new header line (which
# shifts everything after it) and an edit, like a package upgrade.
text_count=0
text_bytes=0
while read -r rel; do
    plain_name "$rel" || continue
    copy=$scratch/text-$text_count
    { echo "# rebuilt on night 2 by blockyard's benchmark"; sed 's/return /return  /' "$tree/$rel"; } >"$copy"
    printf 'rm /%s\nwrite %s /%s\n' "$rel" "$copy" "$rel" >>"$cmds"
    text_count=$((text_count + 1))
    text_bytes=$((text_bytes + $(stat -c %s "$copy")))
done < <(cd "$tree" && find usr/lib -path '*/python3*' -name '*.py' -type f -size +8k 2>/dev/null \
    | sort | head -n 40)

# Deleted: the changelogs of the first 20 documentation folders that have a plain one.
deleted_count=0
while read -r rel; do
    plain_name "$rel" || continue
    echo "rm /$rel" >>"$cmds"
    deleted_count=$((deleted_count + 1))
done < <(cd "$tree" && find usr/share/doc -mindepth 2 -maxdepth 2 -name 'changelog.Debian.gz' \
    -type f | sort | head -n 20)

# debugfs exits 0 even when a command fails; anything on stderr but its banner is an error.
if ! debugfs -w -f "$cmds" "$out/night2.img.part" >"$scratch/debugfs.out" 2>"$scratch/debugfs.err"
then
    trap - EXIT
    die "debugfs failed, see $scratch/debugfs.err"
fi
if grep -v '^debugfs [0-9]' "$scratch/debugfs.err" | grep -q .; then
    trap - EXIT
    die "debugfs reported errors: $(grep -v '^debugfs [0-9]' "$scratch/debugfs.err" | head -n 3)"
fi
e2fsck -fn "$out/night2.img.part" >/dev/null 2>&1 || die "night 2 image fails e2fsck"

mv "$out/night1.img.part" "$out/night1.img"
mv "$out/night2.img.part" "$out/night2.img"

data_mib() {
    echo $(( $(stat -c '%b * %B' "$1") / 1048576 ))
}
line="night1: $(mib "$tree_total") MiB of files, $(data_mib "$out/night1.img") MiB allocated in a $size image"
line+="; night2: +$new_count new libraries ($(mib "$new_bytes") MiB),"
line+=" $rewritten_count binaries rewritten ($(mib "$rewritten_bytes") MiB),"
line+=" $text_count text files rewritten ($(( (text_bytes + 1023) / 1024 )) KiB),"
line+=" $deleted_count files deleted, $(data_mib "$out/night2.img") MiB allocated"

# The floor for any store of 512 KiB blocks: night 2's non-zero blocks found nowhere in
# night 1 (compared by digest), counted independently of blockyard.
if command -v python3 >/dev/null; then
    new_blocks=$(python3 - "$out/night1.img" "$out/night2.img" <<'EOF'
import hashlib, os, sys

BLOCK = 512 * 1024
ZERO = bytes(BLOCK)

def blocks(path):
    """Yields the non-zero 512 KiB blocks of a file, skipping holes."""
    with open(path, "rb") as f:
        fd, size, at = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while at < size:
            try:
                data = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                return
            end = os.lseek(fd, data, os.SEEK_HOLE)
            start = data // BLOCK * BLOCK
            for offset in range(max(start, at), end, BLOCK):
                data = os.pread(fd, BLOCK, offset)
                if data != ZERO[:len(data)]:
                    yield data
            at = max(at, (end + BLOCK - 1) // BLOCK * BLOCK)

old = {hashlib.blake2b(b, digest_size=16).digest() for b in blocks(sys.argv[1])}
new = {hashlib.blake2b(b, digest_size=16).digest() for b in blocks(sys.argv[2])} - old
print(len(new))
EOF
    ) || die "counting night 2's new blocks failed"
    line+="; night2 has $new_blocks distinct 512 KiB blocks not in night1"
    line+=" ($(( new_blocks / 2 )) MiB before compression)"
fi
{ echo "size $size"; echo "$line"; } >"$summary_file"
echo "$line"
