//! LVM through the lvm2 command line: `pvcreate`, `vgcreate`, `lvcreate` (sizes in bytes or
//! extents, `%VG`/`%FREE`), `lvextend`, `vgchange -ay/-an`, `lvremove`, `vgremove`,
//! `pvremove`, and typed `pvs`/`vgs`/`lvs` reports parsed from `--reportformat json`.
//!
//! Every call runs `lvm SUBCOMMAND` through `diskforge-cmd` with an optional `--config`
//! string: [`Lvm::without_udev`] adds `activation { udev_sync=0 udev_rules=0 } backup {
//! backup=0 archive=0 }` and `DM_DISABLE_UDEV=1` for VMs, containers and initramfs-like
//! environments with no udev and a read-only `/etc`; [`Lvm::only_devices`] adds a device
//! filter so reports and scans see only the devices you name.
//!
//! Guards ([`VolumeGroup`], [`LogicalVolume`]) own what they created: teardown deactivates
//! and removes their LV, or their VG and the PVs they initialised, never anything else.
//!
//! It deliberately does not manage thin pools, RAID, caches or snapshots (pass `lvcreate`
//! options through [`LvCreate::extra`]), and needs a kernel with device-mapper for anything
//! that activates. Follows lvm(8), lvcreate(8), lvmreport(7) and lvm.conf(5) of lvm2 2.03.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use diskforge_cmd::Cmd;
use serde::{Deserialize, Deserializer, Serialize};

