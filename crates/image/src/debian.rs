//! The shipped `debian-minimal` element, natively: a Debian base in the root tree, kept in the
//! diskforge-layers store (keyed by release, sources, architecture, components, package set
//! and bootstrapper) so that a warm build copies it in seconds instead of bootstrapping again.
//!
//! Like dib, the base is made with `mmdebstrap` when the host has it (dib's `debootstrap`
//! element prefers it too) and `debootstrap --variant=minbase` otherwise. The package set is
//! dib's `debian-minimal` result — minbase, then `systemd-sysv busybox sudo gnupg2 python3`,
//! the kernel with `netbase`, and the `debootstrap` element's `adduser ca-certificates locales
//! lsb-release` — plus `initramfs-tools udev e2fsprogs` for `vm`, all installed in the one
//! bootstrap, from dib's sources (the mirror's `RELEASE` and `RELEASE-updates`, and the
//! security mirror's `RELEASE-security`; `DIB_APT_SOURCES_CONF` or `DIB_APT_SOURCES` replace
//! them), so that they land in the cached base too. Differences from dib, on purpose:
//! - dpkg runs with `force-unsafe-io` during the build (the image is synced once at the end);
//!   the build removes that setting before the filesystems are made.
//! - The bootstrap runs in its own mount and PID namespace (`unshare`), so the `proc`/`sys`/
//!   `dev` mounts it makes in the target vanish with it, even after `kill -9`.
//! - The downloaded packages are shared between builds in `DIB_IMAGE_CACHE/apt/debian` (dib's
//!   `DIB_APT_LOCAL_CACHE`, on by default; `0` turns it off), for the bootstrap as well as for
//!   later `package-installs`.
//! - apt lists and the package cache are removed from the tree, as dib's cleanup does.
//! - The initramfs is made once, at the end of the bootstrap (installing the kernel and
//!   initramfs-tools together makes it twice under dpkg), and `zstd` is in the base so that
//!   initramfs-tools uses the compression it is configured for (dib's images fall back to
//!   gzip for want of it).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use diskforge_cmd::{Cmd, NextLine};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err, tool_err};

/// Packages the base gets besides the bootstrapper's `minbase` (the kernel package is added
/// per architecture: `linux-image-ARCH`).
pub const BASE_PACKAGES: &[&str] = &[
    // dib debian-minimal's root.d
    "systemd-sysv",
    "busybox",
    "sudo",
    "gnupg2",
    "python3",
    // dib debian-minimal's package-installs
    "netbase",
    // dib debootstrap's package-installs
    "adduser",
    "ca-certificates",
    "locales",
    "lsb-release",
    // what `vm` images need to boot: the initramfs generator, udev, fsck for the root
    "initramfs-tools",
    "udev",
    "e2fsprogs",
    // initramfs-tools is configured with COMPRESS=zstd but falls back to gzip without it
    // (14 s slower to make here, and slower to unpack at every boot)
    "zstd",
];

/// Made once, at the end of the bootstrap: installing the kernel and initramfs-tools in one
/// run would otherwise make the initramfs twice (the kernel's postinst hook, then
/// initramfs-tools' trigger; ~40 s each here). The bootstrap runs with `INITRD=No`, which
/// the kernel hook honours and which leaves the trigger nothing to update.
const MAKE_INITRAMFS: &str = "update-initramfs -c -k all";

/// GRUB for BIOS and UEFI from the target's own packages (with `vm`): the `-bin` packages
/// carry the platform directories (modules, `kernel.img`, `boot.img`) without maintainer
/// scripts that would try to install to a disk; diskforge-boot builds the images from them.
pub const GRUB_PACKAGES: &[&str] = &["grub-pc-bin", "grub-efi-amd64-bin"];

/// Which program makes the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootstrapper {
    /// mmdebstrap (apt does the downloads and the dependency resolution).
    Mmdebstrap,
    /// debootstrap, then apt for the updates.
    Debootstrap,
}

