//! An initramfs from busybox-static, kernel modules with their dependencies, a caller's
//! `/init` and extra files.
//!
//! Layout (what an `/init` can rely on): the directories `bin dev etc lib lib/modules mnt
//! proc sys tmp`; `dev/console` and `dev/null` as device nodes (written into the archive, no
//! root needed); `bin/busybox` (mode 0755) with `bin/sh` linking to it; `init` (mode 0755);
//! the modules at `lib/modules/PATH` (PATH as in `modules.dep`), and [`MODULE_LIST`] naming
//! them by absolute path, one a line, in load order — an `/init` loads them with
//! `for m in $(cat /etc/diskforge-modules); do insmod "$m"; done`. Extra files come last,
//! with their parent directories. The archive is a cpio `newc` ([`crate::cpio`]), plain or
//! gzip'd (no timestamps in either), so the same inputs give the same bytes, and it is
//! written to a temp file renamed into place.
//!
//! It does not run busybox `--install` (the `/init` does, on the guest) and does not resolve
//! shared libraries: busybox must be the static build (Debian package `busybox-static`).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cpio::Cpio;
use crate::modules::ModuleDeps;
use crate::{Error, Result};

/// Where Debian's `busybox-static` installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";
/// The ordered module list inside the initramfs (absolute paths, one a line).
pub const MODULE_LIST: &str = "/etc/diskforge-modules";
/// Directories every initramfs has.
const BASE_DIRS: &[&str] = &[
    "bin",
    "dev",
    "etc",
    "lib",
    "lib/modules",
    "mnt",
    "proc",
    "sys",
    "tmp",
];

/// Compression of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain cpio (fastest to unpack under TCG; what `-initrd` from a local file wants).
    #[default]
    None,
    /// gzip (smaller: for an initrd that goes onto a medium).
    Gzip,
}

/// An initramfs to write. [`Initramfs::new`] gives the defaults each field names.
#[derive(Debug, Clone)]
pub struct Initramfs {
    /// The static busybox. Default [`BUSYBOX`].
    pub busybox: PathBuf,
    /// The `/init` script. No default.
    pub init: String,
    /// `/lib/modules/RELEASE` of the kernel that will boot; needed when `modules` is not
    /// empty. Default none.
    pub modules_dir: Option<PathBuf>,
    /// Module names to load (dependencies are added). Default none.
    pub modules: Vec<String>,
    /// Extra files: path inside the archive (relative, `/`-separated), permission bits,
    /// content. Default none.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// Compression. Default [`Compression::None`].
    pub compression: Compression,
}

/// What [`Initramfs::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Module paths (relative to the modules directory) in load order.
    pub modules: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Each proper parent of `path` (`a/b/c` → `a`, `a/b`), outermost first.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

impl Initramfs {
    /// An initramfs running `init`, with the defaults.
    pub fn new(init: impl Into<String>) -> Self {
        Initramfs {
            busybox: BUSYBOX.into(),
            init: init.into(),
            modules_dir: None,
            modules: Vec::new(),
            files: Vec::new(),
            compression: Compression::None,
        }
    }

    /// Load `names` (with their dependencies) from `modules_dir`.
    pub fn modules(mut self, modules_dir: impl Into<PathBuf>, names: &[&str]) -> Self {
        self.modules_dir = Some(modules_dir.into());
        self.modules.extend(names.iter().map(|n| (*n).to_owned()));
        self
    }