/// `--config` for environments without udev and with a read-only `/etc`.
pub const NO_UDEV_CONFIG: &str =
    "activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }";

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An lvm command failed (or lvm2 is missing).
    #[error("lvm {op} {object}")]
    Run {
        /// The subcommand (`vgcreate`, `lvs`…).
        op: &'static str,
        /// The device, VG or LV it was about.
        object: String,
        /// What the runner reported (boxed: it carries stderr).
        #[source]
        source: Box<diskforge_cmd::Error>,
    },
    /// A report was not the JSON we expect.
    #[error("parsing lvm {op} report")]
    Parse {
        /// The report command.
        op: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A size string that does not parse: `input` as given, `reason` why (for byte sizes, the
    /// diskforge-size grammar's reason).
    #[error(
        "invalid LV size {input:?}: {reason} (a size such as 512MiB, extents such as 10e, \
         N%VG or N%FREE)"
    )]
    InvalidSize {
        /// The text that was refused.
        input: String,
        /// Why.
        reason: String,
    },
    /// Several teardown steps failed; all of them are listed.
    #[error("tearing down {object}: {}", errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; "))]
    Teardown {
        /// The VG or LV.
        object: String,
        /// Every failure, in order.
        errors: Vec<Error>,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How lvm is invoked: extra `--config` and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lvm {
    /// `--config` text; default none.
    pub config: Option<String>,
    /// Set `DM_DISABLE_UDEV=1`; default false.
    pub disable_udev: bool,
}

impl Lvm {
    /// lvm as configured on the host (udev present).
    pub fn new() -> Self {
        Lvm::default()
    }

    /// lvm for environments without udev: [`NO_UDEV_CONFIG`] and `DM_DISABLE_UDEV=1`.
    pub fn without_udev() -> Self {
        Lvm {
            config: Some(NO_UDEV_CONFIG.to_owned()),
            disable_udev: true,
        }
    }

    /// Restrict lvm to these devices (`devices { filter=[ "a|^DEV$|", …, "r|.*|" ] }`), so it
    /// neither scans nor reports anything else.
    pub fn only_devices(mut self, devices: &[&Path]) -> Self {
        let mut f: Vec<String> = devices
            .iter()
            .map(|d| format!("\"a|^{}$|\"", d.display()))
            .collect();
        f.push("\"r|.*|\"".to_owned());
        let filter = format!("devices {{ filter=[ {} ] }}", f.join(", "));
        self.config = Some(match self.config.take() {
            Some(c) => format!("{c} {filter}"),
            None => filter,
        });
        self
    }

    /// The [`Cmd`] for `lvm SUB` with our config and environment (before the arguments).
    pub fn cmd(&self, sub: &str) -> Cmd {
        let mut c = Cmd::new("lvm").arg(sub);
        if let Some(cfg) = &self.config {
            c = c.args(["--config", cfg]);
        }
        if self.disable_udev {
            c = c.env("DM_DISABLE_UDEV", "1");
        }
        c
    }

    fn run(&self, op: &'static str, object: impl Into<String>, args: &[String]) -> Result<()> {
        self.cmd(op).args(args).run().map_err(|e| Error::Run {
            op,
            object: object.into(),
            source: Box::new(e),
        })?;
        Ok(())
    }

    /// `pvcreate -y DEVICE`.
    pub fn pvcreate(&self, device: &Path) -> Result<()> {
        self.run(
            "pvcreate",
            device.display().to_string(),
            &["-y".into(), device.display().to_string()],
        )
    }

    /// `vgcreate [-s EXTENT_SIZE] NAME PV…`.
    pub fn vgcreate(&self, name: &str, pvs: &[&Path], extent_size: Option<u64>) -> Result<()> {
        let mut a = Vec::new();
        if let Some(s) = extent_size {
            a.extend(["-s".to_owned(), format!("{s}b")]);
        }
        a.push(name.to_owned());
        a.extend(pvs.iter().map(|p| p.display().to_string()));
        self.run("vgcreate", name, &a)
    }

    /// `lvcreate -y -n NAME (-L SIZE | -l EXTENTS) [-an] [EXTRA] VG`.
    pub fn lvcreate(&self, vg: &str, opts: &LvCreate) -> Result<()> {
        self.run("lvcreate", format!("{vg}/{}", opts.name), &opts.args(vg))
    }

    /// `lvextend (-L|-l) [+]SIZE [-r] VG/LV`. `resize_fs` (`-r`) grows the filesystem too
    /// (fsadm: needs the LV active).
    pub fn lvextend(
        &self,
        vg: &str,
        lv: &str,
        size: LvSize,
        grow_by: bool,
        resize_fs: bool,
    ) -> Result<()> {
        let mut a = size.args(grow_by);
        if resize_fs {
            a.push("-r".into());
        }
        a.push(format!("{vg}/{lv}"));
        self.run("lvextend", format!("{vg}/{lv}"), &a)
    }

    /// `vgchange -ay VG` (activate) or `vgchange -an VG`.
    pub fn vgchange_activate(&self, vg: &str, active: bool) -> Result<()> {
        let flag = if active { "-ay" } else { "-an" };
        self.run("vgchange", vg, &[flag.into(), vg.into()])
    }

    /// `lvchange -ay|-an VG/LV`.
    pub fn lvchange_activate(&self, vg: &str, lv: &str, active: bool) -> Result<()> {
        let flag = if active { "-ay" } else { "-an" };
        self.run(
            "lvchange",
            format!("{vg}/{lv}"),
            &[flag.into(), format!("{vg}/{lv}")],
        )
    }

    /// `vgmknodes VG`: create `/dev/VG/LV` and `/dev/mapper` nodes where no udev does.
    pub fn vgmknodes(&self, vg: &str) -> Result<()> {
        self.run("vgmknodes", vg, &[vg.into()])
    }

    /// `lvremove -y VG/LV`.
    pub fn lvremove(&self, vg: &str, lv: &str) -> Result<()> {
        self.run(
            "lvremove",
            format!("{vg}/{lv}"),
            &["-y".into(), format!("{vg}/{lv}")],
        )
    }

    /// `vgremove -y -f VG` (removes its LVs too).
    pub fn vgremove(&self, vg: &str) -> Result<()> {
        self.run("vgremove", vg, &["-y".into(), "-f".into(), vg.into()])
    }

    /// `pvremove -y DEVICE`.
    pub fn pvremove(&self, device: &Path) -> Result<()> {
        self.run(
            "pvremove",
            device.display().to_string(),
            &["-y".into(), device.display().to_string()],
        )
    }

    fn report<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        key: &str,
        columns: &str,
        select: &[String],
    ) -> Result<Vec<T>> {
        let out = self
            .cmd(op)
            .args([
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                columns,
            ])
            .args(select)
            .run()
            .map_err(|e| Error::Run {
                op,
                object: select.join(" "),
                source: Box::new(e),
            })?;
        parse_report(&String::from_utf8_lossy(&out.stdout), key)
            .map_err(|source| Error::Parse { op, source })
    }

    /// `pvs` for `devices` (all visible PVs when empty).
    pub fn pvs(&self, devices: &[&Path]) -> Result<Vec<Pv>> {
        let sel: Vec<String> = devices.iter().map(|d| d.display().to_string()).collect();
        self.report("pvs", "pv", PVS_COLUMNS, &sel)
    }

    /// `vgs [VG]`.
    pub fn vgs(&self, vg: Option<&str>) -> Result<Vec<Vg>> {
        let sel: Vec<String> = vg.into_iter().map(str::to_owned).collect();
        self.report("vgs", "vg", VGS_COLUMNS, &sel)
    }

    /// `lvs [VG]`.
    pub fn lvs(&self, vg: Option<&str>) -> Result<Vec<Lv>> {
        let sel: Vec<String> = vg.into_iter().map(str::to_owned).collect();
        self.report("lvs", "lv", LVS_COLUMNS, &sel)
    }
}