impl Bootstrapper {
    /// mmdebstrap when installed, else debootstrap (what dib does).
    pub fn detect() -> Self {
        if diskforge_cmd::exists("mmdebstrap") {
            Bootstrapper::Mmdebstrap
        } else {
            Bootstrapper::Debootstrap
        }
    }
}

/// What to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianOptions {
    /// `DIB_RELEASE` (default the host's `VERSION_CODENAME`).
    pub release: String,
    /// `DIB_DISTRIBUTION_MIRROR` (default the host's apt mirror).
    pub mirror: String,
    /// The apt sources of the image, one-line style (`deb URI SUITE COMPONENTS…`): see
    /// [`default_sources`]; part of the cache key.
    pub sources: Vec<String>,
    /// `DIB_DEBIAN_COMPONENTS` (default `main`).
    pub components: Vec<String>,
    /// dib's architecture name (amd64 …).
    pub arch: String,
    /// Packages added to the base (sorted; part of the cache key).
    pub include: Vec<String>,
    /// The program that makes the base (part of the cache key).
    pub bootstrapper: Bootstrapper,
    /// The layers store holding cached bases (default `DIB_IMAGE_CACHE/layers`).
    pub store: PathBuf,
    /// The shared package cache (`DIB_IMAGE_CACHE/apt/debian`), unless `DIB_APT_LOCAL_CACHE=0`.
    #[serde(default)]
    pub apt_cache: Option<PathBuf>,
    /// Ignore (and replace) a cached base.
    pub no_cache: bool,
    /// A cached base older than this is rebuilt (dib's `DIB_DEBOOTSTRAP_CACHE` refresh).
    pub max_age: Duration,
}

/// dib's default apt sources for a Debian release: `RELEASE` and `RELEASE-updates` from the
/// mirror, `RELEASE-security` (+ `DIB_DEBIAN_SECURITY_SUBPATH`) from the security mirror;
/// only the first for `testing`/`unstable`/`sid`.
pub fn default_sources(
    mirror: &str,
    security_mirror: &str,
    security_subpath: &str,
    release: &str,
    components: &[String],
) -> Vec<String> {
    let c = components.join(" ");
    let mut v = vec![format!("deb {mirror} {release} {c}")];
    if !matches!(release, "testing" | "unstable" | "sid") {
        v.push(format!("deb {mirror} {release}-updates {c}"));
        v.push(format!(
            "deb {security_mirror} {release}-security{security_subpath} {c}"
        ));
    }
    v
}

/// dib's `DIB_APT_SOURCES_CONF` (`name:deb …` lines) as one-line sources.
pub fn sources_from_conf(conf: &str) -> Vec<String> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((name, rest)) if !name.contains(' ') && !name.contains('/') => {
                rest.trim().to_owned()
            }
            _ => l.to_owned(),
        })
        .collect()
}

/// The `deb` lines of a sources.list text (dib's `DIB_APT_SOURCES` file).
pub fn sources_from_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") || l.starts_with("deb-src ") || l.starts_with("deb ["))
        .map(str::to_owned)
        .collect()
}

/// What [`debian_root`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebianReport {
    /// The cache key.
    pub key: String,
    /// True when the base came from the cache.
    pub cached: bool,
    /// Packages downloaded (0 from the cache).
    pub packages_fetched: u64,
    /// Bytes downloaded, as apt reported them.
    pub bytes_fetched: u64,
    /// Milliseconds spent.
    pub millis: u64,
}

/// The host's release codename (`VERSION_CODENAME` of /etc/os-release).
pub fn host_release() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The Debian mirror the host's own apt uses: the first `URIs:` of a deb822 source in
/// /etc/apt/sources.list.d/*.sources whose suites are not `-security`, else the first `deb`
/// line of /etc/apt/sources.list.
pub fn host_mirror() -> Option<String> {
    host_source(false)
}

/// The security mirror the host's own apt uses (its `-security` source).
pub fn host_security_mirror() -> Option<String> {
    host_source(true)
}

