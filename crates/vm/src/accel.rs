//! KVM or TCG: a timed probe with the real kernel, its answer cached, re-probed when a cached
//! "kvm" fails.
//!
//! `/dev/kvm` existing proves little: on some hosts a tiny real-mode guest runs under KVM but
//! a real kernel hangs. [`probe_kvm`] therefore boots the host's kernel under KVM for
//! [`PROBE_TIME`] and looks for its `Linux version` banner on serial; otherwise TCG (which
//! prints it in < 0.3 s). The probe costs its full 2 s when KVM hangs, so the answer is
//! cached per kernel release: in this process always, and in `DIR/accel-RELEASE` when the
//! caller gives a cache directory ([`AccelCache`]). A cached answer can go stale (a module
//! reloaded, another host sharing the target dir): when a boot under a *cached* "kvm" fails
//! ([`AccelChoice::reprobe_on_failure`]), the launcher probes again ([`AccelCache::reprobe`]) and, when
//! the probe now says TCG, boots again under TCG. `DISKFORGE_ACCEL=kvm|tcg` skips the probe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diskforge_cmd::{Cmd, NextLine};
use serde::Serialize;

use crate::qemu;
pub use crate::qemu::Accel;

/// How long the KVM probe waits for the kernel's banner.
pub const PROBE_TIME: Duration = Duration::from_secs(2);
/// Environment variable that forces the accelerator (`kvm` or `tcg`) and skips the probe.
pub const ENV: &str = "DISKFORGE_ACCEL";
/// The line the kernel prints first on its console.
const BANNER: &str = "Linux version";

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelPolicy {
    /// `DISKFORGE_ACCEL` if set, else the cached answer, else the probe.
    #[default]
    Auto,
    /// KVM, no probe.
    Kvm,
    /// TCG, no probe.
    Tcg,
}

/// Where an accelerator choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSource {
    /// The caller's [`AccelPolicy`].
    Caller,
    /// The `DISKFORGE_ACCEL` environment variable.
    Env,
    /// An earlier probe's answer (this process or the cache file).
    Cache,
    /// A probe just now.
    Probe,
}

/// An accelerator and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Where the answer came from.
    pub source: AccelSource,
}

impl AccelChoice {
    /// Whether a failed boot should make us probe again: only a remembered "kvm" can be
    /// stale; a fresh probe, the caller's or the environment's word stands.
    pub fn reprobe_on_failure(&self) -> bool {
        self.accel == Accel::Kvm && self.source == AccelSource::Cache
    }
}

/// The choice for `policy`, given the environment's value, a cached answer and a probe
/// (called only when needed). Pure: [`AccelCache::resolve`] supplies the inputs.
pub fn choose(
    policy: AccelPolicy,
    env: Option<&str>,
    cached: Option<Accel>,
    probe: impl FnOnce() -> Accel,
) -> AccelChoice {
    let pick = |accel, source| AccelChoice { accel, source };
    match policy {
        AccelPolicy::Kvm => pick(Accel::Kvm, AccelSource::Caller),
        AccelPolicy::Tcg => pick(Accel::Tcg, AccelSource::Caller),
        AccelPolicy::Auto => {
            if let Some(a) = env.and_then(Accel::from_name) {
                pick(a, AccelSource::Env)
            } else if let Some(a) = cached {
                pick(a, AccelSource::Cache)
            } else {
                pick(probe(), AccelSource::Probe)
            }
        }
    }
}

/// Probe answers of this process, per cache key; the lock also makes concurrent boots
/// wait for one probe instead of each probing.
static MEMO: Mutex<BTreeMap<String, Accel>> = Mutex::new(BTreeMap::new());

/// Where probe answers are remembered: this process, and a file when a directory is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelCache {
    key: String,
    file: Option<PathBuf>,
}

impl AccelCache {
    /// The cache for kernel `release`; `dir` adds the file `dir/accel-RELEASE`.
    pub fn new(release: &str, dir: Option<&Path>) -> Self {
        AccelCache {
            key: release.to_owned(),
            file: dir.map(|d| d.join(format!("accel-{release}"))),
        }
    }

    /// The cache file, when there is one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn read_file(&self) -> Option<Accel> {
        let text = std::fs::read_to_string(self.file.as_ref()?).ok()?;
        Accel::from_name(&text)
    }

    fn store(&self, memo: &mut BTreeMap<String, Accel>, a: Accel) {
        memo.insert(self.key.clone(), a);
        if let Some(f) = &self.file
            && let Err(e) = std::fs::write(f, a.name())
        {
            // A cache that cannot be written costs a probe next time, nothing more.
            tracing::warn!(file = %f.display(), error = %e, "writing the accelerator cache");
        }
    }

    /// The accelerator for `policy` ([`choose`] with this cache), probing with `probe` when
    /// nothing is known; a probe's answer is stored.
    pub fn resolve(&self, policy: AccelPolicy, probe: impl FnOnce() -> Accel) -> AccelChoice {
        let env = std::env::var(ENV).ok();
        let mut memo = MEMO
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cached = memo.get(&self.key).copied().or_else(|| self.read_file());
        let choice = choose(policy, env.as_deref(), cached, probe);
        if choice.source == AccelSource::Probe {
            self.store(&mut memo, choice.accel);
        }
        choice
    }

    /// Forget the remembered answer, probe again with `probe` and remember the new answer.
    pub fn reprobe(&self, probe: impl FnOnce() -> Accel) -> Accel {
        let mut memo = MEMO
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        memo.remove(&self.key);
        let a = probe();
        self.store(&mut memo, a);
        a
    }
}

