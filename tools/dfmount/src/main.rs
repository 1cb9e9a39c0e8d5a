//! `dfmount`: mount, bind, overlay, unmount and list (a thin CLI over `diskforge-mount`).
//!
//! Mounts made by `dfmount` outlive the process on purpose: the tool releases its guards
//! after mounting (use `dfmount umount`, or `--hold` to keep the mount only while `dfmount`
//! runs). `-o loop` attaches the image with autoclear, as mount(8) does, so unmounting also
//! frees the loop device.
//!
//! Every exit path either undoes what this run mounted or says what remains and why: a step
//! that fails after an earlier one succeeded (the read-only remount of a bind, the mount on a
//! new loop device) tears the earlier one down and names anything that would not go; at the
//! end of `--hold` a mount still busy after the retries is detached lazily (gone from the
//! tree, freed by the kernel when its last user lets go), its users are named, and the exit
//! status is 3. Only SIGKILL can leave a held mount behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use diskforge_loop::{AttachOptions, LoopDevice};
use diskforge_mount::signal::TerminationFlag;
use diskforge_mount::{
    Mount, MountFlags, MountInfo, MountStack, Overlay, RedirectDir, UNMOUNT_ATTEMPTS,
    UnmountOptions, Xino,
};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed (the message names the path and anything left
     mounted)
  2  bad usage
  3  --hold: the mount was still busy when the hold ended; it was detached
     lazily (gone from the tree, freed when its users, named on stderr,
     let go)

Examples:
  dfmount mount -t ext4 /dev/loop3p1 /mnt/root
  dfmount mount -t iso9660 -o loop,ro installer.iso /mnt/iso
  dfmount bind --ro /srv/tree /mnt/base
  dfmount bind new-EULA /mnt/iso/EULA       # replace one file in place
  dfmount overlay --lower /l/app --lower /l/base \\
          --upper /s/upper --work /s/work /mnt/merged
  dfmount overlay --lower /mnt/iso --lower /srv/extra --hold /mnt/view
  dfmount umount --lazy /mnt/merged
  dfmount bind -R /srv/root /mnt/chroot && dfmount umount -R /mnt/chroot
  dfmount list --json --type overlay";

