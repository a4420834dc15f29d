//! The layer zip that `scripts/build-layer` writes (`layer/dist/egress-warden-x86_64.zip`):
//! its exact layout, modes and determinism, a binary that runs on every Lambda runtime
//! (x86_64, glibc 2.17 symbols at most), and the SAM `makefile` build of the same layer.
//!
//! The zip's central directory is read here with std; entry contents are inflated by
//! python3's zipfile (std has no inflate). The ELF's symbol-version needs are read the way
//! the dynamic loader reads them (PT_DYNAMIC -> DT_VERNEED), and cross-checked with
//! `objdump -T` where binutils is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use warden_tests::exclusive;
use warden_tests::warden::workspace_root;

const MAX_GLIBC: (u32, u32) = (2, 17);

fn zip_path() -> PathBuf {
    let p = workspace_root().join("layer/dist/egress-warden-x86_64.zip");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-layer first (scripts/test does)",
        p.display()
    );
    p
}

// ---- zip ------------------------------------------------------------------------------------

#[derive(Debug)]
struct Entry {
    name: String,
    made_by_os: u8,
    mode: u32,
    method: u16,
    dos_time: u16,
    dos_date: u16,
    size: u32,
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Central-directory entries, in archive order.
fn zip_entries(zip: &[u8]) -> Vec<Entry> {
    let eocd = (0..=zip.len().saturating_sub(22))
        .rev()
        .find(|&i| u32le(zip, i) == 0x0605_4b50)
        .expect("no end-of-central-directory record: not a zip");
    let count = u16le(zip, eocd + 10) as usize;
    let mut at = u32le(zip, eocd + 16) as usize;
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(u32le(zip, at), 0x0201_4b50, "bad central directory entry");
        let made_by = u16le(zip, at + 4);
        let name_len = u16le(zip, at + 28) as usize;
        let extra_len = u16le(zip, at + 30) as usize;
        let comment_len = u16le(zip, at + 32) as usize;
        out.push(Entry {
            name: String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap(),
            made_by_os: (made_by >> 8) as u8,
            mode: u32le(zip, at + 38) >> 16,
            method: u16le(zip, at + 10),
            dos_time: u16le(zip, at + 12),
            dos_date: u16le(zip, at + 14),
            size: u32le(zip, at + 24),
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    out
}

/// An entry's uncompressed bytes, via python3's zipfile.
fn zip_read(zip: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(zip)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 is needed to inflate zip entries");
    assert!(
        out.status.success(),
        "python3 could not read {name} from the zip"
    );
    out.stdout
}

#[test]
fn zip_has_exactly_the_two_entries_with_mode_0755() {
    let zip = std::fs::read(zip_path()).unwrap();
    let entries = zip_entries(&zip);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["egress-warden-wrapper", "extensions/egress-warden"],
        "layer zip must hold exactly these two files (sorted), no directories"
    );
    for e in &entries {
        assert_eq!(
            e.made_by_os, 3,
            "{}: not made by Unix, modes would be lost",
            e.name
        );
        assert_eq!(
            e.mode, 0o100755,
            "{}: mode {:o}, want regular file 0755",
            e.name, e.mode
        );
        assert_eq!(e.method, 8, "{}: not deflated", e.name);
        // Deterministic: fixed 1980-01-01 00:00:00 timestamps.
        assert_eq!(
            (e.dos_date, e.dos_time),
            (0x21, 0),
            "{}: timestamp not fixed",
            e.name
        );
        assert!(e.size > 0, "{} is empty", e.name);
    }
}

#[test]
fn zip_wrapper_is_byte_identical_to_the_source() {
    let in_zip = zip_read(&zip_path(), "egress-warden-wrapper");
    let source = std::fs::read(workspace_root().join("layer/egress-warden-wrapper")).unwrap();
    assert!(
        in_zip == source,
        "the wrapper in the zip differs from layer/egress-warden-wrapper: run scripts/build-layer"
    );
}

// ---- ELF ------------------------------------------------------------------------------------

struct Elf<'a> {
    b: &'a [u8],
    loads: Vec<(u64, u64, u64)>, // (vaddr, offset, filesz)
}

impl Elf<'_> {
    fn off(&self, vaddr: u64) -> usize {
        let (va, off, _) = self
            .loads
            .iter()
            .find(|(va, _, sz)| vaddr >= *va && vaddr < va + sz)
            .unwrap_or_else(|| panic!("address {vaddr:#x} is in no PT_LOAD segment"));
        (vaddr - va + off) as usize
    }
    fn cstr(&self, at: usize) -> String {
        let end = self.b[at..].iter().position(|&c| c == 0).unwrap() + at;
        String::from_utf8_lossy(&self.b[at..end]).into_owned()
    }
}