/// A logical volume size for `lvcreate`/`lvextend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LvSize {
    /// Bytes (`-L Nb`; lvm rounds up to whole extents).
    Bytes(u64),
    /// Extents (`-l N`).
    Extents(u64),
    /// Percent of the VG (`-l N%VG`).
    PercentVg(u8),
    /// Percent of the VG's free space (`-l N%FREE`).
    PercentFree(u8),
}

impl LvSize {
    /// `-L`/`-l` and the value, with `+` when growing by it.
    pub fn args(self, grow_by: bool) -> Vec<String> {
        let plus = if grow_by { "+" } else { "" };
        match self {
            LvSize::Bytes(n) => vec!["-L".into(), format!("{plus}{n}b")],
            LvSize::Extents(n) => vec!["-l".into(), format!("{plus}{n}")],
            LvSize::PercentVg(p) => vec!["-l".into(), format!("{plus}{p}%VG")],
            LvSize::PercentFree(p) => vec!["-l".into(), format!("{plus}{p}%FREE")],
        }
    }
}

impl FromStr for LvSize {
    type Err = Error;
    /// `512MiB`, `2GB`, `1048576` (bytes, in the diskforge-size grammar, where bare `G` is
    /// 10^9), `100e` (extents), `50%VG`, `100%FREE`. lvm gets bytes (`-L Nb`) or extents,
    /// never a re-spelled unit.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidSize {
            input: s.to_owned(),
            reason,
        };
        let pct = |v: &str| -> Result<u8> {
            v.parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| bad("a percentage is a whole number from 1 to 100".into()))
        };
        if let Some(v) = s.strip_suffix("%VG") {
            return Ok(LvSize::PercentVg(pct(v)?));
        }
        if let Some(v) = s.strip_suffix("%FREE") {
            return Ok(LvSize::PercentFree(pct(v)?));
        }
        if let Some(v) = s.strip_suffix('e') {
            return v
                .parse()
                .map(LvSize::Extents)
                .map_err(|_| bad("extents are a whole number: 10e".into()));
        }
        diskforge_size::parse(s)
            .map(|b| LvSize::Bytes(b.bytes()))
            .map_err(|e| bad(e.reason.to_string()))
    }
}

/// What `lvcreate` makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvCreate {
    /// LV name.
    pub name: String,
    /// Size.
    pub size: LvSize,
    /// Create inactive (`-an`, implies no zeroing); default false.
    #[serde(default)]
    pub inactive: bool,
    /// Extra lvcreate options (`--type`, `-i`, `--addtag`…); default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

impl LvCreate {
    /// An active LV `name` of `size`.
    pub fn new(name: &str, size: LvSize) -> Self {
        LvCreate {
            name: name.to_owned(),
            size,
            inactive: false,
            extra: Vec::new(),
        }
    }