fn host_source(security: bool) -> Option<String> {
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sources"))
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if let Some(m) = source_from_deb822(&text, security) {
            return Some(m);
        }
    }
    let text = fs::read_to_string("/etc/apt/sources.list").ok()?;
    source_from_list(&text, security)
}

/// The first Debian mirror of a deb822 `.sources` text whose suites are (`security`) or are
/// not `-security` ones.
pub fn source_from_deb822(text: &str, security: bool) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types:"), field("URIs:"), field("Suites:"))
        else {
            continue;
        };
        if types.split_whitespace().any(|t| t == "deb")
            && suites.contains("-security") == security
            && let Some(uri) = uris.split_whitespace().next()
        {
            return Some(uri.to_owned());
        }
    }
    None
}

/// The first `deb URI SUITE …` line of a one-line-style sources.list whose suite is
/// (`security`) or is not a `-security` one.
pub fn source_from_list(text: &str, security: bool) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
        (w.next()? == "deb").then_some(())?;
        let uri = w.next()?;
        let suite = w.next()?;
        (suite.contains("-security") == security).then(|| uri.to_owned())
    })
}

/// The cache key: sha256 of everything that changes the base.
pub fn cache_key(o: &DebianOptions) -> String {
    use sha2::Digest as _;
    let mut include = o.include.clone();
    include.sort();
    let sources: Vec<String> = o
        .sources
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let text = format!(
        "diskforge debian-minimal v3\nrelease={}\nmirror={}\nsources={}\narch={}\ncomponents={}\ninclude={}\nbootstrapper={:?}\n",
        o.release,
        o.mirror.trim_end_matches('/'),
        sources.join("|"),
        o.arch,
        o.components.join(","),
        include.join(","),
        o.bootstrapper,
    );
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the cache index records for a key.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    diff_id: String,
    created: u64,
    options: DebianOptions,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// An exclusive `flock` on `path` (created), held until the file is dropped.
fn lock(path: &Path) -> Result<fs::File> {
    let f = fs::File::create(path).map_err(io_err("creating", path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("locking", path)(e.into()))?;
    Ok(f)
}

/// Make `tree` a Debian base: from the cache when a fresh entry exists, else bootstrapped
/// (then stored). `tree` must be empty. Needs root (the bootstrap's chroot, device nodes).
/// `progress` gets one-line updates while packages download and install; `cancel` (raised on
/// SIGINT/SIGTERM) stops the bootstrap, killing it with its namespace.
pub fn debian_root(
    tree: &Path,
    o: &DebianOptions,
    progress: &mut dyn FnMut(String),
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<DebianReport> {
    let started = Instant::now();
    let key = cache_key(o);
    let index_dir = o.store.join("debian-minimal");
    fs::create_dir_all(&index_dir).map_err(io_err("creating", &index_dir))?;
    let index = index_dir.join(format!("{key}.json"));
    // One builder at a time per key: the second waits, then finds the entry.
    let _lock = lock(&index_dir.join(format!("{key}.lock")))?;
    let store = diskforge_layers::Store::open(&o.store).map_err(|source| Error::Oci {
        source: Box::new(source),
    })?;
    if !o.no_cache
        && let Ok(text) = fs::read_to_string(&index)
        && let Ok(e) = serde_json::from_str::<Entry>(&text)
        && now().saturating_sub(e.created) < o.max_age.as_secs()
        && let Some(dir) = store.layer_dir(&e.diff_id)
        && dir.is_dir()
    {
        progress("copying the cached base".into());
        copy_tree(&dir, tree)?;
        return Ok(DebianReport {
            key,
            cached: true,
            packages_fetched: 0,
            bytes_fetched: 0,
            millis: started.elapsed().as_millis() as u64,
        });
    }
    // The shared package cache: one bootstrap at a time uses it (apt inside locks it too).
    let apt_lock = match &o.apt_cache {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            Some(lock(&dir.join(".diskforge.lock"))?)
        }
        None => None,
    };
    // Bootstrapped in the store's staging area, adopted as a layer as it is (no tarball, no
    // unpacking), and copied into the build's tree while its digest is computed.
    let oci = |source| Error::Oci {
        source: Box::new(source),
    };
    let staging = store.staging().map_err(oci)?;
    let fetched = bootstrap(staging.path(), o, progress, cancel)?;
    drop(apt_lock);
    configure(staging.path(), o)?;
    progress("storing the base in the cache".into());
    let (layer, copied) = store
        .adopt(staging, |base| copy_tree(base, tree))
        .map_err(oci)?;
    copied?;
    let diff_id = layer.diff_id.unwrap_or_default();
    let entry = Entry {
        diff_id,
        created: now(),
        options: o.clone(),
    };
    let text = serde_json::to_string_pretty(&entry).unwrap_or_default();
    let part = index.with_extension("json.tmp");
    fs::write(&part, text).map_err(io_err("writing", &part))?;
    fs::rename(&part, &index).map_err(io_err("renaming into place", &index))?;
    Ok(DebianReport {
        key,
        cached: false,
        packages_fetched: fetched.0,
        bytes_fetched: fetched.1,
        millis: started.elapsed().as_millis() as u64,
    })
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    Cmd::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(src)
        .arg(to)
        .run()
        .map(|_| ())
        .map_err(tool_err("copying the cached Debian base"))
}

/// Download accounting from apt's and debootstrap's output lines.
#[derive(Debug, Default)]
struct Fetched {
    packages: u64,
    bytes: u64,
}

impl Fetched {
    /// apt: `Get:12 http://… bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]`;
    /// debootstrap: `I: Retrieving libc6 2.36-9`.
    fn line(&mut self, l: &str) -> bool {
        if l.starts_with("Get:") {
            let index = [
                "InRelease",
                " Release",
                "Packages",
                "Translation",
                "Contents",
            ]
            .iter()
            .any(|w| l.contains(w));
            if !index {
                self.packages += 1;
            }
            if let Some(sz) = l.rsplit_once('[').and_then(|(_, r)| r.strip_suffix(']')) {
                self.bytes += parse_apt_size(sz);
            }
            true
        } else if l.starts_with("I: Retrieving ")
            && !l.contains("Release")
            && !l.contains("Packages")
        {
            self.packages += 1;
            true
        } else {
            false
        }
    }

    fn message(&self, stage: &str) -> String {
        if self.bytes > 0 {
            format!(
                "{stage} — {} packages fetched, {:.1} MB",
                self.packages,
                self.bytes as f64 / 1e6
            )
        } else {
            format!("{stage} — {} packages fetched", self.packages)
        }
    }
}

/// `2757 kB`, `1,234 B`, `12.3 MB` (apt's decimal units).
fn parse_apt_size(s: &str) -> u64 {
    let mut w = s.split_whitespace();
    let (Some(n), Some(u)) = (w.next(), w.next()) else {
        return 0;
    };
    let Ok(n) = n.replace(',', "").parse::<f64>() else {
        return 0;
    };
    let mult = match u {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return 0,
    };
    (n * mult) as u64
}

/// The package list with the kernel for the architecture.
fn packages(o: &DebianOptions) -> Vec<String> {
    let mut include = o.include.clone();
    let kernel = format!("linux-image-{}", o.arch);
    if !include.contains(&kernel) {
        include.push(kernel);
    }
    include.sort();
    include
}

/// Run the bootstrapper in its own mount and PID namespace, its output (stdout and stderr)
/// streamed into `progress`. Returns (packages, bytes) fetched.
fn bootstrap(
    tree: &Path,
    o: &DebianOptions,
    progress: &mut dyn FnMut(String),
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<(u64, u64)> {
    let include = packages(o).join(",");
    let mut argv: Vec<String> = Vec::new();
    let name = match o.bootstrapper {
        Bootstrapper::Mmdebstrap => {
            argv.extend([
                "mmdebstrap".into(),
                "--mode=root".into(),
                "--variant=minbase".into(),
                "--verbose".into(),
                format!("--architectures={}", o.arch),
                format!("--components={}", o.components.join(",")),
                format!("--include={include}"),
                "--aptopt=Acquire::Languages \"none\"".into(),
                "--aptopt=APT::Install-Recommends \"0\"".into(),
                // Temporary (not in the image): dpkg without fsync while we build.
                "--setup-hook=mkdir -p \"$1/etc/dpkg/dpkg.cfg.d\" && echo force-unsafe-io > \"$1/etc/dpkg/dpkg.cfg.d/diskforge-unsafe-io\"".into(),
                format!("--customize-hook=chroot \"$1\" {MAKE_INITRAMFS}"),
            ]);
            if let Some(cache) = &o.apt_cache {
                let c = cache.display().to_string();
                argv.extend([
                    "--skip=essential/unlink".into(),
                    "--setup-hook=mkdir -p \"$1/var/cache/apt/archives\"".into(),
                    format!("--setup-hook=sync-in '{c}' /var/cache/apt/archives/"),
                    format!("--customize-hook=sync-out /var/cache/apt/archives '{c}'"),
                ]);
            }
            argv.push(o.release.clone());
            argv.push(tree.display().to_string());
            argv.extend(o.sources.iter().cloned());
            "mmdebstrap"
        }
        Bootstrapper::Debootstrap => {
            argv.extend([
                "debootstrap".into(),
                "--variant=minbase".into(),
                format!("--arch={}", o.arch),
                format!("--components={}", o.components.join(",")),
                format!("--include={include}"),
            ]);
            if let Some(cache) = &o.apt_cache {
                argv.push(format!("--cache-dir={}", cache.display()));
            }
            argv.push(o.release.clone());
            argv.push(tree.display().to_string());
            argv.push(o.mirror.clone());
            "debootstrap"
        }
    };
    let mut fetched = Fetched::default();
    run_streamed(name, &argv, &mut fetched, progress, cancel)?;
    if o.bootstrapper == Bootstrapper::Debootstrap {
        // debootstrap knows one suite: bring in -updates and -security like dib's dist-upgrade.
        write_sources(tree, o)?;
        let script = format!(
            "set -e\nmount -t proc proc \"$1/proc\"\nexport DEBIAN_FRONTEND=noninteractive\nchroot \"$1\" apt-get -q update\nchroot \"$1\" apt-get -q -y -o Dpkg::Options::=--force-unsafe-io dist-upgrade\nchroot \"$1\" {MAKE_INITRAMFS}\n"
        );
        let argv: Vec<String> = ["sh", "-c", &script, "sh", &tree.display().to_string()]
            .map(String::from)
            .to_vec();
        run_streamed(
            "apt-get dist-upgrade",
            &argv,
            &mut fetched,
            progress,
            cancel,
        )?;
    }
    Ok((fetched.packages, fetched.bytes))
}

/// `argv` under `unshare --mount --pid --fork --kill-child` (so every mount it makes and
/// every process it starts die with it), output lines into `progress`; the last lines of
/// output go into the error when it fails.
fn run_streamed(
    what: &str,
    argv: &[String],
    fetched: &mut Fetched,
    progress: &mut dyn FnMut(String),
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<()> {
    let cmd = Cmd::new("setsid")
        .args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            "exec \"$@\" 2>&1",
            "sh",
        ])
        .args(argv)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // The kernel's postinst hook makes no initramfs: MAKE_INITRAMFS does, once.
        .env("INITRD", "No");
    let mut child = cmd
        .spawn_streaming()
        .map_err(tool_err(&format!("starting {what}")))?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut stage = format!("{what}: starting");
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            drop(child);
            return Err(Error::Interrupted {
                step: format!("debian-minimal base ({what})"),
            });
        }
        if Instant::now() > deadline {
            drop(child);
            return Err(Error::Usage {
                field: "debian-minimal base".into(),
                value: what.into(),
                reason: "did not finish within an hour".into(),
            });
        }
        match child.next_line(Instant::now() + Duration::from_millis(200)) {
            NextLine::Line(l) => {
                if let Some(s) = l.strip_prefix("I: ")
                    && !s.starts_with("Retrieving")
                    && !s.starts_with("Validating")
                {
                    stage = format!("{what}: {}", s.trim_end_matches("..."));
                }
                if fetched.line(&l) || l.starts_with("I: ") {
                    progress(fetched.message(&stage));
                }
                tail.push_back(l);
                if tail.len() > 30 {
                    tail.pop_front();
                }
            }
            NextLine::TimedOut => continue,
            NextLine::Closed => break,
        }
    }
    let fin = child
        .finish(Duration::from_secs(30))
        .map_err(tool_err(what))?;
    if !fin.status.success() {
        let lines: Vec<String> = tail.into_iter().collect();
        return Err(Error::Tool {
            what: format!("{what} failed; its last lines:\n{}", lines.join("\n")),
            source: Box::new(fin.error()),
        });
    }
    Ok(())
}

