//! Host tests for `diskforge-layers` (root: mounts overlayfs, creates device nodes and
//! `trusted.*` xattrs). Trees are compared in full: paths, types, modes, owners, xattrs,
//! device numbers, symlink targets and contents (mtimes are not compared there).
//!
//! The interop suite (`interop_*`) builds OCI images with umoci and skopeo (gzip, zstd,
//! uncompressed; `umoci insert`; hand-made layers through `umoci raw add-layer`) and compares
//! every route of ours (mount read-only and with an upper dir after copy-up, unpack + a
//! kernel overlay, squash, run) with `umoci unpack` of the same image: names, types, modes,
//! owners, mtimes (ns) of files and directories, xattrs, symlink targets, hardlink groups
//! and content hashes. It cannot compare directories an image implies with nothing below
//! (umoci gives them the time of the unpack; ours get a fixed default, tested apart), old
//! GNU sparse members and zstd layers through umoci (umoci 0.4.7 reads neither: the zstd
//! copy is compared with the unpack of the original).
//!
//! Not covered here: unprivileged use (`userxattr` overlays), and registry pulls (the OCI
//! layouts come from `umoci`/`skopeo` locally).

// Test helpers panic on failure by design (the lint's test exemption covers only #[test] fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use diskforge_layers as dl;
use diskforge_testutil::{KernelState, require_root, scratch_dir};

// ---------------------------------------------------------------------------------------
// Helpers

/// Builds layer tarballs entry by entry (including ones the `tar` crate refuses to write).
struct TarMaker {
    b: tar::Builder<Vec<u8>>,
}