    /// The argv after `lvm lvcreate`.
    pub fn args(&self, vg: &str) -> Vec<String> {
        let mut a = vec!["-y".to_owned(), "-n".to_owned(), self.name.clone()];
        a.extend(self.size.args(false));
        if self.inactive {
            a.extend(["-an".to_owned(), "-Zn".to_owned()]);
        }
        a.extend(self.extra.iter().cloned());
        a.push(vg.to_owned());
        a
    }
}

/// `pvs -o` columns parsed into [`Pv`].
pub const PVS_COLUMNS: &str = "pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free,pv_uuid";
/// `vgs -o` columns parsed into [`Vg`].
pub const VGS_COLUMNS: &str = "vg_name,vg_uuid,vg_attr,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,pv_count,lv_count";
/// `lvs -o` columns parsed into [`Lv`].
pub const LVS_COLUMNS: &str =
    "lv_name,vg_name,lv_uuid,lv_attr,lv_size,lv_path,lv_dm_path,lv_active,seg_count";

/// lvm prints every number as a string (with `--units b --nosuffix`: plain bytes).
fn num<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(serde::de::Error::custom)
}

fn opt_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then_some(s))
}

/// A physical volume ([`PVS_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pv {
    /// `pv_name`: the device.
    pub pv_name: String,
    /// `vg_name`, when the PV belongs to a VG.
    #[serde(deserialize_with = "opt_str")]
    pub vg_name: Option<String>,
    /// `pv_fmt` (`lvm2`).
    pub pv_fmt: String,
    /// `pv_attr` (`a--`: allocatable).
    pub pv_attr: String,
    /// `pv_size` in bytes.
    #[serde(deserialize_with = "num")]
    pub pv_size: u64,
    /// `pv_free` in bytes.
    #[serde(deserialize_with = "num")]
    pub pv_free: u64,
    /// `pv_uuid`.
    pub pv_uuid: String,
}

/// A volume group ([`VGS_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vg {
    /// `vg_name`.
    pub vg_name: String,
    /// `vg_uuid`.
    pub vg_uuid: String,
    /// `vg_attr` (`wz--n-`).
    pub vg_attr: String,
    /// `vg_size` in bytes.
    #[serde(deserialize_with = "num")]
    pub vg_size: u64,
    /// `vg_free` in bytes.
    #[serde(deserialize_with = "num")]
    pub vg_free: u64,
    /// `vg_extent_size` in bytes.
    #[serde(deserialize_with = "num")]
    pub vg_extent_size: u64,
    /// `vg_extent_count`.
    #[serde(deserialize_with = "num")]
    pub vg_extent_count: u64,
    /// `vg_free_count` (free extents).
    #[serde(deserialize_with = "num")]
    pub vg_free_count: u64,
    /// `pv_count`.
    #[serde(deserialize_with = "num")]
    pub pv_count: u64,
    /// `lv_count`.
    #[serde(deserialize_with = "num")]
    pub lv_count: u64,
}

/// A logical volume ([`LVS_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lv {
    /// `lv_name`.
    pub lv_name: String,
    /// `vg_name`.
    pub vg_name: String,
    /// `lv_uuid`.
    pub lv_uuid: String,
    /// `lv_attr` (`-wi-a-----`: linear, writeable, active; `X` = state unknown without
    /// device-mapper).
    pub lv_attr: String,
    /// `lv_size` in bytes.
    #[serde(deserialize_with = "num")]
    pub lv_size: u64,
    /// `lv_path` (`/dev/VG/LV`).
    pub lv_path: String,
    /// `lv_dm_path` (`/dev/mapper/VG-LV`).
    pub lv_dm_path: String,
    /// `lv_active` (`active` or empty).
    #[serde(deserialize_with = "opt_str")]
    pub lv_active: Option<String>,
    /// `seg_count`.
    #[serde(deserialize_with = "num")]
    pub seg_count: u64,
}

impl Lv {
    /// Whether the LV is active (`lv_active` = `active`).
    pub fn is_active(&self) -> bool {
        self.lv_active.as_deref() == Some("active")
    }
}