/// Boot `kernel_image` under KVM for [`PROBE_TIME`]; KVM when its banner appears on serial.
pub fn probe_kvm(kernel_image: &Path) -> Accel {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Accel::Tcg;
    }
    let mut argv = qemu::machine_args(Accel::Kvm, 256, 1);
    argv.extend(qemu::base_args());
    argv.extend([
        "-kernel".into(),
        kernel_image.display().to_string(),
        "-append".into(),
        qemu::BASE_CMDLINE.into(),
    ]);
    argv.extend(qemu::serial_args(qemu::Serial::Stdio));
    let start = Instant::now();
    let mut child = match Cmd::new(qemu::QEMU).args(&argv).spawn_streaming() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "KVM probe could not start QEMU");
            return Accel::Tcg;
        }
    };
    let deadline = start + PROBE_TIME;
    let mut found = false;
    while let NextLine::Line(l) = child.next_line(deadline) {
        if l.contains(BANNER) {
            found = true;
            break;
        }
    }
    // The probe VM is done either way; how it ended does not matter.
    let _ = child.finish(Duration::ZERO);
    tracing::debug!(
        kvm = found,
        secs = start.elapsed().as_secs_f64(),
        "KVM probe"
    );
    if found { Accel::Kvm } else { Accel::Tcg }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn choose_order_caller_env_cache_probe() {
        let never = || -> Accel { panic!("must not probe") };
        let c = choose(AccelPolicy::Tcg, Some("kvm"), Some(Accel::Kvm), never);
        assert_eq!((c.accel, c.source), (Accel::Tcg, AccelSource::Caller));
        let c = choose(AccelPolicy::Auto, Some("tcg"), Some(Accel::Kvm), never);
        assert_eq!((c.accel, c.source), (Accel::Tcg, AccelSource::Env));
        let c = choose(AccelPolicy::Auto, Some("bogus"), Some(Accel::Kvm), never);
        assert_eq!((c.accel, c.source), (Accel::Kvm, AccelSource::Cache));
        assert!(c.reprobe_on_failure());
        let c = choose(AccelPolicy::Auto, None, None, || Accel::Kvm);
        assert_eq!((c.accel, c.source), (Accel::Kvm, AccelSource::Probe));
        assert!(!c.reprobe_on_failure(), "a fresh probe stands");
        let c = choose(AccelPolicy::Auto, None, Some(Accel::Tcg), never);
        assert!(!c.reprobe_on_failure(), "only a cached kvm can be stale");
    }

    /// The file cache: probe once, then the file answers; a stale "kvm" is re-probed and
    /// replaced. (The process memo is keyed per release; each test uses its own.)
    #[test]
    fn file_cache_and_reprobe() {
        let d = tempfile::tempdir().unwrap();
        let probes = Cell::new(0);
        let probe = |a| {
            let p = &probes;
            move || {
                p.set(p.get() + 1);
                a
            }
        };
        let cache = AccelCache::new("test-file-cache", Some(d.path()));
        let c = cache.resolve(AccelPolicy::Auto, probe(Accel::Kvm));
        assert_eq!(
            (c.accel, c.source, probes.get()),
            (Accel::Kvm, AccelSource::Probe, 1)
        );
        assert_eq!(
            std::fs::read_to_string(cache.file().unwrap()).unwrap(),
            "kvm"
        );
        // Another process: only the file knows.
        MEMO.lock().unwrap().remove("test-file-cache");
        let c = cache.resolve(AccelPolicy::Auto, probe(Accel::Tcg));
        assert_eq!(
            (c.accel, c.source, probes.get()),
            (Accel::Kvm, AccelSource::Cache, 1)
        );
        assert!(c.reprobe_on_failure());
        // The boot under the cached kvm failed: probe again, now TCG, remembered both ways.
        assert_eq!(cache.reprobe(probe(Accel::Tcg)), Accel::Tcg);
        assert_eq!(probes.get(), 2);
        assert_eq!(
            std::fs::read_to_string(cache.file().unwrap()).unwrap(),
            "tcg"
        );
        let c = cache.resolve(AccelPolicy::Auto, probe(Accel::Kvm));
        assert_eq!(
            (c.accel, c.source, probes.get()),
            (Accel::Tcg, AccelSource::Cache, 2)
        );
    }

    #[test]
    fn memory_cache_without_dir() {
        let probes = Cell::new(0);
        let cache = AccelCache::new("test-memory-cache", None);
        for _ in 0..3 {
            let c = cache.resolve(AccelPolicy::Auto, || {
                probes.set(probes.get() + 1);
                Accel::Tcg
            });
            assert_eq!(c.accel, Accel::Tcg);
        }
        assert_eq!(probes.get(), 1);
        assert_eq!(cache.file(), None);
    }

    #[test]
    fn garbage_cache_file_means_probe() {
        let d = tempfile::tempdir().unwrap();
        let cache = AccelCache::new("test-garbage", Some(d.path()));
        std::fs::write(cache.file().unwrap(), "maybe").unwrap();
        let c = cache.resolve(AccelPolicy::Auto, || Accel::Tcg);
        assert_eq!(c.source, AccelSource::Probe);
    }
}