impl TarMaker {
    fn new() -> Self {
        TarMaker {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(ty: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn dir(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, uid, gid);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    fn file(mut self, path: &str, content: &str, mode: u32) -> Self {
        self = self.file_owned(path, content, mode, 0, 0);
        self
    }

    fn file_owned(mut self, path: &str, content: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(content.len() as u64);
        self.b
            .append_data(&mut h, path, content.as_bytes())
            .unwrap();
        self
    }

    fn xattr(mut self, name: &str, value: &str) -> Self {
        let key = format!("SCHILY.xattr.{name}");
        self.b
            .append_pax_extensions([(key.as_str(), value.as_bytes())])
            .unwrap();
        self
    }

    fn link(mut self, ty: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(ty, 0o777, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn node(mut self, ty: tar::EntryType, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(ty, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// A FIFO whose device-number fields are NUL bytes (as some writers leave them).
    fn fifo_nul_dev(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Fifo, 0o644, 0, 0);
        h.set_path(path).unwrap();
        if let Some(g) = h.as_gnu_mut() {
            g.dev_major = [0; 8];
            g.dev_minor = [0; 8];
        }
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    /// An entry with raw name/link bytes and a declared size, bypassing all checks.
    fn raw(mut self, ty: tar::EntryType, name: &[u8], link: &[u8], size: u64, data: &[u8]) -> Self {
        let mut h = Self::header(ty, 0o644, 0, 0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_size(size);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn write(self, path: &Path) -> PathBuf {
        let bytes = self.b.into_inner().unwrap();
        std::fs::write(path, bytes).unwrap();
        path.to_owned()
    }
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]) {
            v.truncate(len);
            out.push((name, v));
        }
    }
    out.sort();
    out
}

/// Every path under `root` with its type, mode, owner, device, xattrs and content digest.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let content = if ft.is_file() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            format!("{:016x}", h.finish())
        } else if ft.is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_char_device() || ft.is_block_device() {
            format!(
                "dev {}:{}",
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else {
            String::new()
        };
        let mode = if ft.is_symlink() { 0 } else { m.mode() };
        let key = format!("/{}", rel.display());
        out.insert(
            key,
            format!(
                "{mode:o} {}:{} {:?} {content}",
                m.uid(),
                m.gid(),
                xattrs(&p)
            ),
        );
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn assert_same_tree(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, what: &str) {
    let only_a: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).collect();
    let only_b: Vec<_> = b.iter().filter(|(k, v)| a.get(*k) != Some(v)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "{what}: trees differ\nleft only: {only_a:#?}\nright only: {only_b:#?}"
    );
}

fn no_mounts_under(dir: &Path) {
    let now = KernelState::capture();
    assert!(
        now.mounts_under(dir).is_empty(),
        "leaked mounts: {:?}",
        now.mounts_under(dir)
    );
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn mkdirs(dirs: &[&Path]) {
    for d in dirs {
        std::fs::create_dir_all(d).unwrap();
    }
}

/// The seed's example: a base layer and a second layer that adds a file, deletes another and
/// replaces a directory (opaque).
fn seed_layers(dir: &Path) -> (PathBuf, PathBuf) {
    let base = TarMaker::new()
        .dir("./", 0o755, 0, 0)
        .dir("etc/", 0o755, 0, 0)
        .xattr("user.origin", "base")
        .file("etc/motd", "hello\n", 0o644)
        .file("etc/old", "to be deleted\n", 0o644)
        .dir("etc/conf.d/", 0o755, 0, 0)
        .file("etc/conf.d/a.conf", "a\n", 0o644)
        .file("etc/conf.d/b.conf", "b\n", 0o644)
        .dir("home/user/", 0o700, 1000, 1000)
        .file_owned("home/user/.profile", "PS1=$\n", 0o600, 1000, 1000)
        .file("bin/tool", "v1\n", 0o755)
        .link(tar::EntryType::Link, "bin/tool2", "bin/tool")
        .link(tar::EntryType::Symlink, "bin/motd", "../etc/motd")
        .link(tar::EntryType::Symlink, "bin/abs", "/etc/motd")
        .node(tar::EntryType::Char, "dev/null", 1, 3)
        .node(tar::EntryType::Fifo, "run/fifo", 0, 0)
        .dir("usr/lib/", 0o755, 0, 0)
        .file("usr/lib/libx.so", "elf\n", 0o755)
        .file_owned("srv/setuid", "x\n", 0o4755, 0, 0)
        .write(&dir.join("base.tar"));
    let l2 = TarMaker::new()
        .dir("etc/", 0o755, 0, 0)
        .file("etc/new", "new\n", 0o644)
        .file("etc/.wh.old", "", 0o644)
        .dir("etc/conf.d/", 0o750, 0, 0)
        .file("etc/conf.d/.wh..wh..opq", "", 0o644)
        .file("etc/conf.d/c.conf", "c\n", 0o640)
        .file("bin/tool", "v2\n", 0o755)
        .write(&dir.join("l2.tar"));
    // Compress the second layer to exercise gzip detection.
    let gz = dir.join("l2.tar.gz");
    let mut enc = gzip_writer(&gz);
    std::io::copy(&mut std::fs::File::open(&l2).unwrap(), &mut enc).unwrap();
    drop(enc);
    (base, gz)
}

fn gzip_writer(path: &Path) -> impl std::io::Write {
    // `gzip -n` through the command runner (the tests crate does not depend on flate2).
    struct Gz(PathBuf, Vec<u8>);
    impl std::io::Write for Gz {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Drop for Gz {
        fn drop(&mut self) {
            let out = Cmd::new("gzip")
                .args(["-c", "-n"])
                .stdin_bytes(std::mem::take(&mut self.1))
                .run()
                .unwrap();
            std::fs::write(&self.0, out.stdout).unwrap();
        }
    }
    Gz(path.to_owned(), Vec::new())
}

fn layer_paths(layers: &[dl::Layer]) -> Vec<PathBuf> {
    layers.iter().map(|l| l.path.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
#[ignore = "needs root"]
fn seed_example_merged_view_commit_and_restack() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let (base_tar, l2_tar) = seed_layers(s);
    let base = store.import_tarball(&base_tar).unwrap();
    let l2 = store.import_tarball(&l2_tar).unwrap();
    assert!(!base.reused && !l2.reused);
    assert_eq!(l2.unpacked.as_ref().unwrap().whiteouts, 1);
    assert_eq!(l2.unpacked.as_ref().unwrap().opaque_dirs, 1);
    // Unpacked once: importing again reuses the store's copy.
    assert!(store.import_tarball(&l2_tar).unwrap().reused);

    let (upper, merged) = (s.join("upper"), s.join("merged"));
    let work = dl::default_work_dir(&upper);
    mkdirs(&[&upper, &merged]);
    let lowers = vec![base.path.clone(), l2.path.clone()];
    let m = dl::mount_stack(&lowers, Some((&upper, &work)), &merged).unwrap();

    // The merged view of the two layers.
    assert_eq!(read(merged.join("etc/motd")), "hello\n");
    assert_eq!(read(merged.join("etc/new")), "new\n");
    assert!(
        !merged.join("etc/old").exists(),
        "whiteout must hide etc/old"
    );
    let conf: Vec<_> = std::fs::read_dir(merged.join("etc/conf.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(conf, ["c.conf"], "opaque dir must hide the base's entries");
    assert_eq!(read(merged.join("bin/tool")), "v2\n");
    assert_eq!(
        read(merged.join("bin/tool2")),
        "v1\n",
        "the base's hardlink keeps its content"
    );
    assert_eq!(read(merged.join("bin/motd")), "hello\n");
    let meta = std::fs::metadata(merged.join("home/user/.profile")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1000, 1000, 0o600)
    );
    assert_eq!(
        std::fs::symlink_metadata(merged.join("dev/null"))
            .unwrap()
            .rdev(),
        rustix::fs::makedev(1, 3)
    );
    assert_eq!(
        std::fs::metadata(merged.join("srv/setuid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        xattrs(&merged.join("etc/motd")),
        vec![("user.origin".to_owned(), b"base".to_vec())]
    );
    let base_ino = std::fs::metadata(base.path.join("bin/tool")).unwrap().ino();
    assert_eq!(
        std::fs::metadata(base.path.join("bin/tool2"))
            .unwrap()
            .ino(),
        base_ino
    );

    // Changes in the upper dir, made through the merged view.
    std::fs::write(merged.join("etc/motd"), "changed\n").unwrap();
    std::fs::remove_file(merged.join("etc/new")).unwrap();
    std::fs::remove_dir_all(merged.join("home/user")).unwrap();
    std::fs::remove_dir_all(merged.join("usr")).unwrap();
    std::fs::create_dir(merged.join("usr")).unwrap();
    std::fs::write(merged.join("usr/fresh"), "fresh\n").unwrap();
    std::fs::create_dir(merged.join("opt")).unwrap();
    std::fs::write(merged.join("opt/app"), "app\n").unwrap();
    std::fs::hard_link(merged.join("opt/app"), merged.join("opt/app-link")).unwrap();
    rustix::fs::chown(
        merged.join("opt/app"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
    )
    .unwrap();
    rustix::fs::chmod(
        merged.join("opt/app"),
        rustix::fs::Mode::from_raw_mode(0o640),
    )
    .unwrap();
    rustix::fs::setxattr(
        merged.join("opt/app"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        merged.join("dev/zero"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .unwrap();
    std::os::unix::fs::symlink("app", merged.join("opt/current")).unwrap();
    let want = snapshot(&merged);
    m.teardown().unwrap();
    no_mounts_under(s);

    // diff: what the upper dir changes relative to the lowers.
    let changes: Vec<String> = dl::diff(&lowers, &upper)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect();
    for expected in [
        "C /etc/motd",
        "D /etc/new",
        "D /home/user",
        "D /usr/lib",
        "A /usr/fresh",
        "A /opt",
        "A /opt/app",
        "A /dev/zero",
    ] {
        assert!(
            changes.contains(&expected.to_owned()),
            "missing {expected:?} in {changes:#?}"
        );
    }
    assert!(
        !changes.iter().any(|c| c.contains("/etc/conf.d")),
        "{changes:#?}"
    );

    // Commit, reproducibly.
    let opts = dl::TarOptions {
        compression: dl::Compression::Zstd,
        clamp_mtime: Some(0),
        overwrite: false,
    };
    let c1 = dl::write_layer(&upper, &s.join("l3.tar.zst"), opts).unwrap();
    let c2 = dl::write_layer(&upper, &s.join("l3-again.tar.zst"), opts).unwrap();
    assert_eq!(c1.digest, c2.digest, "commit must be reproducible");
    assert_eq!(
        std::fs::read(s.join("l3.tar.zst")).unwrap(),
        std::fs::read(s.join("l3-again.tar.zst")).unwrap()
    );
    assert!(
        dl::write_layer(&upper, &s.join("l3.tar.zst"), opts).is_err(),
        "refuses to overwrite"
    );
    let l3 = store.import_tarball(&s.join("l3.tar.zst")).unwrap();
    assert_eq!(l3.diff_id.as_deref(), Some(c1.diff_id.as_str()));

    // Re-stacking base + l2 + the committed layer gives the same tree.
    let stack = vec![base.path.clone(), l2.path.clone(), l3.path.clone()];
    let m = dl::mount_stack(&stack, None, &merged).unwrap();
    let got = snapshot(&merged);
    m.teardown().unwrap();
    assert_same_tree(&want, &got, "re-stacked commit");

    // Squash (no mount) gives the same tree too.
    let sq = dl::squash(
        &stack,
        &s.join("flat.tar"),
        dl::TarOptions {
            compression: dl::Compression::None,
            ..Default::default()
        },
    )
    .unwrap();
    let flat = store.import_tarball(&s.join("flat.tar")).unwrap();
    assert_eq!(flat.diff_id.as_deref(), Some(sq.diff_id.as_str()));
    assert_same_tree(&want, &snapshot(&flat.path), "squashed stack");
    no_mounts_under(s);
}

#[test]
#[ignore = "needs root"]
fn umoci_reads_the_layout_we_write() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let (base_tar, l2_tar) = seed_layers(s);
    let base = store.import_tarball(&base_tar).unwrap();
    let l2 = store.import_tarball(&l2_tar).unwrap();
    let layout = s.join("oci");
    let opts = dl::TarOptions {
        clamp_mtime: Some(0),
        ..Default::default()
    };
    // A store dir is an overlay upper dir as far as commit is concerned.
    let img1 = dl::oci::commit_to_layout(&base.path, &layout, "base", None, opts, Some(0)).unwrap();
    assert_eq!(img1.layers, 1);
    let img2 =
        dl::oci::commit_to_layout(&l2.path, &layout, "v2", Some("base"), opts, Some(0)).unwrap();
    assert_eq!(img2.layers, 2);
    assert_eq!(dl::oci::list_refs(&layout).unwrap(), ["base", "v2"]);

    let bundle = s.join("bundle");
    Cmd::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v2", layout.display()))
        .arg(&bundle)
        .run()
        .unwrap();
    let merged = s.join("merged");
    mkdirs(&[&merged]);
    let m = dl::mount_stack(&[base.path.clone(), l2.path.clone()], None, &merged).unwrap();
    let ours = snapshot(&merged);
    m.teardown().unwrap();
    assert_same_tree(
        &ours,
        &snapshot(&bundle.join("rootfs")),
        "umoci unpack of our layout",
    );

    // skopeo agrees with the layout too.
    let inspect = Cmd::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:v2", layout.display()))
        .read()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    // And we read back what we wrote, digests verified.
    let again = store.import_oci(&layout, Some("v2")).unwrap();
    assert_eq!(again.len(), 2);
    no_mounts_under(s);
}

#[test]
#[ignore = "needs root"]
fn we_read_umoci_and_skopeo_layouts() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let layout = s.join("oci");
    let bundle = s.join("bundle");
    let img = format!("{}:t", layout.display());
    Cmd::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout)
        .run()
        .unwrap();
    Cmd::new("umoci")
        .args(["new", "--image", &img])
        .run()
        .unwrap();
    Cmd::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle)
        .run()
        .unwrap();
    let rootfs = bundle.join("rootfs");
    mkdirs(&[
        &rootfs.join("d"),
        &rootfs.join("gone/deeper"),
        &rootfs.join("opq"),
    ]);
    std::fs::write(rootfs.join("a"), "a1\n").unwrap();
    std::fs::write(rootfs.join("d/b"), "b\n").unwrap();
    std::fs::write(rootfs.join("gone/deeper/x"), "x\n").unwrap();
    std::fs::write(rootfs.join("opq/old"), "old\n").unwrap();
    std::os::unix::fs::symlink("/a", rootfs.join("abs-link")).unwrap();
    rustix::fs::chown(
        rootfs.join("d/b"),
        Some(rustix::fs::Uid::from_raw(42)),
        Some(rustix::fs::Gid::from_raw(43)),
    )
    .unwrap();
    Cmd::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle)
        .run()
        .unwrap();
    // A repack replaces the layer on top of the image the bundle came from: unpack again to
    // add a second layer.
    let bundle = s.join("bundle2");
    Cmd::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle)
        .run()
        .unwrap();
    let rootfs = bundle.join("rootfs");
    std::fs::remove_dir_all(rootfs.join("gone")).unwrap();
    std::fs::write(rootfs.join("a"), "a2\n").unwrap();
    std::fs::remove_dir_all(rootfs.join("opq")).unwrap();
    mkdirs(&[&rootfs.join("opq")]);
    std::fs::write(rootfs.join("opq/new"), "new\n").unwrap();
    Cmd::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle)
        .run()
        .unwrap();
    let want = snapshot(&rootfs);

    let store = dl::Store::open(s.join("store")).unwrap();
    let merged = s.join("merged");
    mkdirs(&[&merged]);
    let layers = store.import_oci(&layout, Some("t")).unwrap();
    assert!(layers.len() >= 2, "{layers:?}");
    let m = dl::mount_stack(&layer_paths(&layers), None, &merged).unwrap();
    let got = snapshot(&merged);
    m.teardown().unwrap();
    assert_same_tree(&want, &got, "our stack of umoci's layers");

    // The same image copied by skopeo (recompressed, new digests) reads the same.
    let copy = s.join("copy");
    Cmd::new("skopeo")
        .args([
            "copy",
            &format!("oci:{img}"),
            &format!("oci:{}:t", copy.display()),
        ])
        .run()
        .unwrap();
    let layers = store.import_oci(&copy, Some("t")).unwrap();
    let m = dl::mount_stack(&layer_paths(&layers), None, &merged).unwrap();
    let got = snapshot(&merged);
    m.teardown().unwrap();
    assert_same_tree(&want, &got, "our stack of skopeo's copy");

    // A corrupted blob is refused.
    let blob = &layers.last().unwrap().origin;
    let dl::LayerOrigin::Oci { digest, .. } = blob else {
        panic!("{blob:?}")
    };
    let path = dl::oci::blob_path(&copy, digest).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = dl::Store::open(s.join("store2"))
        .unwrap()
        .import_oci(&copy, Some("t"))
        .unwrap_err();
    assert!(matches!(err, dl::Error::DigestMismatch { .. }), "{err}");
    no_mounts_under(s);
}

#[test]
#[ignore = "needs root"]
fn hostile_tarballs_are_refused() {
    require_root();
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let scratch = scratch_dir();
    let s = scratch.path();
    let outside = s.join("outside");
    mkdirs(&[&outside]);
    std::fs::write(outside.join("secret"), "secret\n").unwrap();
    let store = dl::Store::open(s.join("store")).unwrap();

    let cases: Vec<(&str, TarMaker, &str, &str)> = vec![
        (
            "dotdot",
            TarMaker::new().raw(Regular, b"a/../../outside/evil", b"", 4, b"evil"),
            "a/../../outside/evil",
            "'..'",
        ),
        (
            "absolute",
            TarMaker::new().raw(Regular, b"/tmp/evil", b"", 4, b"evil"),
            "/tmp/evil",
            "absolute",
        ),
        (
            "symlink-escape",
            TarMaker::new().raw(Symlink, b"lib/up", b"../../../outside", 0, b""),
            "lib/up",
            "leads outside the layer",
        ),
        (
            "write-through-symlink",
            TarMaker::new()
                .raw(
                    Symlink,
                    b"etc",
                    s.join("outside").as_os_str().as_encoded_bytes(),
                    0,
                    b"",
                )
                .raw(Regular, b"etc/passwd", b"", 4, b"evil"),
            "etc/passwd",
            "is a symlink",
        ),
        (
            "hardlink-outside",
            TarMaker::new().raw(Link, b"stolen", b"../outside/secret", 0, b""),
            "stolen",
            "hardlink target",
        ),
        (
            "hardlink-absolute",
            TarMaker::new().raw(
                Link,
                b"stolen",
                s.join("outside/secret").as_os_str().as_encoded_bytes(),
                0,
                b"",
            ),
            "stolen",
            "absolute",
        ),
        (
            "hardlink-missing",
            TarMaker::new().raw(Link, b"x", b"not/there", 0, b""),
            "x",
            "not in the layer",
        ),
        (
            "hardlink-through-symlink",
            TarMaker::new().raw(Symlink, b"l", b"/", 0, b"").raw(
                Link,
                b"x",
                b"l/etc/passwd",
                0,
                b"",
            ),
            "x",
            "is a symlink",
        ),
        (
            "huge",
            TarMaker::new().raw(Regular, b"big", b"", 1 << 40, b""),
            "big",
            "exceeds the limit",
        ),
        (
            "dir-dotdot",
            TarMaker::new().raw(Directory, b"../up/", b"", 0, b""),
            "../up/",
            "'..'",
        ),
    ];
    for (name, maker, entry, reason) in cases {
        let tar = maker.write(&s.join(format!("{name}.tar")));
        let err = store.import_tarball(&tar).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_refusal(), "{name}: {msg}");
        assert!(
            msg.contains(&format!("{entry:?}")) && msg.contains(reason),
            "{name}: {msg}"
        );
    }
    // A configurable limit: a 64 KiB file in a store limited to 16 KiB per entry.
    let tar = TarMaker::new()
        .file("f", &"x".repeat(65536), 0o644)
        .write(&s.join("big.tar"));
    let small = dl::Store::open(s.join("store"))
        .unwrap()
        .with_limits(dl::Limits {
            max_entry_size: 16 << 10,
            ..Default::default()
        });
    let err = small.import_tarball(&tar).unwrap_err();
    assert!(
        matches!(
            err,
            dl::Error::TooLarge {
                what: "entry size",
                ..
            }
        ),
        "{err}"
    );
    let small = small.with_limits(dl::Limits {
        max_total_size: 100 << 10,
        ..Default::default()
    });
    let many = (0..3).fold(TarMaker::new(), |t, i| {
        t.file(&format!("f{i}"), &"y".repeat(40 << 10), 0o644)
    });
    let err = small
        .import_tarball(&many.write(&s.join("many.tar")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            dl::Error::TooLarge {
                what: "total size",
                ..
            }
        ),
        "{err}"
    );

    // Nothing was written outside, nothing half-unpacked is left in the store.
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(read(outside.join("secret")), "secret\n");
    assert_eq!(
        std::fs::read_dir(s.join("store/layers")).unwrap().count(),
        0
    );
    assert_eq!(std::fs::read_dir(s.join("store/tmp")).unwrap().count(), 0);
    assert!(!Path::new("/tmp/evil").exists());
}

#[test]
#[ignore = "needs root"]
fn stack_of_200_layers_mounts_with_precedence() {
    require_root();
    const N: usize = 200;
    let scratch = scratch_dir();
    // Long layer paths make the option string far exceed one page.
    let s = scratch
        .path()
        .join("a-rather-long-directory-name-to-push-the-overlay-option-string-past-a-page");
    let mut layers = Vec::new();
    for i in 0..N {
        let d = s.join(format!("layer-{i:03}-padding-padding-padding"));
        mkdirs(&[&d.join("by")]);
        std::fs::write(d.join("top"), format!("{i}\n")).unwrap();
        std::fs::write(d.join(format!("only-{i:03}")), "x").unwrap();
        std::fs::write(d.join("by").join(format!("{}", i % 10)), format!("{i}\n")).unwrap();
        layers.push(d);
    }
    // Layer 150 deletes only-050; layer 199 makes by/ opaque (only its own file remains).
    rustix::fs::mknodat(
        rustix::fs::CWD,
        layers[150].join("only-050"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
    rustix::fs::setxattr(
        layers[N - 1].join("by"),
        dl::OPAQUE_XATTR,
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let option_len: usize = layers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(option_len > 4096, "{option_len}");

    let merged = s.join("merged");
    let upper = s.join("upper");
    mkdirs(&[&merged, &upper]);
    let m = dl::mount_stack(
        &layers,
        Some((&upper, &dl::default_work_dir(&upper))),
        &merged,
    )
    .unwrap();
    assert_eq!(m.method(), "fsconfig");
    assert_eq!(read(merged.join("top")), format!("{}\n", N - 1));
    for i in 0..N {
        assert_eq!(
            merged.join(format!("only-{i:03}")).exists(),
            i != 50,
            "only-{i:03}"
        );
    }
    let by: Vec<_> = std::fs::read_dir(merged.join("by"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(by, ["9"]);
    let view = snapshot(&merged);
    m.teardown().unwrap();
    no_mounts_under(scratch.path());

    // The mount-free merge agrees with the kernel.
    let computed: Vec<String> = dl::merged_tree(&layers)
        .unwrap()
        .iter()
        .map(|e| format!("/{}", e.path.to_string_lossy()))
        .collect();
    let mounted: Vec<String> = view.keys().cloned().collect();
    assert_eq!(computed, mounted);
}

#[test]
#[ignore = "needs root"]
fn run_in_a_chroot_of_the_stack() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let root = s.join("busybox");
    mkdirs(&[&root.join("bin")]);
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for tool in ["sh", "cat", "ls", "mkdir", "grep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    let store = dl::Store::open(s.join("store")).unwrap();
    let (base_tar, _) = seed_layers(s);
    let base = store.import_tarball(&base_tar).unwrap();
    let upper = s.join("upper");
    mkdirs(&[&upper]);
    let opts = dl::RunOptions {
        command: ["/bin/sh", "-c", "cat /etc/motd; grep -c . /proc/mounts >/dev/null && echo proc-ok; ls /sys/kernel >/dev/null && echo sys-ok; echo oops >&2; echo built > /etc/built; exit 3"]
            .map(Into::into)
            .to_vec(),
        upper: Some(upper.clone()),
        scratch: Some(s.to_owned()),
        ..Default::default()
    };
    let mut lines = Vec::new();
    let out = dl::run_in_stack(&[base.path.clone(), root.clone()], &opts, |l| {
        lines.push(l.to_owned())
    })
    .unwrap();
    assert_eq!(out.code, 3);
    assert_eq!(lines, ["hello", "proc-ok", "sys-ok", "oops"]);
    assert_eq!(read(upper.join("etc/built")), "built\n");
    assert!(!upper.join("proc/self").exists());
    // The temporary mount point is gone and nothing stays mounted anywhere.
    assert_eq!(
        std::fs::read_dir(s)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("dflayers-run-"))
            .count(),
        0
    );
    // The mounts lived in a private namespace; none may show up in ours (other tests run in
    // parallel, so only our scratch dir is checked).
    no_mounts_under(s);
}

// ---------------------------------------------------------------------------------------
// Interop: images made by umoci and skopeo, every route compared with `umoci unpack`.

/// A full description of a tree: per path its type and mode, owner, mtime (ns), xattrs
/// (without `trusted.overlay.*`), symlink target or device or sha256 of the content; plus the
/// hardlink groups (paths sharing an inode).
#[derive(Debug, PartialEq, Eq)]
struct Tree {
    entries: BTreeMap<String, String>,
    links: Vec<Vec<String>>,
}

fn sha256_of(p: &Path) -> String {
    let out = Cmd::new("sha256sum").arg(p).read().unwrap();
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

/// Snapshot `root`, leaving out the paths in `skip` (and everything below them).
fn full_tree(root: &Path, skip: &[&str]) -> Tree {
    fn walk(
        root: &Path,
        rel: &Path,
        skip: &[&str],
        out: &mut BTreeMap<String, String>,
        inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
    ) {
        let key = format!("/{}", rel.display());
        if skip.contains(&key.as_str()) {
            return;
        }
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let content = if ft.is_file() {
            sha256_of(&p)
        } else if ft.is_symlink() {
            format!("-> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_char_device() || ft.is_block_device() {
            format!(
                "dev {}:{}",
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else {
            String::new()
        };
        // A symlink's mode bits mean nothing (always 0777 on Linux): keep only its type.
        let mode = if ft.is_symlink() { 0o120000 } else { m.mode() };
        out.insert(
            key.clone(),
            format!(
                "{mode:o} {}:{} mtime={}.{:09} {:?} {content}",
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec(),
                xattrs(&p)
            ),
        );
        if !ft.is_dir() && m.nlink() > 1 {
            inodes.entry((m.dev(), m.ino())).or_default().push(key);
        }
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), skip, out, inodes);
            }
        }
    }
    let mut entries = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    walk(root, Path::new(""), skip, &mut entries, &mut inodes);
    let mut links: Vec<Vec<String>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    links.sort();
    Tree { entries, links }
}

fn assert_same_full(want: &Tree, got: &Tree, what: &str) {
    let mut diffs = Vec::new();
    let keys: std::collections::BTreeSet<&String> =
        want.entries.keys().chain(got.entries.keys()).collect();
    for k in keys {
        let (a, b) = (want.entries.get(k), got.entries.get(k));
        if a != b {
            diffs.push(format!("{k}\n    umoci:    {a:?}\n    dflayers: {b:?}"));
        }
    }
    if want.links != got.links {
        diffs.push(format!(
            "hardlink groups\n    umoci:    {:?}\n    dflayers: {:?}",
            want.links, got.links
        ));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} difference(s) from umoci unpack:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// An OCI image being built with umoci in a layout.
struct Image {
    layout: PathBuf,
    tag: String,
    scratch: PathBuf,
}

impl Image {
    fn new(scratch: &Path, name: &str) -> Image {
        let layout = scratch.join(name);
        Cmd::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout)
            .run()
            .unwrap();
        let img = Image {
            layout,
            tag: "t".into(),
            scratch: scratch.to_owned(),
        };
        Cmd::new("umoci")
            .args(["new", "--image", &img.spec()])
            .run()
            .unwrap();
        img
    }

    /// `LAYOUT:TAG`, as umoci and dflayers name it.
    fn spec(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }

    /// Add a layer with `umoci repack`: unpack, let `edit` change the rootfs, repack.
    fn repack(&self, edit: impl FnOnce(&Path)) {
        let bundle = self.scratch.join("bundle");
        let _ = std::fs::remove_dir_all(&bundle);
        Cmd::new("umoci")
            .args(["unpack", "--image", &self.spec()])
            .arg(&bundle)
            .run()
            .unwrap();
        edit(&bundle.join("rootfs"));
        Cmd::new("umoci")
            .args(["repack", "--image", &self.spec()])
            .arg(&bundle)
            .run()
            .unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
    }

    /// Add the uncompressed layer tarball `tar` verbatim (`umoci raw add-layer`).
    fn add_layer(&self, tar: &Path) {
        Cmd::new("umoci")
            .args(["raw", "add-layer", "--image", &self.spec()])
            .arg(tar)
            .run()
            .unwrap();
    }

    /// `umoci insert SRC DEST` (Go's archive/tar stream, without end blocks).
    fn insert(&self, src: &Path, dest: &str) {
        Cmd::new("umoci")
            .args(["insert", "--image", &self.spec()])
            .arg(src)
            .arg(dest)
            .run()
            .unwrap();
    }

    /// The reference: `umoci unpack`'s rootfs.
    fn umoci_unpack(&self, dest: &Path) -> PathBuf {
        let _ = std::fs::remove_dir_all(dest);
        Cmd::new("umoci")
            .args(["unpack", "--image", &self.spec()])
            .arg(dest)
            .run()
            .unwrap();
        dest.join("rootfs")
    }
}

/// A kernel overlay mounted by hand (`mount -t overlay`), unmounted on drop.
struct KernelOverlay(PathBuf);

impl KernelOverlay {
    fn mount(lowers_base_first: &[PathBuf], target: &Path) -> KernelOverlay {
        let lowerdir: Vec<String> = lowers_base_first
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        Cmd::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lowerdir.join(":")))
            .arg(target)
            .run()
            .unwrap();
        KernelOverlay(target.to_owned())
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(&self.0).run();
    }
}

/// Open every single-link regular file for writing (no write): overlayfs copies it and its
/// parent directories up, which must keep their metadata.
fn copy_up_files(root: &Path) {
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            copy_up_files(&e.path());
        } else if m.is_file() && m.nlink() == 1 {
            drop(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(e.path())
                    .unwrap(),
            );
        }
    }
}

/// The script `run` executes inside the stack (and, for the reference, in a chroot of umoci's
/// rootfs): every path's mode, owner, mtime and link target, and every file's hash, as seen
/// from inside; `touch -r` copies the files up on the way.
const INSIDE: &str = "cd / && /bin/busybox find . -xdev ! -path ./proc ! -path ./sys ! -path ./dev \
    -exec /bin/busybox stat -c '%n %f %u:%g %Y %N' {} + | /bin/busybox sort && \
    /bin/busybox find . -xdev -type f -links 1 -exec /bin/busybox sha256sum {} + | /bin/busybox sort";

/// Compare every route of dflayers with `umoci unpack` for `img`.
fn check_all_routes(s: &Path, img: &str, layout_spec: &str, want_root: &Path, has_busybox: bool) {
    let store = dl::Store::open(s.join("store")).unwrap();
    let want = full_tree(want_root, &[]);
    let layers = store.resolve(layout_spec).unwrap();
    let stack = store.stack(&layers).unwrap();
    let lowers = layer_paths(&stack);
    let merged = s.join("merged");
    mkdirs(&[&merged]);

    // 1. mount, read-only.
    let m = dl::mount_stack(&lowers, None, &merged).unwrap();
    let got = full_tree(&merged, &[]);
    m.teardown().unwrap();
    assert_same_full(&want, &got, &format!("{img}: mount (read-only)"));

    // 2. mount with an upper dir, every file copied up.
    let upper = s.join("upper");
    let work = dl::default_work_dir(&upper);
    let _ = std::fs::remove_dir_all(&upper);
    let _ = std::fs::remove_dir_all(&work);
    let m = dl::mount_stack(&lowers, Some((&upper, &work)), &merged).unwrap();
    copy_up_files(&merged);
    let got = full_tree(&merged, &[]);
    m.teardown().unwrap();
    assert_same_full(&want, &got, &format!("{img}: mount with upper, copied up"));

    // 3. unpack + a kernel overlay mounted by hand from the printed lower dirs.
    let k = KernelOverlay::mount(&lowers, &merged);
    let got = full_tree(&merged, &[]);
    drop(k);
    assert_same_full(&want, &got, &format!("{img}: unpack + mount -t overlay"));

    // 4. squash, read back by umoci (one layer on an empty image).
    let flat = s.join("flat.tar");
    let _ = std::fs::remove_file(&flat);
    dl::squash(
        &lowers,
        &flat,
        dl::TarOptions {
            compression: dl::Compression::None,
            ..Default::default()
        },
    )
    .unwrap();
    let sq = s.join("squashed");
    let _ = std::fs::remove_dir_all(&sq);
    let sq_img = Image::new(s, "squashed");
    sq_img.add_layer(&flat);
    let got_root = sq_img.umoci_unpack(&s.join("squashed-bundle"));
    let got = full_tree(&got_root, &[]);
    assert_same_full(&want, &got, &format!("{img}: squash (unpacked by umoci)"));
    std::fs::remove_dir_all(&sq_img.layout).unwrap();
    std::fs::remove_dir_all(s.join("squashed-bundle")).unwrap();

    // 5. run: the view from inside, then the upper dir it leaves, stacked again.
    if has_busybox {
        let script = [INSIDE.to_owned()]
            .into_iter()
            .map(std::ffi::OsString::from);
        let command: Vec<std::ffi::OsString> = ["/bin/busybox", "sh", "-c"]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain(script)
            .collect();
        let reference = Cmd::new("chroot")
            .arg(want_root)
            .args(&command)
            .read()
            .unwrap();
        let run_upper = s.join("run-upper");
        let _ = std::fs::remove_dir_all(&run_upper);
        let _ = std::fs::remove_dir_all(dl::default_work_dir(&run_upper));
        let mut lines = Vec::new();
        let out = dl::run_in_stack(
            &lowers,
            &dl::RunOptions {
                command: command.clone(),
                upper: Some(run_upper.clone()),
                scratch: Some(s.to_owned()),
                ..Default::default()
            },
            |l| lines.push(l.to_owned()),
        )
        .unwrap();
        assert_eq!(out.code, 0, "{lines:?}");
        let inside: Vec<&str> = lines.iter().map(String::as_str).collect();
        let reference: Vec<&str> = reference.lines().collect();
        assert_eq!(reference, inside, "{img}: run (the view from inside)");
    }
    no_mounts_under(s);
}

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn set_xattr(p: &Path, k: &str, v: &str) {
    rustix::fs::lsetxattr(p, k, v.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap();
}

/// Set the mtime of every directory under (and including) `root` to `secs`, deepest first,
/// so the trees do not depend on when the test ran.
fn settle_dirs(root: &Path, secs: i64) {
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            settle_dirs(&p, secs);
        }
    }
    set_mtime(root, secs);
}

/// The base layer every image starts from: a deep tree, odd modes, owners and mtimes,
/// xattrs, symlinks (relative, absolute, dangling), hardlinks, a FIFO and a device node,
/// and a static busybox for `run`.
fn base_tree(r: &Path) {
    let deep: PathBuf = (0..12).map(|i| format!("d{i}")).collect();
    mkdirs(&[
        &r.join("bin"),
        &r.join("proc"),
        &r.join("sys"),
        &r.join("dev"),
        &r.join("etc/conf.d"),
        &r.join("srv/sticky"),
        &r.join("home/user"),
        &r.join("replace/dir2file/sub"),
        &r.join("replace/dir2link/sub"),
        &r.join("replace/dir2dir"),
        &r.join("gone/deeper/still"),
        &r.join("opq/a/b"),
        &r.join("impl/keep"),
        &r.join("devices"),
        &r.join(&deep),
    ]);
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    std::fs::write(r.join("etc/motd"), "hello\n").unwrap();
    std::fs::write(r.join("etc/conf.d/a.conf"), "a\n").unwrap();
    std::fs::write(r.join("etc/shadow"), "secret\n").unwrap();
    chmod(&r.join("etc/shadow"), 0o000);
    std::fs::write(r.join("srv/setuid"), "x\n").unwrap();
    chmod(&r.join("srv/setuid"), 0o4755);
    chmod(&r.join("srv/sticky"), 0o1777);
    std::fs::write(r.join("home/user/.profile"), "PS1=$\n").unwrap();
    chown(&r.join("home/user/.profile"), 1000, 1000);
    chown(&r.join("home/user"), 1000, 1000);
    chmod(&r.join("home/user"), 0o2750);
    std::fs::write(r.join(&deep).join("leaf"), "deep\n").unwrap();
    std::fs::write(r.join("replace/file2dir"), "f\n").unwrap();
    std::fs::write(r.join("replace/file2link"), "f\n").unwrap();
    std::fs::write(r.join("replace/dir2file/sub/x"), "x\n").unwrap();
    std::fs::write(r.join("replace/dir2link/sub/x"), "x\n").unwrap();
    std::os::unix::fs::symlink("../etc/motd", r.join("replace/link2dir")).unwrap();
    std::os::unix::fs::symlink("/etc/motd", r.join("replace/link2file")).unwrap();
    std::os::unix::fs::symlink("nowhere", r.join("etc/dangling")).unwrap();
    std::fs::write(r.join("gone/deeper/still/x"), "x\n").unwrap();
    std::fs::write(r.join("gone/file"), "x\n").unwrap();
    std::fs::write(r.join("opq/a/b/old"), "old\n").unwrap();
    std::fs::write(r.join("opq/a/old"), "old\n").unwrap();
    std::fs::write(r.join("impl/keep/file"), "k\n").unwrap();
    chmod(&r.join("impl/keep"), 0o750);
    chown(&r.join("impl/keep"), 7, 8);
    std::fs::write(r.join("etc/linked"), "one inode\n").unwrap();
    std::fs::hard_link(r.join("etc/linked"), r.join("bin/linked2")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("devices/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("devices/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    set_xattr(&r.join("etc/motd"), "user.origin", "base");
    set_xattr(&r.join("etc"), "user.dir", "etc");
    set_xattr(&r.join("srv/setuid"), "trusted.note", "t");
    for (i, f) in ["etc/motd", "etc/conf.d/a.conf", "srv/setuid"]
        .iter()
        .enumerate()
    {
        set_mtime(&r.join(f), 1_000_000_000 + i as i64);
    }
    settle_dirs(r, 1_200_000_000);
    set_mtime(&r.join("home/user"), 900_000_000);
    set_mtime(&r.join("impl/keep"), 800_000_000);
}

/// The second layer: changed metadata of existing directories, a hardlink across layers,
/// deleted files and trees, and replacements file↔dir↔symlink in every direction.
fn change_tree(r: &Path) {
    std::fs::hard_link(r.join("etc/motd"), r.join("bin/motd-link")).unwrap();
    chmod(&r.join("etc/conf.d"), 0o700);
    chown(&r.join("etc/conf.d"), 3, 4);
    set_xattr(&r.join("etc/conf.d"), "user.changed", "yes");
    std::fs::remove_file(r.join("etc/shadow")).unwrap();
    std::fs::remove_dir_all(r.join("gone")).unwrap();
    let rp = r.join("replace");
    std::fs::remove_file(rp.join("file2dir")).unwrap();
    mkdirs(&[&rp.join("file2dir/new")]);
    std::fs::remove_file(rp.join("file2link")).unwrap();
    std::os::unix::fs::symlink("dir2dir", rp.join("file2link")).unwrap();
    std::fs::remove_dir_all(rp.join("dir2file")).unwrap();
    std::fs::write(rp.join("dir2file"), "now a file\n").unwrap();
    std::fs::remove_dir_all(rp.join("dir2link")).unwrap();
    std::os::unix::fs::symlink("/etc", rp.join("dir2link")).unwrap();
    std::fs::remove_file(rp.join("link2dir")).unwrap();
    mkdirs(&[&rp.join("link2dir")]);
    std::fs::remove_file(rp.join("link2file")).unwrap();
    std::fs::write(rp.join("link2file"), "was a link\n").unwrap();
    std::fs::write(r.join("opq/a/new"), "new\n").unwrap();
    std::fs::remove_file(r.join("opq/a/old")).unwrap();
    settle_dirs(r, 1_300_000_000);
    set_mtime(&r.join("home/user"), 900_000_000);
    set_mtime(&r.join("impl/keep"), 800_000_000);
}

/// Hand-made layers (added with `umoci raw add-layer`), each a case umoci's own repack
/// does not write.
fn crafted_layers(s: &Path) -> Vec<PathBuf> {
    // Whiteouts under a directory that a symlink of the same layer replaces (both orders),
    // and a directory with children replaced by a file later in the same layer.
    let c1 = TarMaker::new()
        .link(tar::EntryType::Symlink, "replace/dir2dir", "../etc")
        .file("replace/dir2dir/.wh.x", "", 0o644)
        .file("replace/link2dir/.wh.y", "", 0o644)
        .link(tar::EntryType::Symlink, "replace/link2dir", "/srv")
        .dir("replace/tree/", 0o755, 0, 0)
        .file("replace/tree/child", "c\n", 0o644)
        .file("replace/tree", "now a file\n", 0o600)
        .write(&s.join("c1.tar"));
    // Opaque directories at several depths, a child of a directory that only the layer's
    // entries imply (no entry for `impl/keep`: it keeps its metadata from below), a FIFO
    // with NUL device fields. (A directory implied with nothing below gets a fixed default
    // here, while umoci gives it the time of the unpack: checked on its own.)
    let c2 = TarMaker::new()
        .file("opq/.wh..wh..opq", "", 0o644)
        .dir("opq/a/", 0o711, 5, 6)
        .file("opq/a/.wh..wh..opq", "", 0o644)
        .file("opq/a/fresh", "fresh\n", 0o644)
        .file("etc/conf.d/.wh..wh..opq", "", 0o644)
        .file("impl/keep/file2", "implied\n", 0o644)
        .fifo_nul_dev("devices/fifo2")
        .write(&s.join("c2.tar"));
    // A directory with children replaced by a file in a later layer (no whiteout).
    let c3 = TarMaker::new()
        .file("replace/file2dir", "a file again\n", 0o644)
        .write(&s.join("c3.tar"));
    vec![c1, c2, c3]
}

/// A tarball with a sparse member made by GNU tar (`--sparse`, PAX format 1.0 or old GNU).
fn sparse_tar(s: &Path, format: &str) -> PathBuf {
    let src = s.join(format!("sparse-src-{format}"));
    mkdirs(&[&src]);
    let f = src.join("holes.img");
    let file = std::fs::File::create(&f).unwrap();
    file.set_len(4 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"middle", 2 << 20).unwrap();
    file.write_all_at(b"end", (4 << 20) - 3).unwrap();
    drop(file);
    set_mtime(&f, 1_500_000_000);
    let tar = s.join(format!("sparse-{format}.tar"));
    Cmd::new("tar")
        .args(["--sparse", "--numeric-owner", "--owner=0", "--group=0"])
        .arg(format!("--format={format}"))
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("holes.img")
        .run()
        .unwrap();
    tar
}

/// Copy `img` with skopeo into a new layout (`extra` picks the compression).
fn skopeo_copy(img: &Image, dest: &Path, extra: &[&str]) -> Image {
    Cmd::new("skopeo")
        .arg("copy")
        .args(extra)
        .arg(format!("oci:{}", img.spec()))
        .arg(format!("oci:{}:t", dest.display()))
        .run()
        .unwrap();
    Image {
        layout: dest.to_owned(),
        tag: "t".into(),
        scratch: img.scratch.clone(),
    }
}

fn media_types(layout: &Path) -> Vec<String> {
    let store_img = dl::oci::read_image(layout, Some("t")).unwrap();
    store_img
        .layers
        .iter()
        .map(|l| l.media_type.clone())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn interop_images_by_umoci_and_skopeo_read_exactly_on_every_route() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let img = Image::new(s, "main");
    img.repack(base_tree);
    img.repack(change_tree);
    // `umoci insert`: a Go tar stream without end blocks, under directories it only implies.
    let ins = s.join("ins");
    mkdirs(&[&ins.join("q/r")]);
    std::fs::write(ins.join("q/r/s"), "inserted\n").unwrap();
    img.insert(&ins, "/impl/keep/ins");
    for t in crafted_layers(s) {
        img.add_layer(&t);
    }
    img.add_layer(&sparse_tar(s, "pax"));
    // (umoci reads no old-GNU sparse members, 'S': those are checked on their own.)
    // The same (empty) layer three times, with another layer in between.
    let empty = TarMaker::new().write(&s.join("empty.tar"));
    img.add_layer(&empty);
    img.add_layer(&empty);
    img.add_layer(
        &TarMaker::new()
            .file("late", "late\n", 0o644)
            .write(&s.join("late.tar")),
    );
    img.add_layer(&empty);
    let want_root = img.umoci_unpack(&s.join("want"));
    check_all_routes(s, "umoci image", &img.spec(), &want_root, true);

    // skopeo copies: zstd-recompressed and gzip-recompressed layers read the same.
    for (name, extra) in [
        ("zstd", &["--dest-compress-format", "zstd"][..]),
        ("gzip", &["--dest-compress-format", "gzip"][..]),
    ] {
        let copy = skopeo_copy(&img, &s.join(format!("copy-{name}")), extra);
        let types = media_types(&copy.layout);
        assert!(
            types.iter().all(|t| t.ends_with(name)),
            "skopeo {name}: {types:?}"
        );
        // umoci 0.4.7 reads no zstd layers: the copy's reference is the original's unpack
        // (the copy has the same diff_ids); the gzip copy is also unpacked by umoci itself.
        let root = if name == "zstd" {
            want_root.clone()
        } else {
            let root = copy.umoci_unpack(&s.join(format!("want-{name}")));
            assert_same_full(
                &full_tree(&want_root, &[]),
                &full_tree(&root, &[]),
                &format!("umoci unpack of skopeo {name} copy"),
            );
            root
        };
        check_all_routes(s, &format!("skopeo {name} copy"), &copy.spec(), &root, true);
    }
}

#[test]
#[ignore = "needs root"]
fn interop_opaque_root_and_uncompressed_layers() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let img = Image::new(s, "rootopq");
    img.repack(base_tree);
    // An opaque marker at the layer's root: everything below is hidden; the root itself
    // is only implied (no `./` entry), so it keeps the metadata from below.
    img.add_layer(
        &TarMaker::new()
            .file(".wh..wh..opq", "", 0o644)
            .dir("etc/", 0o750, 0, 0)
            .file("etc/only", "only\n", 0o644)
            .write(&s.join("opq-root.tar")),
    );
    img.add_layer(&TarMaker::new().write(&s.join("empty.tar")));
    let types = media_types(&img.layout);
    let want_root = img.umoci_unpack(&s.join("want"));
    check_all_routes(s, "opaque root", &img.spec(), &want_root, false);
    // The same image with uncompressed layers: skopeo decompresses into a `dir:` copy and
    // writes that to a layout keeping the plain tars.
    let dir = s.join("plain-dir");
    Cmd::new("skopeo")
        .args(["copy", "--dest-decompress"])
        .arg(format!("oci:{}", img.spec()))
        .arg(format!("dir:{}", dir.display()))
        .run()
        .unwrap();
    let copy_layout = s.join("copy-plain");
    Cmd::new("skopeo")
        .args(["copy", "--dest-oci-accept-uncompressed-layers"])
        .arg(format!("dir:{}", dir.display()))
        .arg(format!("oci:{}:t", copy_layout.display()))
        .run()
        .unwrap();
    let copy = Image {
        layout: copy_layout,
        tag: "t".into(),
        scratch: s.to_owned(),
    };
    let plain = media_types(&copy.layout);
    assert!(
        plain
            .iter()
            .all(|t| t == "application/vnd.oci.image.layer.v1.tar"),
        "{plain:?}"
    );
    let root = copy.umoci_unpack(&s.join("want-plain"));
    check_all_routes(s, "opaque root, uncompressed", &copy.spec(), &root, false);
    assert!(types.iter().all(|t| t.ends_with("gzip")), "{types:?}");
}

// ---------------------------------------------------------------------------------------
// One test per defect of issue 12 that the interop suite does not pin down on its own.

fn import(store: &dl::Store, t: &Path) -> dl::Layer {
    store.import_tarball(t).unwrap()
}

/// Defect 2: a whiteout under a directory that a symlink of the same layer replaced is a
/// no-op (the target is gone), in either order; writing a file through the symlink is
/// still refused.
#[test]
#[ignore = "needs root"]
fn whiteout_under_a_parent_replaced_by_a_symlink_is_a_no_op() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let l = import(
        &store,
        &TarMaker::new()
            .link(tar::EntryType::Symlink, "a", "/etc")
            .file("a/.wh.passwd", "", 0o644)
            .file("b/.wh.x", "", 0o644)
            .link(tar::EntryType::Symlink, "b", "elsewhere")
            .write(&s.join("l.tar")),
    );
    assert_eq!(
        std::fs::read_link(l.path.join("a")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(
        std::fs::read_link(l.path.join("b")).unwrap(),
        Path::new("elsewhere")
    );
    assert!(
        Path::new("/etc/passwd").exists(),
        "the host was not touched"
    );
    let err = store
        .import_tarball(
            &TarMaker::new()
                .link(tar::EntryType::Symlink, "a", "/tmp")
                .file("a/escape", "x", 0o644)
                .write(&s.join("bad.tar")),
        )
        .unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");
    no_mounts_under(s);
}

/// Defect 3: the same layer twice in a stack (ELOOP from overlayfs before).
#[test]
#[ignore = "needs root"]
fn a_layer_repeated_in_the_stack_mounts() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let a = import(
        &store,
        &TarMaker::new()
            .dir("./", 0o755, 0, 0)
            .file("f", "a\n", 0o644)
            .write(&s.join("a.tar")),
    );
    let b = import(
        &store,
        &TarMaker::new()
            .dir("./", 0o755, 0, 0)
            .file("f", "b\n", 0o644)
            .file("g", "b\n", 0o644)
            .write(&s.join("b.tar")),
    );
    let merged = s.join("merged");
    mkdirs(&[&merged]);
    let stack = vec![a.path.clone(), b.path.clone(), a.path.clone()];
    let m = dl::mount_stack(&stack, None, &merged).unwrap();
    assert_eq!(read(merged.join("f")), "a\n", "the topmost copy wins");
    assert_eq!(read(merged.join("g")), "b\n");
    m.teardown().unwrap();
    let paths: Vec<_> = dl::merged_tree(&stack)
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string_lossy().into_owned(), e.layer))
        .collect();
    assert_eq!(paths, [("".into(), 2), ("f".into(), 2), ("g".into(), 1)]);
    no_mounts_under(s);
}

/// Defect 5: directories a layer only implies show the metadata of the same directory below
/// (mount, squash, copy-up), or the documented default when nothing below has them.
#[test]
#[ignore = "needs root"]
fn implied_directories_keep_the_metadata_from_below() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let base = import(
        &store,
        &TarMaker::new()
            .dir("./", 0o751, 0, 0)
            .xattr("user.k", "v")
            .dir("a/", 0o700, 7, 8)
            .dir("a/b/", 0o2750, 9, 10)
            .write(&s.join("base.tar")),
    );
    let top = import(
        &store,
        &TarMaker::new()
            .file("a/b/c/file", "x\n", 0o644)
            .write(&s.join("top.tar")),
    );
    let empty = import(&store, &TarMaker::new().write(&s.join("empty.tar")));
    let stack = store.stack(&[base.clone(), top, empty]).unwrap();
    assert_eq!(
        stack.last().map(|l| &l.origin),
        Some(&dl::LayerOrigin::Fixup)
    );
    let merged = s.join("merged");
    let (upper, work) = (s.join("upper"), s.join("work"));
    mkdirs(&[&merged]);
    let meta = |root: &Path, p: &str| {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        (
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.mtime(),
            xattrs(&root.join(p)),
        )
    };
    let want = [
        ("", (0o751, 0, 0, 1_600_000_000, vec![])),
        (
            "a",
            (
                0o700,
                7,
                8,
                1_600_000_000,
                vec![("user.k".to_owned(), b"v".to_vec())],
            ),
        ),
        ("a/b", (0o2750, 9, 10, 1_600_000_000, vec![])),
        ("a/b/c", (0o755, 0, 0, 0, vec![])),
    ];
    let lowers = layer_paths(&stack);
    let m = dl::mount_stack(&lowers, None, &merged).unwrap();
    for (p, w) in &want {
        assert_eq!(&meta(&merged, p), w, "mount: {p:?}");
    }
    m.teardown().unwrap();
    // Copy-up (a write in the deepest directory) keeps the parents' metadata.
    let m = dl::mount_stack(&lowers, Some((&upper, &work)), &merged).unwrap();
    std::fs::write(merged.join("a/b/c/file"), "y\n").unwrap();
    for (p, w) in &want[..3] {
        assert_eq!(&meta(&upper, p), w, "copied up: {p:?}");
    }
    m.teardown().unwrap();
    // Squash writes the same metadata.
    let flat = s.join("flat.tar");
    dl::squash(&lowers, &flat, dl::TarOptions::default()).unwrap();
    let listing = Cmd::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvzf"])
        .arg(&flat)
        .read()
        .unwrap();
    assert!(
        listing.contains("drwx------ 7/8"),
        "squash lost a's owner/mode:\n{listing}"
    );
    no_mounts_under(s);
}

/// Defect 6: sparse members (PAX 1.0 and old GNU) become sparse files with the right content.
#[test]
#[ignore = "needs root"]
fn sparse_members_become_sparse_files() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let want = sha256_of(&{
        sparse_tar(s, "pax");
        s.join("sparse-src-pax/holes.img")
    });
    for format in ["pax", "gnu"] {
        let l = import(&store, &sparse_tar(s, format));
        let f = l.path.join("holes.img");
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(m.len(), 4 << 20, "{format}");
        assert_eq!(sha256_of(&f), want, "{format}");
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{format}: not sparse ({} blocks)",
            m.blocks()
        );
        assert!(
            !l.path.join("GNUSparseFile.0").exists(),
            "{format}: the sparse map was written as a file"
        );
    }
}

/// Defect 7: an opaque marker at a layer's root hides the layers below in a mount too.
#[test]
#[ignore = "needs root"]
fn opaque_root_hides_lower_layers_in_a_mount() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let base = import(
        &store,
        &TarMaker::new()
            .dir("./", 0o755, 0, 0)
            .file("old", "old\n", 0o644)
            .write(&s.join("base.tar")),
    );
    let top = import(
        &store,
        &TarMaker::new()
            .dir("./", 0o755, 0, 0)
            .file(".wh..wh..opq", "", 0o644)
            .file("new", "new\n", 0o644)
            .write(&s.join("top.tar")),
    );
    let merged = s.join("merged");
    mkdirs(&[&merged]);
    let lowers = vec![base.path, top.path];
    let m = dl::mount_stack(&lowers, None, &merged).unwrap();
    let names: Vec<_> = std::fs::read_dir(&merged)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    m.teardown().unwrap();
    assert_eq!(names, ["new"]);
    let squashed: Vec<_> = dl::merged_tree(&lowers)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(squashed, ["", "new"]);
    no_mounts_under(s);
}

/// Defect 11: a one-layer view is an overlay: its whiteouts do not show.
#[test]
#[ignore = "needs root"]
fn one_layer_view_hides_whiteouts() {
    require_root();
    let scratch = scratch_dir();
    let s = scratch.path();
    let store = dl::Store::open(s.join("store")).unwrap();
    let l = import(
        &store,
        &TarMaker::new()
            .dir("./", 0o755, 0, 0)
            .file("kept", "k\n", 0o644)
            .file(".wh.gone", "", 0o644)
            .write(&s.join("l.tar")),
    );
    let merged = s.join("merged");
    mkdirs(&[&merged]);
    for lowers in [
        vec![l.path.clone()],
        layer_paths(&store.stack(std::slice::from_ref(&l)).unwrap()),
    ] {
        let m = dl::mount_stack(&lowers, None, &merged).unwrap();
        let names: Vec<_> = std::fs::read_dir(&merged)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(m.method(), "mount-data");
        m.teardown().unwrap();
        assert_eq!(names, ["kept"], "{lowers:?}");
    }
    // The mount point serves as the empty lower layer, so it must be empty.
    std::fs::write(merged.join("x"), "").unwrap();
    let err = dl::mount_stack(&[l.path], None, &merged).unwrap_err();
    assert!(err.to_string().contains("empty mount point"), "{err}");
    no_mounts_under(s);
}