struct DynInfo {
    interp: Option<String>,
    needed: Vec<String>,
    /// library -> version names needed from it
    versions: BTreeMap<String, Vec<String>>,
}

fn read_elf(b: &[u8]) -> DynInfo {
    assert!(b.len() > 64 && &b[..4] == b"\x7fELF", "not an ELF file");
    assert_eq!(b[4], 2, "not a 64-bit ELF");
    assert_eq!(b[5], 1, "not little-endian");
    let e_type = u16le(b, 16);
    assert!(
        e_type == 2 || e_type == 3,
        "not an executable (e_type {e_type})"
    );
    assert_eq!(u16le(b, 18), 62, "e_machine is not x86_64 (EM_X86_64 = 62)");
    let phoff = u64le(b, 32) as usize;
    let phentsize = u16le(b, 54) as usize;
    let phnum = u16le(b, 56) as usize;
    let mut elf = Elf { b, loads: vec![] };
    let mut dynamic = None;
    let mut interp = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (p_type, p_offset, p_vaddr, p_filesz) = (
            u32le(b, ph),
            u64le(b, ph + 8),
            u64le(b, ph + 16),
            u64le(b, ph + 32),
        );
        match p_type {
            1 => elf.loads.push((p_vaddr, p_offset, p_filesz)),
            2 => dynamic = Some((p_offset as usize, p_filesz as usize)),
            3 => interp = Some(elf.cstr(p_offset as usize)),
            _ => {}
        }
    }
    let (dyn_off, dyn_size) =
        dynamic.expect("no PT_DYNAMIC: not a dynamically linked glibc binary");
    let (mut strtab, mut verneed, mut verneednum, mut needed_offs) = (None, None, 0, vec![]);
    for i in 0..dyn_size / 16 {
        let d = dyn_off + i * 16;
        let (tag, val) = (u64le(b, d), u64le(b, d + 8));
        match tag {
            0 => break,
            1 => needed_offs.push(val),
            5 => strtab = Some(val),
            0x6fff_fffe => verneed = Some(val),
            0x6fff_ffff => verneednum = val,
            _ => {}
        }
    }
    let strtab = elf.off(strtab.expect("no DT_STRTAB"));
    let needed = needed_offs
        .iter()
        .map(|o| elf.cstr(strtab + *o as usize))
        .collect();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(vn) = verneed {
        let mut at = elf.off(vn);
        for _ in 0..verneednum {
            // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
            let cnt = u16le(b, at + 2);
            let file = elf.cstr(strtab + u32le(b, at + 4) as usize);
            let mut aux = at + u32le(b, at + 8) as usize;
            for _ in 0..cnt {
                // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                let name = elf.cstr(strtab + u32le(b, aux + 8) as usize);
                versions.entry(file.clone()).or_default().push(name);
                let next = u32le(b, aux + 12) as usize;
                if next == 0 {
                    break;
                }
                aux += next;
            }
            let next = u32le(b, at + 12) as usize;
            if next == 0 {
                break;
            }
            at += next;
        }
    }
    DynInfo {
        interp,
        needed,
        versions,
    }
}

/// "GLIBC_2.17" -> (2, 17); None for other version names.
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let v = name.strip_prefix("GLIBC_")?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