    /// Add a file at `path` (relative) with permission bits `perm`.
    pub fn file(mut self, path: impl Into<String>, perm: u32, data: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.into(), perm, data.into()));
        self
    }

    /// Set the compression.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Module paths to load, in order (empty without modules).
    fn module_order(&self) -> Result<(Option<&Path>, Vec<String>)> {
        if self.modules.is_empty() {
            return Ok((None, Vec::new()));
        }
        let dir = self.modules_dir.as_deref().ok_or_else(|| Error::Invalid {
            what: "initramfs".into(),
            reason: "modules named without a modules directory".into(),
        })?;
        let names: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        let order = ModuleDeps::read(dir)?.load_order(&names)?;
        Ok((Some(dir), order))
    }

    /// The archive's bytes (before compression) into `out`.
    fn archive<W: Write>(&self, out: W) -> Result<(Vec<String>, W)> {
        let (dir, order) = self.module_order()?;
        for (path, _, _) in &self.files {
            let bad = path.is_empty()
                || path.starts_with('/')
                || path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                return Err(Error::Invalid {
                    what: format!("initramfs file {path:?}"),
                    reason: "must be a relative path without . or .. parts".into(),
                });
            }
        }
        let busybox = read(&self.busybox)?;
        let io = |source| Error::Io {
            action: "writing the initramfs archive for",
            path: self.busybox.clone(),
            source,
        };
        let mut dirs: Vec<String> = BASE_DIRS.iter().map(|d| (*d).to_owned()).collect();
        let module_paths = order.iter().map(|m| format!("lib/modules/{m}"));
        let file_paths = self.files.iter().map(|(p, _, _)| p.clone());
        for p in module_paths.chain(file_paths) {
            for d in parents(&p) {
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        let mut c = Cpio::new(out);
        for d in &dirs {
            c.dir(d).map_err(io)?;
        }
        c.char_dev("dev/console", 5, 1).map_err(io)?;
        c.char_dev("dev/null", 1, 3).map_err(io)?;
        c.file("bin/busybox", 0o755, &busybox).map_err(io)?;
        c.symlink("bin/sh", "busybox").map_err(io)?;
        c.file("init", 0o755, self.init.as_bytes()).map_err(io)?;
        let list: String = order
            .iter()
            .map(|m| format!("/lib/modules/{m}\n"))
            .collect();
        c.file(MODULE_LIST.trim_start_matches('/'), 0o644, list.as_bytes())
            .map_err(io)?;
        if let Some(dir) = dir {
            for m in &order {
                let data = read(&dir.join(m))?;
                c.file(&format!("lib/modules/{m}"), 0o644, &data)
                    .map_err(io)?;
            }
        }
        for (path, perm, data) in &self.files {
            c.file(path, *perm, data).map_err(io)?;
        }
        let out = c.finish().map_err(io)?;
        Ok((order, out))
    }

    /// Write the archive to `out` (a temp file in its directory, renamed into place).
    pub fn write(&self, out: &Path) -> Result<Written> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io = |action| {
            move |source| Error::Io {
                action,
                path: out.to_owned(),
                source,
            }
        };
        let tmp = tempfile::Builder::new()
            .prefix(".initramfs-")
            .tempfile_in(parent)
            .map_err(io("creating a temp file for"))?;
        let file = std::io::BufWriter::new(tmp.as_file());
        let modules = match self.compression {
            Compression::None => {
                let (order, mut w) = self.archive(file)?;
                w.flush().map_err(io("writing"))?;
                order
            }
            Compression::Gzip => {
                let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
                let (order, gz) = self.archive(gz)?;
                let mut w = gz.finish().map_err(io("writing"))?;
                w.flush().map_err(io("writing"))?;
                order
            }
        };
        tmp.persist(out)
            .map_err(|e| io("renaming into place")(e.error))?;
        Ok(Written { modules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_outermost_first() {
        assert_eq!(parents("a/b/c.ko"), ["a", "a/b"]);
        assert!(parents("init").is_empty());
    }

    /// A fake busybox and modules tree; the archive listed by GNU cpio (independent reader).
    #[test]
    fn layout_with_modules_and_files() {
        let d = tempfile::tempdir().unwrap();
        let bb = d.path().join("busybox");
        std::fs::write(&bb, b"\x7fELF fake busybox").unwrap();
        let md = d.path().join("modules");
        std::fs::create_dir_all(md.join("kernel/fs")).unwrap();
        std::fs::write(
            md.join("modules.dep"),
            "kernel/fs/b.ko: kernel/fs/a.ko\nkernel/fs/a.ko:\n",
        )
        .unwrap();
        std::fs::write(md.join("kernel/fs/a.ko"), b"A").unwrap();
        std::fs::write(md.join("kernel/fs/b.ko"), b"B").unwrap();
        let mut i = Initramfs::new("#!/bin/sh\necho hi\n")
            .modules(&md, &["b"])
            .file("etc/x/y.conf", 0o600, "conf");
        i.busybox = bb;
        let out = d.path().join("initrd");
        let w = i.write(&out).unwrap();
        assert_eq!(w.modules, ["kernel/fs/a.ko", "kernel/fs/b.ko"]);
        let listing = diskforge_cmd::Cmd::new("cpio")
            .args(["-t", "--quiet"])
            .stdin_bytes(std::fs::read(&out).unwrap())
            .read()
            .unwrap();
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "etc",
                "lib",
                "lib/modules",
                "mnt",
                "proc",
                "sys",
                "tmp",
                "lib/modules/kernel",
                "lib/modules/kernel/fs",
                "etc/x",
                "dev/console",
                "dev/null",
                "bin/busybox",
                "bin/sh",
                "init",
                "etc/diskforge-modules",
                "lib/modules/kernel/fs/a.ko",
                "lib/modules/kernel/fs/b.ko",
                "etc/x/y.conf",
            ]
        );
        let list = diskforge_cmd::Cmd::new("cpio")
            .args(["-i", "--quiet", "--to-stdout", "etc/diskforge-modules"])
            .stdin_bytes(std::fs::read(&out).unwrap())
            .read()
            .unwrap();
        assert_eq!(
            list,
            "/lib/modules/kernel/fs/a.ko\n/lib/modules/kernel/fs/b.ko"
        );

        // gzip'd: same archive inside, reproducible bytes.
        let gz = d.path().join("initrd.gz");
        let i = i.compression(Compression::Gzip);
        i.write(&gz).unwrap();
        let first = std::fs::read(&gz).unwrap();
        i.write(&gz).unwrap();
        assert_eq!(first, std::fs::read(&gz).unwrap());
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&first[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, std::fs::read(&out).unwrap());
    }

    #[test]
    fn refuses_bad_paths_and_modules_without_dir() {
        let d = tempfile::tempdir().unwrap();
        let mut i = Initramfs::new("x").file("../evil", 0o644, "");
        i.busybox = d.path().join("missing");
        let err = i.write(&d.path().join("o")).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        let mut i = Initramfs::new("x");
        i.modules.push("loop".into());
        assert!(matches!(
            i.write(&d.path().join("o")),
            Err(Error::Invalid { .. })
        ));
        assert!(!d.path().join("o").exists(), "nothing left behind");
    }
}