/// Mount, bind, overlay and unmount.
#[derive(Debug, Parser)]
#[command(name = "dfmount", version, after_help = AFTER_HELP, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Mount SRC (a device, or an image with -o loop) on DST.
    Mount {
        /// Device, image file (with -o loop) or pseudo source (tmpfs).
        src: PathBuf,
        /// Mount point (an existing directory).
        dst: PathBuf,
        /// Filesystem type.
        #[arg(short = 't', long = "type")]
        fstype: String,
        /// Options, comma-separated: flags (ro, nosuid, nodev, noexec, noatime…), `loop`,
        /// and filesystem options passed on as data.
        #[arg(short = 'o', long, default_value = "")]
        options: String,
        #[command(flatten)]
        common: Common,
    },
    /// Bind SRC on DST: a directory on a directory, or a file on a file.
    Bind {
        /// What to show.
        src: PathBuf,
        /// Where (must exist, same kind as SRC).
        dst: PathBuf,
        /// Make the bind read-only.
        #[arg(long)]
        ro: bool,
        /// Include the mounts below SRC (rbind).
        #[arg(long, short = 'R')]
        recursive: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Mount an overlay of lower dirs (top first), writable with --upper/--work.
    Overlay {
        /// A lower dir; repeat, uppermost first.
        #[arg(long = "lower", required = true)]
        lowers: Vec<PathBuf>,
        /// Upper dir (receives changes); needs --work.
        #[arg(long, requires = "work")]
        upper: Option<PathBuf>,
        /// Work dir: empty, same filesystem as --upper.
        #[arg(long, requires = "upper")]
        work: Option<PathBuf>,
        /// redirect_dir=
        #[arg(long, value_enum)]
        redirect_dir: Option<RedirectArg>,
        /// index=
        #[arg(long, value_enum)]
        index: Option<OnOff>,
        /// metacopy=
        #[arg(long, value_enum)]
        metacopy: Option<OnOff>,
        /// xino=
        #[arg(long, value_enum)]
        xino: Option<XinoArg>,
        /// Use user.overlay.* xattrs.
        #[arg(long)]
        userxattr: bool,
        /// Mount point.
        dst: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Unmount DST (retries while busy; --lazy detaches if it stays busy).
    Umount {
        /// Mount point.
        dst: PathBuf,
        /// Detach lazily when still busy after the retries.
        #[arg(long, short = 'l')]
        lazy: bool,
        /// Unmount the mounts below DST first (umount -R).
        #[arg(long, short = 'R')]
        recursive: bool,
    },
    /// List mounts (like findmnt).
    List {
        /// JSON like `findmnt -J`: {"filesystems": [...]}.
        #[arg(long)]
        json: bool,
        /// Only this filesystem type.
        #[arg(long = "type", short = 't')]
        fstype: Option<String>,
        /// Only mount points under this directory.
        #[arg(long)]
        under: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Keep the mount only until SIGINT/SIGTERM/SIGHUP, then unmount and exit (if still
    /// busy: detach lazily, name the users, exit 3).
    #[arg(long)]
    hold: bool,
    /// Print what was mounted as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RedirectArg {
    On,
    Follow,
    Nofollow,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XinoArg {
    On,
    Off,
    Auto,
}

fn main() -> ExitCode {
    diskforge_cli::dist_hook::<Cli>();
    diskforge_cmd::exit_quietly_on_broken_pipe();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dfmount: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// What a mounting command reports.
#[derive(Debug, serde::Serialize)]
struct Report {
    target: PathBuf,
    source: String,
    fstype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    loop_device: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<diskforge_mount::OverlayMethod>,
}

/// Exit status when `--hold` ended with the mount busy and detached lazily.
const EXIT_DETACHED_LAZILY: u8 = 3;

/// Tear down what this run made after `e`; the error names whatever would not go.
fn undo(stack: MountStack, e: anyhow::Error) -> anyhow::Error {
    match stack.teardown() {
        Ok(()) => e,
        Err(t) => anyhow::anyhow!("{e:#}; undoing what was made failed too, still in place: {t}"),
    }
}

/// Make a mount read-only, unmounting it again (and saying so if that fails) when that fails.
fn remount_ro_or_undo(m: Mount) -> Result<Mount> {
    match m.remount_read_only() {
        Ok(()) => Ok(m),
        Err(e) => {
            let mut stack = MountStack::new();
            stack.push(m);
            Err(undo(stack, e.into()))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Mount {
            src,
            dst,
            fstype,
            options,
            common,
        } => {
            let flag = signals(&common)?;
            let (flags, rest) = diskforge_mount::parse_mount_options(&options);
            let use_loop = rest.iter().any(|o| o == "loop");
            let data: Vec<&str> = rest
                .iter()
                .map(String::as_str)
                .filter(|o| *o != "loop")
                .collect();
            let data = data.join(",");
            let data = (!data.is_empty()).then_some(data.as_str());
            let mut stack = MountStack::new();
            let mut loop_device = None;
            let source = if use_loop {
                let ro = flags.contains(MountFlags::RDONLY);
                // Autoclear: the device goes away with the mount, as with mount(8).
                let opts = AttachOptions::new().read_only(ro).autoclear(!common.hold);
                let dev = LoopDevice::attach(&src, &opts)?;
                let p = dev.path().to_owned();
                loop_device = Some(p.clone());
                stack.push(dev);
                p
            } else {
                src.clone()
            };
            match Mount::new(&source, &dst, &fstype, flags, data) {
                Ok(m) => stack.push(m),
                Err(e) => return Err(undo(stack, e.into())),
            }
            let report = Report {
                target: dst,
                source: src.display().to_string(),
                fstype,
                loop_device,
                method: None,
            };
            finish(stack, &report, &common, flag)
        }
        Cmd::Bind {
            src,
            dst,
            ro,
            recursive,
            common,
        } => {
            let flag = signals(&common)?;
            let m = if recursive {
                Mount::bind_recursive(&src, &dst)?
            } else {
                Mount::bind(&src, &dst)?
            };
            let m = if ro { remount_ro_or_undo(m)? } else { m };
            let mut stack = MountStack::new();
            stack.push(m);
            let report = Report {
                target: dst,
                source: src.display().to_string(),
                fstype: "bind".into(),
                loop_device: None,
                method: None,
            };
            finish(stack, &report, &common, flag)
        }
        Cmd::Overlay {
            lowers,
            upper,
            work,
            redirect_dir,
            index,
            metacopy,
            xino,
            userxattr,
            dst,
            common,
        } => {
            let flag = signals(&common)?;
            let mut ov = Overlay::new().lowers(&lowers).userxattr(userxattr);
            if let (Some(u), Some(w)) = (&upper, &work) {
                ov = ov.upper(u, w);
            }
            if let Some(r) = redirect_dir {
                ov = ov.redirect_dir(match r {
                    RedirectArg::On => RedirectDir::On,
                    RedirectArg::Follow => RedirectDir::Follow,
                    RedirectArg::Nofollow => RedirectDir::Nofollow,
                    RedirectArg::Off => RedirectDir::Off,
                });
            }
            if let Some(i) = index {
                ov = ov.index(matches!(i, OnOff::On));
            }
            if let Some(m) = metacopy {
                ov = ov.metacopy(matches!(m, OnOff::On));
            }
            if let Some(x) = xino {
                ov = ov.xino(match x {
                    XinoArg::On => Xino::On,
                    XinoArg::Off => Xino::Off,
                    XinoArg::Auto => Xino::Auto,
                });
            }
            let m = ov.mount(&dst)?;
            let method = Some(m.method());
            let mut stack = MountStack::new();
            stack.push(m);
            let report = Report {
                target: dst,
                source: "overlay".into(),
                fstype: "overlay".into(),
                loop_device: None,
                method,
            };
            finish(stack, &report, &common, flag)
        }
        Cmd::Umount {
            dst,
            lazy,
            recursive,
        } => {
            if recursive {
                diskforge_mount::unmount_recursive(&dst, UnmountOptions { lazy })?;
            } else {
                diskforge_mount::unmount(&dst, UnmountOptions { lazy })?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::List {
            json,
            fstype,
            under,
        } => {
            let all = diskforge_mount::mounts()?;
            let rows: Vec<&MountInfo> = all
                .iter()
                .filter(|m| fstype.as_deref().is_none_or(|t| m.fstype == t))
                .filter(|m| under.as_deref().is_none_or(|u| m.target.starts_with(u)))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "filesystems": rows }))?
                );
            } else {
                print!("{}", render_table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn signals(common: &Common) -> Result<Option<TerminationFlag>> {
    if common.hold {
        // Registered before mounting, so a signal mid-way cannot leak anything.
        Ok(Some(
            TerminationFlag::register().context("installing signal handlers")?,
        ))
    } else {
        Ok(None)
    }
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
    } else {
        match &report.loop_device {
            Some(d) => writeln!(
                out,
                "{} on {} ({}, via {})",
                report.source,
                report.target.display(),
                report.fstype,
                d.display()
            )?,
            None => writeln!(
                out,
                "{} on {} ({})",
                report.source,
                report.target.display(),
                report.fstype
            )?,
        }
    }
    out.flush()?;
    Ok(())
}

/// Print the report, then either hand the mounts over (they outlive us) or hold them until
/// a termination signal and unwind.
fn finish(
    stack: MountStack,
    report: &Report,
    common: &Common,
    flag: Option<TerminationFlag>,
) -> Result<ExitCode> {
    let printed = print_report(report, common.json);
    match flag {
        // The CLI's contract: mounts (and `-o loop` devices) outlive us.
        None => {
            stack.release_all();
            printed?;
            Ok(ExitCode::SUCCESS)
        }
        Some(flag) => {
            if let Err(e) = printed {
                // Nobody would learn what is held: undo it rather than hold it unseen.
                end_hold(stack, &report.target)?;
                return Err(e.context("printing the report"));
            }
            flag.wait(Duration::from_millis(100));
            end_hold(stack, &report.target)
        }
    }
}

/// The end of `--hold`: unwind the stack; if the mount on `target` stays busy, name its
/// users and detach it lazily (exit 3); any other failure says what remains (exit 1).
fn end_hold(stack: MountStack, target: &Path) -> Result<ExitCode> {
    let resolved = std::fs::canonicalize(target);
    let target = resolved.as_deref().unwrap_or(target);
    let failures = match stack.teardown() {
        Ok(()) => return Ok(ExitCode::SUCCESS),
        Err(diskforge_mount::Error::Teardown { failures }) => failures,
        Err(e) => return Err(e.into()),
    };
    let is_busy = |e: &diskforge_mount::Error| matches!(e, diskforge_mount::Error::Busy { .. });
    let mut code = ExitCode::SUCCESS;
    if failures.iter().any(|f| is_busy(&f.error)) {
        let users = diskforge_mount::mount_users(target);
        eprintln!(
            "dfmount: {} stayed busy through {UNMOUNT_ATTEMPTS} unmount attempts",
            target.display()
        );
        for u in &users {
            eprintln!("dfmount:   used by {u}");
        }
        if users.is_empty() {
            eprintln!(
                "dfmount:   (no process found using it: a mount below it, or hidden from us)"
            );
        }
        match diskforge_mount::detach_lazily(target) {
            Ok(()) | Err(diskforge_mount::Error::NotMounted { .. }) => {
                eprintln!(
                    "dfmount: detached {} lazily: it is gone from the mount tree; the kernel \
                     frees it when {} let go",
                    target.display(),
                    if users.is_empty() {
                        "its users"
                    } else {
                        "they"
                    }
                );
                code = ExitCode::from(EXIT_DETACHED_LAZILY);
            }
            Err(e) => anyhow::bail!(
                "{} is still mounted: {e}; unmount it with `dfmount umount --lazy {}`",
                target.display(),
                target.display()
            ),
        }
    }
    let others: Vec<String> = failures
        .iter()
        .filter(|f| !is_busy(&f.error))
        .map(|f| format!("{}: {}", f.what, f.error))
        .collect();
    if !others.is_empty() {
        anyhow::bail!("still in place after the hold: {}", others.join("; "));
    }
    Ok(code)
}

fn render_table(rows: &[&MountInfo]) -> String {
    let w = rows
        .iter()
        .map(|m| m.target.as_os_str().len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<w$} {:<20} {:<10} OPTIONS\n",
        "TARGET", "SOURCE", "FSTYPE"
    );
    for m in rows {
        out.push_str(&format!(
            "{:<w$} {:<20} {:<10} {}\n",
            m.target.display(),
            m.source,
            m.fstype,
            m.options
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn table_renders() {
        let rows = diskforge_mount::parse_mountinfo(
            "40 1 0:50 / /mnt/merged rw,relatime - overlay overlay rw,lowerdir=/a:/b\n\
             41 1 7:3 / /mnt/iso ro,relatime - iso9660 /dev/loop3 ro\n",
        );
        let refs: Vec<&MountInfo> = rows.iter().collect();
        insta::assert_snapshot!(render_table(&refs));
    }
}