fn write_sources(tree: &Path, o: &DebianOptions) -> Result<()> {
    let p = tree.join("etc/apt/sources.list");
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(io_err("creating", d))?;
    }
    let mut text = o.sources.join("\n");
    text.push('\n');
    fs::write(&p, text).map_err(io_err("writing", &p))
}

/// The path of the build-time dpkg setting that [`remove_build_settings`] takes out again.
pub const UNSAFE_IO_CONF: &str = "etc/dpkg/dpkg.cfg.d/diskforge-unsafe-io";

/// apt sources as dib writes them, dpkg's unsafe-io for later installs, apt lists and the
/// package cache removed.
fn configure(tree: &Path, o: &DebianOptions) -> Result<()> {
    let write = |rel: &str, text: String| -> Result<()> {
        let p = tree.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        fs::write(&p, text).map_err(io_err("writing", &p))
    };
    write_sources(tree, o)?;
    // mmdebstrap writes the sources into sources.list too; one copy only.
    let _ = fs::remove_file(tree.join("etc/apt/sources.list.d/0000sources.list"));
    write(UNSAFE_IO_CONF, "force-unsafe-io\n".into())?;
    write(
        "etc/apt/apt.conf.d/95disable-recommends",
        "APT::Install-Recommends \"0\";\nApt::Install-Suggests \"0\";\n".into(),
    )?;
    let lists = tree.join("var/lib/apt/lists");
    if lists.is_dir() {
        for e in fs::read_dir(&lists).map_err(io_err("reading", &lists))? {
            let p = e.map_err(io_err("reading", &lists))?.path();
            if p.is_file() {
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
            }
        }
    }
    let archives = tree.join("var/cache/apt/archives");
    if archives.is_dir() {
        for e in fs::read_dir(&archives).map_err(io_err("reading", &archives))? {
            let p = e.map_err(io_err("reading", &archives))?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
            }
        }
    }
    Ok(())
}