#[test]
fn extension_is_x86_64_elf_needing_at_most_glibc_2_17() {
    let zip = zip_path();
    let bin = zip_read(&zip, "extensions/egress-warden");
    let info = read_elf(&bin);

    assert_eq!(
        info.interp.as_deref(),
        Some("/lib64/ld-linux-x86-64.so.2"),
        "the extension must use glibc's x86_64 loader"
    );
    // Only glibc (and libgcc_s, which every runtime image has): no OpenSSL or other library
    // that a runtime image may lack.
    let allowed = [
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
    ];
    for lib in &info.needed {
        assert!(
            allowed.contains(&lib.as_str()),
            "the extension needs {lib}, which is not part of glibc: {:?}",
            info.needed
        );
    }
    assert!(
        info.needed.iter().any(|l| l == "libc.so.6"),
        "{:?}",
        info.needed
    );

    let mut max = (0, 0);
    for (lib, names) in &info.versions {
        for name in names {
            if let Some(v) = glibc_version(name) {
                assert!(
                    v <= MAX_GLIBC,
                    "{lib} symbol version {name} is newer than GLIBC_2.17: the binary would not \
                     load on provided.al2 (build it with scripts/build-layer, which links \
                     against glibc 2.17)"
                );
                max = max.max(v);
            } else {
                assert!(
                    name.starts_with("GCC_") || name.starts_with("GLIBC_2"),
                    "{lib}: unexpected symbol version {name}"
                );
            }
        }
    }
    assert!(
        max >= (2, 2),
        "no GLIBC_ version needs found at all: {:?}",
        info.versions
    );

    // Cross-check with binutils where it is installed.
    let tmp = std::env::temp_dir().join(format!("ew-layer-elf-{}", std::process::id()));
    std::fs::write(&tmp, &bin).unwrap();
    let objdump = Command::new("objdump").arg("-T").arg(&tmp).output();
    let _ = std::fs::remove_file(&tmp);
    if let Ok(out) = objdump {
        assert!(out.status.success(), "objdump -T failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut seen = 0;
        for word in text.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
            if let Some(v) = glibc_version(word) {
                seen += 1;
                assert!(v <= MAX_GLIBC, "objdump -T: {word} > GLIBC_2.17");
            }
        }
        assert!(seen > 0, "objdump -T listed no GLIBC_ symbols");
    }
}

#[test]
fn sam_makefile_build_lays_out_the_layer() {
    // What `sam build` does for `BuildMethod: makefile`: copy ContentUri (layer/) to a scratch
    // directory, then `make --makefile <source>/Makefile build-EgressWardenLayer` there with
    // ARTIFACTS_DIR set. The build itself is scripts/build-layer (a no-op when up to date).
    // Even up to date, cargo and zig are a heavy neighbour for timed tests.
    let _turn = exclusive();
    let zip = zip_path();
    let root = workspace_root();
    let work = std::env::temp_dir().join(format!("ew-sam-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let scratch = work.join("scratch");
    let artifacts = work.join("artifacts");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::copy(root.join("layer/Makefile"), scratch.join("Makefile")).unwrap();

    let out = Command::new("make")
        .arg("--makefile")
        .arg(root.join("layer/Makefile"))
        .arg("build-EgressWardenLayer")
        .current_dir(&scratch)
        .env("ARTIFACTS_DIR", &artifacts)
        .stdin(Stdio::null())
        .output()
        .expect("make is needed for the SAM makefile build");
    assert!(
        out.status.success(),
        "make build-EgressWardenLayer failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![];
    for dir in [artifacts.clone(), artifacts.join("extensions")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(&artifacts)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = e.metadata().unwrap();
            if meta.is_file() {
                assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{rel}");
                files.push(rel);
            }
        }
    }
    files.sort();
    assert_eq!(files, ["egress-warden-wrapper", "extensions/egress-warden"]);
    for name in &files {
        assert!(
            std::fs::read(artifacts.join(name)).unwrap() == zip_read(&zip, name),
            "{name} in ARTIFACTS_DIR differs from the zip's"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