/// Parse `{"report":[{KEY:[…]}]}` from `--reportformat json` into rows.
pub fn parse_report<T: serde::de::DeserializeOwned>(
    json: &str,
    key: &str,
) -> serde_json::Result<Vec<T>> {
    #[derive(Deserialize)]
    struct Top {
        report: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let top: Top = serde_json::from_str(json)?;
    let mut rows = Vec::new();
    for mut section in top.report {
        if let Some(v) = section.remove(key) {
            rows.extend(serde_json::from_value::<Vec<T>>(v)?);
        }
    }
    Ok(rows)
}

fn teardown_result(object: String, errors: Vec<Error>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Teardown { object, errors })
    }
}

/// A volume group this process created, with the PVs it initialised. Teardown deactivates it,
/// removes it (and its LVs) and wipes those PV labels.
#[derive(Debug)]
#[must_use = "a VolumeGroup removes itself on drop; call teardown() to see errors"]
pub struct VolumeGroup {
    lvm: Lvm,
    name: Option<String>,
    created_pvs: Vec<PathBuf>,
}

impl VolumeGroup {
    /// `pvcreate` each device, then `vgcreate NAME`. If `vgcreate` fails, the PVs just
    /// initialised are removed again.
    pub fn create(
        lvm: &Lvm,
        name: &str,
        devices: &[&Path],
        extent_size: Option<u64>,
    ) -> Result<Self> {
        let mut created = Vec::new();
        let undo = |created: &[PathBuf]| {
            for p in created {
                if let Err(e) = lvm.pvremove(p) {
                    tracing::warn!(error = %e, "undoing pvcreate");
                }
            }
        };
        for d in devices {
            if let Err(e) = lvm.pvcreate(d) {
                undo(&created);
                return Err(e);
            }
            created.push(d.to_path_buf());
        }
        if let Err(e) = lvm.vgcreate(name, devices, extent_size) {
            undo(&created);
            return Err(e);
        }
        Ok(VolumeGroup {
            lvm: lvm.clone(),
            name: Some(name.to_owned()),
            created_pvs: created,
        })
    }

    /// The VG name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// `lvcreate` in this VG; the returned guard removes that LV.
    pub fn create_lv(&self, opts: &LvCreate) -> Result<LogicalVolume> {
        self.lvm.lvcreate(self.name(), opts)?;
        Ok(LogicalVolume {
            lvm: self.lvm.clone(),
            vg: self.name().to_owned(),
            name: Some(opts.name.clone()),
        })
    }

    /// This VG's `vgs` row.
    pub fn report(&self) -> Result<Option<Vg>> {
        Ok(self.lvm.vgs(Some(self.name()))?.into_iter().next())
    }

    /// Deactivate, remove the VG, then wipe the PVs we created. Every step is tried; all
    /// failures are reported together.
    pub fn teardown(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        let Some(name) = self.name.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        if let Err(e) = self.lvm.vgchange_activate(&name, false) {
            errors.push(e);
        }
        if let Err(e) = self.lvm.vgremove(&name) {
            errors.push(e);
        } else {
            for p in std::mem::take(&mut self.created_pvs) {
                if let Err(e) = self.lvm.pvremove(&p) {
                    errors.push(e);
                }
            }
        }
        teardown_result(name, errors)
    }
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::error!(error = %e, "VolumeGroup dropped without teardown");
        }
    }
}

/// A logical volume this process created. Teardown deactivates and removes it.
#[derive(Debug)]
#[must_use = "a LogicalVolume removes itself on drop; call teardown() to see errors"]
pub struct LogicalVolume {
    lvm: Lvm,
    vg: String,
    name: Option<String>,
}