/// Take out the build-time settings (dpkg's unsafe-io) before the filesystems are made.
pub fn remove_build_settings(tree: &Path) -> Result<()> {
    let p = tree.join(UNSAFE_IO_CONF);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", &p)(e)),
    }
}

/// A one-shot systemd unit that prints `marker` on the serial console once the system is up
/// (the boot check waits for it) and, with `poweroff`, powers the machine off.
pub fn install_marker_unit(tree: &Path, marker: &str, poweroff: bool) -> Result<()> {
    let unit = format!(
        "[Unit]\nDescription=diskforge boot marker\nAfter=multi-user.target\n\n\
         [Service]\nType=oneshot\nStandardOutput=tty\nTTYPath=/dev/ttyS0\n\
         ExecStart=/bin/echo {marker}\n{}\n[Install]\nWantedBy=multi-user.target\n",
        if poweroff {
            "ExecStartPost=/bin/systemctl --no-block poweroff\n"
        } else {
            ""
        }
    );
    let dir = tree.join("etc/systemd/system");
    let wants = dir.join("multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(io_err("creating", &wants))?;
    let path = dir.join("diskforge-marker.service");
    fs::write(&path, unit).map_err(io_err("writing", &path))?;
    let link = wants.join("diskforge-marker.service");
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("../diskforge-marker.service", &link)
            .map_err(io_err("linking", &link))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_apt_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            source_from_deb822(deb822, false).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            source_from_deb822(deb822, true).as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        let only_security =
            "Types: deb\nURIs: http://s/debian-security\nSuites: bookworm-security\n";
        assert_eq!(source_from_deb822(only_security, false), None);
        let list = "# x\ndeb http://security.debian.org/ bookworm-security main\ndeb [arch=amd64] http://m/debian bookworm main\n";
        assert_eq!(
            source_from_list(list, false).as_deref(),
            Some("http://m/debian")
        );
        assert_eq!(
            source_from_list(list, true).as_deref(),
            Some("http://security.debian.org/")
        );
    }

    #[test]
    fn sources_as_dib_writes_them() {
        let c = vec!["main".to_owned(), "contrib".to_owned()];
        assert_eq!(
            default_sources("http://m/debian", "http://s/", "", "bookworm", &c),
            [
                "deb http://m/debian bookworm main contrib",
                "deb http://m/debian bookworm-updates main contrib",
                "deb http://s/ bookworm-security main contrib"
            ]
        );
        assert_eq!(
            default_sources("http://m/debian", "http://s/", "", "unstable", &c),
            ["deb http://m/debian unstable main contrib"]
        );
        assert_eq!(
            sources_from_conf(
                "default:deb http://m/debian bookworm main\nsec:deb http://s/ x main\n"
            ),
            ["deb http://m/debian bookworm main", "deb http://s/ x main"]
        );
        assert_eq!(
            sources_from_list(
                "# c\ndeb [arch=amd64] http://m/ b main\n\ndeb-src http://m/ b main\n"
            ),
            [
                "deb [arch=amd64] http://m/ b main",
                "deb-src http://m/ b main"
            ]
        );
    }

    #[test]
    fn apt_progress_lines_are_counted() {
        let mut f = Fetched::default();
        assert!(f.line("Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]"));
        assert!(f.line(
            "Get:12 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]"
        ));
        assert!(f.line("I: Retrieving libc6 2.36-9"));
        assert!(!f.line("Unpacking libc6 ..."));
        assert_eq!(f.packages, 2);
        assert_eq!(f.bytes, 2_908_000);
        assert_eq!(parse_apt_size("1,234 B"), 1234);
        assert_eq!(parse_apt_size("12.5 MB"), 12_500_000);
        assert_eq!(parse_apt_size("junk"), 0);
    }

    #[test]
    fn cache_key_covers_every_input() {
        let o = DebianOptions {
            release: "bookworm".into(),
            mirror: "http://m/debian".into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
            sources: vec!["deb http://m/debian bookworm main".into()],
            include: vec!["b".into(), "a".into()],
            bootstrapper: Bootstrapper::Mmdebstrap,
            apt_cache: Some("/c".into()),
            store: "/s".into(),
            no_cache: false,
            max_age: Duration::from_secs(1),
        };
        let k = cache_key(&o);
        let mut same = o.clone();
        same.include = vec!["a".into(), "b".into()];
        same.store = "/elsewhere".into();
        same.apt_cache = None;
        same.sources = vec!["deb  http://m/debian bookworm main".into()];
        same.mirror = "http://m/debian/".into();
        assert_eq!(cache_key(&same), k);
        for f in [
            |o: &mut DebianOptions| o.release = "trixie".into(),
            |o: &mut DebianOptions| o.mirror = "http://n/debian".into(),
            |o: &mut DebianOptions| o.components.push("contrib".into()),
            |o: &mut DebianOptions| o.arch = "arm64".into(),
            |o: &mut DebianOptions| o.include.push("vim".into()),
            |o: &mut DebianOptions| {
                o.sources
                    .push("deb http://s/ bookworm-security main".into())
            },
            |o: &mut DebianOptions| o.bootstrapper = Bootstrapper::Debootstrap,
        ] {
            let mut d = o.clone();
            f(&mut d);
            assert_ne!(cache_key(&d), k, "{d:?}");
        }
    }
}
