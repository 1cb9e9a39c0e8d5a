//! The shipped `debian-minimal` element, natively: a debootstrapped Debian base in the root
//! tree, kept in the diskforge-layers store (keyed by release, mirror, architecture,
//! components and package set) so that a warm build copies it in seconds instead of running
//! debootstrap again.
//!
//! dib's `debian-minimal` runs debootstrap in `root.d` and installs the kernel later through
//! `package-installs`; we put the kernel and initramfs-tools into the debootstrap (`--include`)
//! so that they land in the cached base too. The apt sources point at the mirror
//! (`DIB_DISTRIBUTION_MIRROR`, default the one in the host's own apt sources) and the apt
//! lists are removed afterwards, as dib does.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err, tool_err};

/// Packages the base gets besides debootstrap's `minbase`: a kernel, its initramfs generator,
/// an init, and what `vm` images need to come up on a serial console.
pub const BASE_PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "e2fsprogs",
];

/// What to debootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianOptions {
    /// `DIB_RELEASE` (default the host's `VERSION_CODENAME`).
    pub release: String,
    /// `DIB_DISTRIBUTION_MIRROR` (default the host's apt mirror).
    pub mirror: String,
    /// `DIB_DEBIAN_COMPONENTS` (default `main`).
    pub components: Vec<String>,
    /// dib's architecture name (amd64 …).
    pub arch: String,
    /// Packages added to the base (sorted; part of the cache key).
    pub include: Vec<String>,
    /// The layers store holding cached bases (default `DIB_IMAGE_CACHE/layers`).
    pub store: PathBuf,
    /// Ignore (and replace) a cached base.
    pub no_cache: bool,
    /// A cached base older than this is rebuilt (dib's `DIB_DEBOOTSTRAP_CACHE` refresh).
    pub max_age: Duration,
}

/// What [`debian_root`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebianReport {
    /// The cache key.
    pub key: String,
    /// True when the base came from the cache.
    pub cached: bool,
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
        if let Some(m) = mirror_from_deb822(&text) {
            return Some(m);
        }
    }
    let text = fs::read_to_string("/etc/apt/sources.list").ok()?;
    mirror_from_list(&text)
}

/// The first non-security Debian mirror of a deb822 `.sources` text.
pub fn mirror_from_deb822(text: &str) -> Option<String> {
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
            && !suites.contains("-security")
            && let Some(uri) = uris.split_whitespace().next()
        {
            return Some(uri.to_owned());
        }
    }
    None
}

/// The first `deb URI SUITE …` line of a one-line-style sources.list that is not `-security`.
pub fn mirror_from_list(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
        (w.next()? == "deb").then_some(())?;
        let uri = w.next()?;
        let suite = w.next()?;
        (!suite.contains("-security")).then(|| uri.to_owned())
    })
}

/// The cache key: sha256 of everything that changes the base.
pub fn cache_key(o: &DebianOptions) -> String {
    use sha2::Digest as _;
    let mut include = o.include.clone();
    include.sort();
    let text = format!(
        "diskforge debian-minimal v1\nrelease={}\nmirror={}\narch={}\ncomponents={}\ninclude={}\n",
        o.release,
        o.mirror.trim_end_matches('/'),
        o.arch,
        o.components.join(","),
        include.join(",")
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

/// Make `tree` a Debian base: from the cache when a fresh entry exists, else debootstrap
/// (then stored). `tree` must be empty. Needs root (debootstrap's chroot, device nodes).
pub fn debian_root(tree: &Path, o: &DebianOptions) -> Result<DebianReport> {
    let started = Instant::now();
    let key = cache_key(o);
    let index_dir = o.store.join("debian-minimal");
    fs::create_dir_all(&index_dir).map_err(io_err("creating", &index_dir))?;
    let index = index_dir.join(format!("{key}.json"));
    // One builder at a time per key: the second waits, then finds the entry.
    let lock_path = index_dir.join(format!("{key}.lock"));
    let lock = fs::File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("locking", &lock_path)(e.into()))?;
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
        copy_tree(&dir, tree)?;
        return Ok(DebianReport {
            key,
            cached: true,
            millis: started.elapsed().as_millis() as u64,
        });
    }
    debootstrap(tree, o)?;
    configure(tree, o)?;
    // Store it: a layer tarball, imported (unpacked) into the store, then indexed.
    let tmp = tempfile::Builder::new()
        .prefix("debian-base.")
        .suffix(".tar")
        .tempfile_in(&index_dir)
        .map_err(io_err("creating a temporary file in", &index_dir))?;
    let opts = diskforge_layers::TarOptions {
        compression: diskforge_layers::Compression::None,
        clamp_mtime: None,
        overwrite: true,
    };
    let oci = |source| Error::Oci {
        source: Box::new(source),
    };
    let stats = diskforge_layers::write_layer(tree, tmp.path(), opts).map_err(oci)?;
    store.import_tarball(tmp.path()).map_err(oci)?;
    let entry = Entry {
        diff_id: stats.diff_id,
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

fn debootstrap(tree: &Path, o: &DebianOptions) -> Result<()> {
    let mut include = o.include.clone();
    include.sort();
    Cmd::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--arch={}", o.arch))
        .arg(format!("--components={}", o.components.join(",")))
        .arg(format!("--include={}", include.join(",")))
        .arg(&o.release)
        .arg(tree)
        .arg(&o.mirror)
        .timeout(Duration::from_secs(1800))
        .run()
        .map(|_| ())
        .map_err(tool_err("debootstrap"))
}

/// apt sources for the mirror, dpkg's unsafe-io for later installs, apt lists removed.
fn configure(tree: &Path, o: &DebianOptions) -> Result<()> {
    let write = |rel: &str, text: String| -> Result<()> {
        let p = tree.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        fs::write(&p, text).map_err(io_err("writing", &p))
    };
    write(
        "etc/apt/sources.list",
        format!(
            "deb {} {} {}\n",
            o.mirror,
            o.release,
            o.components.join(" ")
        ),
    )?;
    write(
        "etc/dpkg/dpkg.cfg.d/diskforge-unsafe-io",
        "force-unsafe-io\n".into(),
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
            mirror_from_deb822(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let only_security =
            "Types: deb\nURIs: http://s/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_from_deb822(only_security), None);
        let list = "# x\ndeb http://security.debian.org/ bookworm-security main\ndeb [arch=amd64] http://m/debian bookworm main\n";
        assert_eq!(mirror_from_list(list).as_deref(), Some("http://m/debian"));
    }

    #[test]
    fn cache_key_covers_every_input() {
        let o = DebianOptions {
            release: "bookworm".into(),
            mirror: "http://m/debian".into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
            include: vec!["b".into(), "a".into()],
            store: "/s".into(),
            no_cache: false,
            max_age: Duration::from_secs(1),
        };
        let k = cache_key(&o);
        let mut same = o.clone();
        same.include = vec!["a".into(), "b".into()];
        same.store = "/elsewhere".into();
        same.mirror = "http://m/debian/".into();
        assert_eq!(cache_key(&same), k);
        for f in [
            |o: &mut DebianOptions| o.release = "trixie".into(),
            |o: &mut DebianOptions| o.mirror = "http://n/debian".into(),
            |o: &mut DebianOptions| o.components.push("contrib".into()),
            |o: &mut DebianOptions| o.arch = "arm64".into(),
            |o: &mut DebianOptions| o.include.push("vim".into()),
        ] {
            let mut d = o.clone();
            f(&mut d);
            assert_ne!(cache_key(&d), k, "{d:?}");
        }
    }
}