impl LogicalVolume {
    /// `VG/LV`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg, self.name.as_deref().unwrap_or_default())
    }

    /// `/dev/VG/LV`.
    pub fn path(&self) -> PathBuf {
        Path::new("/dev").join(self.full_name())
    }

    /// `/dev/mapper/VG-LV` (dashes in names doubled, as device-mapper does).
    pub fn dm_path(&self) -> PathBuf {
        let esc = |s: &str| s.replace('-', "--");
        Path::new("/dev/mapper").join(format!(
            "{}-{}",
            esc(&self.vg),
            esc(self.name.as_deref().unwrap_or_default())
        ))
    }

    /// `lvextend` this LV.
    pub fn extend(&self, size: LvSize, grow_by: bool, resize_fs: bool) -> Result<()> {
        self.lvm.lvextend(
            &self.vg,
            self.name.as_deref().unwrap_or_default(),
            size,
            grow_by,
            resize_fs,
        )
    }

    /// This LV's `lvs` row.
    pub fn report(&self) -> Result<Option<Lv>> {
        let name = self.name.as_deref().unwrap_or_default();
        Ok(self
            .lvm
            .lvs(Some(&self.vg))?
            .into_iter()
            .find(|l| l.lv_name == name))
    }

    /// Deactivate and remove the LV.
    pub fn teardown(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        let Some(name) = self.name.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        if let Err(e) = self.lvm.lvchange_activate(&self.vg, &name, false) {
            errors.push(e);
        }
        if let Err(e) = self.lvm.lvremove(&self.vg, &name) {
            errors.push(e);
        }
        teardown_result(format!("{}/{name}", self.vg), errors)
    }
}

impl Drop for LogicalVolume {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::error!(error = %e, "LogicalVolume dropped without teardown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let table = [
            ("512MiB", LvSize::Bytes(512 << 20)),
            ("512M", LvSize::Bytes(512_000_000)),
            ("2G", LvSize::Bytes(2_000_000_000)),
            ("2GiB", LvSize::Bytes(2 << 30)),
            ("1.5GiB", LvSize::Bytes(3 << 29)),
            ("4096", LvSize::Bytes(4096)),
            ("10e", LvSize::Extents(10)),
            ("50%VG", LvSize::PercentVg(50)),
            ("100%FREE", LvSize::PercentFree(100)),
        ];
        for (s, want) in table {
            assert_eq!(s.parse::<LvSize>().ok(), Some(want), "{s}");
        }
        let bad = [
            ("", "empty size"),
            ("0%VG", "a percentage is a whole number from 1 to 100"),
            ("101%FREE", "a percentage is a whole number from 1 to 100"),
            ("x", "expected a number"),
            ("5Q", "unknown unit \"Q\""),
            ("-1G", "sizes cannot be negative"),
            ("99999999PiB", "too large"),
            ("1.5e", "extents are a whole number"),
        ];
        for (s, want) in bad {
            let e = s.parse::<LvSize>().expect_err(s).to_string();
            assert!(
                e.starts_with(&format!("invalid LV size {s:?}: {want}")),
                "{e}"
            );
        }
        // lvm gets bytes, not a re-spelled unit.
        assert_eq!(
            "2G".parse::<LvSize>().expect("2G").args(false),
            ["-L", "2000000000b"]
        );
    }

    #[test]
    fn argv() {
        let mut o = LvCreate::new("root", LvSize::PercentFree(100));
        assert_eq!(o.args("vg0").join(" "), "-y -n root -l 100%FREE vg0");
        o.size = LvSize::Bytes(1 << 20);
        o.inactive = true;
        o.extra = vec!["--addtag".into(), "df".into()];
        assert_eq!(
            o.args("vg0").join(" "),
            "-y -n root -L 1048576b -an -Zn --addtag df vg0"
        );
        assert_eq!(LvSize::Extents(3).args(true), ["-l", "+3"]);
        let c = Lvm::without_udev()
            .only_devices(&[Path::new("/dev/loop3")])
            .cmd("pvs");
        assert_eq!(
            c.display(),
            "lvm pvs --config 'activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 } \
             devices { filter=[ \"a|^/dev/loop3$|\", \"r|.*|\" ] }'"
        );
        assert_eq!(Lvm::new().cmd("vgs").display(), "lvm vgs");
    }

    #[test]
    fn dm_names() {
        let lv = LogicalVolume {
            lvm: Lvm::new(),
            vg: "my-vg".into(),
            name: Some("lv-a".into()),
        };
        assert_eq!(lv.dm_path(), Path::new("/dev/mapper/my--vg-lv--a"));
        assert_eq!(lv.path(), Path::new("/dev/my-vg/lv-a"));
        // A guard that owns nothing does nothing on drop.
        let mut lv = lv;
        lv.name = None;
        drop(lv);
    }
}
