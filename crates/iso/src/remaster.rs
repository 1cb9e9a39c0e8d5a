//! Remastering: turn a [`Request`] (file edits, volume id, kickstart/preseed, kernel
//! arguments) into the list of [`Changes`] to the tree, then apply them in one [`Mode`].
//!
//! - `patch` ([`crate::patch`]): rewrite bytes of the existing image when everything fits.
//! - `direct`: `xorriso -indev IN -outdev OUT -boot_image any replay` with `-map`/`-rm`/
//!   `-volid` for the edits; keeps El Torito BIOS + UEFI and the isohybrid MBR/GPT. No mount.
//! - `copy`: the conventional route: extract the whole tree (`osirrox -extract`, no mount),
//!   edit the copy, rebuild with `xorriso -as mkisofs` and the boot options xorriso reads
//!   from the original (`-report_system_area as_mkisofs`).
//! - `overlay`/`bind`: the kernel routes (loop-mounted ISO as overlay lower dir, or a bind
//!   mount of the new file over the read-only mount), in [`crate::kernel`].
//! - `auto`: `patch` when it fits, else `direct`, and says why.
//!
//! Outputs are all-or-nothing: a temporary file in the destination directory, checked (the
//! El Torito entries and the MBR/GPT must match the input's), then renamed into place without
//! overwriting. The boot configs inside the EFI FAT image are edited with mtools
//! ([`crate::fat`]) before the image is written back. Outputs are flushed (`fsync` of the
//! file before the rename, of its directory after it; of the file itself in place) unless
//! [`Request::sync`] is false.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::changes::Changes;
use crate::inspect::{Inspection, inspect_with_tree};
use crate::iso9660::{Tree, TreeKind, Volume};
use crate::isomd5::{IsoMd5, Md5Sums, write_appdata};
use crate::output::{Scratch, Staged, apply_plan, copy_and_hash, copy_for_plan, sync_file};
use crate::patch::{NoFit, PatchPlan, PlanInput};
use crate::rebuild::{apply_to_dir, extract_tree, rebuild};
use crate::replay::{direct, direct_streamed};
use crate::request::{Event, Mode, Request};
use crate::resolve::resolve;
use crate::{Error, Result};

/// A step and how long it took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// What.
    pub name: String,
    /// Seconds.
    pub seconds: f64,
}

/// What [`remaster`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The mode that ran.
    pub mode: Mode,
    /// Why this mode.
    pub reason: String,
    /// The output file.
    pub output: PathBuf,
    /// Whether the input was edited in place.
    pub in_place: bool,
    /// Per-edit notes.
    pub notes: Vec<String>,
    /// Boot configs edited.
    pub configs: Vec<String>,
    /// Step timings.
    pub steps: Vec<Step>,
    /// The implanted MD5, when asked for.
    pub md5: Option<Md5Sums>,
    /// Whether this was a dry run (the plan only: nothing written).
    pub dry_run: bool,
    /// What is odd about the input but did not stop the remaster (a volume space larger
    /// than the file, …).
    pub warnings: Vec<String>,
}

fn timed<T>(
    steps: &mut Vec<Step>,
    name: &str,
    progress: &mut dyn FnMut(Event<'_>),
    f: impl FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<T>,
) -> Result<T> {
    progress(Event::Step(name));
    let t = Instant::now();
    let r = f(progress)?;
    steps.push(Step {
        name: name.into(),
        seconds: t.elapsed().as_secs_f64(),
    });
    Ok(r)
}

fn implant_file(
    path: &Path,
    steps: &mut Vec<Step>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Md5Sums> {
    timed(steps, "implant md5", progress, |p| {
        let mut cb = |d, t| p(Event::Bytes(d, t));
        crate::isomd5::implant(path, &mut cb)
    })
}

/// Inspect `output` (a timed step) and check it kept the boot setup of `before`.
fn verify_boot(
    steps: &mut Vec<Step>,
    progress: &mut dyn FnMut(Event<'_>),
    before: &Inspection,
    output: &Path,
) -> Result<()> {
    let after = timed(steps, "verify boot entries", progress, |_| {
        crate::inspect(output)
    })?;
    check_boot_preserved(before, &after)
}

/// Compare the boot setup of input and output; an error lists the differences.
pub fn check_boot_preserved(before: &Inspection, after: &Inspection) -> Result<()> {
    let sig = |i: &Inspection| {
        let mut v: Vec<String> = i
            .el_torito
            .iter()
            .flat_map(|c| c.entries.iter())
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e.platform,
                    e.emulation,
                    if e.bootable {
                        "bootable"
                    } else {
                        "not-bootable"
                    },
                    e.image.clone().unwrap_or_else(|| "hidden".into())
                )
            })
            .collect();
        v.push(format!(
            "mbr={} gpt={}",
            i.hybrid.mbr.is_some(),
            i.hybrid.gpt.is_some()
        ));
        v
    };
    let (a, b) = (sig(before), sig(after));
    if a != b {
        return Err(Error::BootChanged {
            output: PathBuf::from(&after.path),
            before: a,
            after: b,
        });
    }
    Ok(())
}

/// Remaster `req.input` as asked. `progress` hears about steps and bytes.
pub fn remaster(req: &Request, progress: &mut dyn FnMut(Event<'_>)) -> Result<Outcome> {
    let _cancel = crate::cancel::install(req.cancel.clone());
    let mut run = Remaster::open(req)?;
    let changes = run.resolve(progress)?;
    if let Some(o) = &req.output
        && o.exists()
    {
        return Err(Error::bad(
            "-o",
            o.display().to_string(),
            "already exists (not overwriting)",
        ));
    }
    let (mode, reason, plan) = run.choose(&changes, progress)?;
    if mode != Mode::Patch && req.output.is_none() {
        return Err(Error::bad(
            "--mode",
            mode.to_string(),
            "only patch edits in place; give -o OUT",
        ));
    }
    let mut notes = plan.as_ref().map(|p| p.notes.clone()).unwrap_or_default();
    if req.dry_run {
        notes.extend(dry_run_notes(req, &changes, plan.is_none()));
    }
    let (output, md5) = match (&req.output, plan) {
        _ if req.dry_run => (
            req.output.clone().unwrap_or_else(|| req.input.clone()),
            None,
        ),
        (None, Some(plan)) => (req.input.clone(), run.patch_in_place(&plan, progress)?),
        (Some(out), Some(plan)) => (out.clone(), run.write_planned(out, mode, &plan, progress)?),
        (Some(out), None) => {
            let md5 = run.run_route(out, mode, &changes, progress)?;
            notes.extend(changes.notes());
            (out.clone(), md5)
        }
        (None, None) => {
            unreachable_mode(mode)?;
            (req.input.clone(), None)
        }
    };
    Ok(Outcome {
        mode,
        reason,
        output,
        in_place: req.output.is_none(),
        notes,
        configs: changes.configs,
        steps: run.steps,
        md5,
        dry_run: req.dry_run,
        warnings: run
            .insp
            .warnings()
            .into_iter()
            .chain(changes.warnings)
            .collect(),
    })
}

/// What a dry run adds to the plan's notes: the volume id, the edits when no plan lists
/// them (the xorriso routes), and the MD5.
fn dry_run_notes(req: &Request, changes: &Changes, no_plan: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(v) = &changes.volid {
        notes.push(format!("volume id: {v}"));
    }
    if no_plan {
        notes.extend(changes.notes());
        notes.extend(
            changes
                .raw
                .iter()
                .map(|r| format!("{} bytes at {}: {}", r.data.len(), r.offset, r.what)),
        );
    }
    if req.implant_md5 {
        notes.push("an isomd5sum MD5 would be implanted".to_owned());
    }
    notes
}

/// One remaster run: the request, the input read once (volume, primary tree, inspection),
/// the scratch directory and the timed steps so far. One method per step of [`remaster`].
struct Remaster<'r> {
    req: &'r Request,
    vol: Volume,
    /// The primary tree, walked once: inspection, resolving and planning share it.
    primary: Tree,
    insp: Inspection,
    scratch: Scratch,
    steps: Vec<Step>,
}

impl<'r> Remaster<'r> {
    /// Open and inspect the input.
    fn open(req: &'r Request) -> Result<Self> {
        let vol = Volume::open(&req.input)?;
        let primary = vol.tree(TreeKind::Primary)?;
        let insp = inspect_with_tree(&vol, &primary)?;
        // Loops, extents past the end, hidden records, names no filesystem can hold: refused
        // here, before any byte is written and before xorriso or the kernel reads the image.
        insp.check()?;
        let parent = req
            .output
            .as_ref()
            .and_then(|o| {
                o.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| PathBuf::from("."));
        let parent = if req.output.is_some() {
            parent
        } else {
            std::env::temp_dir()
        };
        // What a killed run left (its lock is free): removed before we add our own.
        match crate::output::cleanup(&parent) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(?gone, "removed run directories of killed runs");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cleaning up stale run directories"),
        }
        let scratch = Scratch::new(parent);
        Ok(Remaster {
            req,
            vol,
            primary,
            insp,
            scratch,
            steps: Vec::new(),
        })
    }

    /// Resolve the request into changes (a timed step).
    fn resolve(&mut self, progress: &mut dyn FnMut(Event<'_>)) -> Result<Changes> {
        timed(&mut self.steps, "resolve edits", progress, |_| {
            resolve(
                self.req,
                &self.vol,
                &self.primary,
                &self.insp,
                &self.scratch,
            )
        })
    }

    /// Plan our writer's byte writes (a timed step); `grow` allows the image to grow.
    fn plan(
        &mut self,
        changes: &Changes,
        grow: bool,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<std::result::Result<PatchPlan, NoFit>> {
        let joliet = match self.vol.joliet {
            Some(_) => Some(self.vol.tree(TreeKind::Joliet)?),
            None => None,
        };
        let boot_images: Vec<u32> = self
            .insp
            .el_torito
            .iter()
            .flat_map(|c| c.entries.iter().map(|e| e.load_rba))
            .collect();
        let name = if grow {
            "plan (may grow)"
        } else {
            "plan patch"
        };
        timed(&mut self.steps, name, progress, |_| {
            crate::patch::plan(&PlanInput {
                vol: &self.vol,
                primary: &self.primary,
                joliet: joliet.as_ref(),
                hybrid: &self.insp.hybrid,
                boot_images: &boot_images,
                changes,
                had_md5: self.insp.implanted_md5.is_some(),
                grow,
            })
        })
    }

    /// Pick the mode (planning once where our writer may do it) and say why.
    fn choose(
        &mut self,
        changes: &Changes,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(Mode, String, Option<PatchPlan>)> {
        let has_output = self.req.output.is_some();
        let grown = |plan: &PatchPlan| match plan.insert {
            Some(i) => format!("the image grows by {} MiB", i.len >> 20),
            None => "it fits the image as it is".to_owned(),
        };
        Ok(match self.req.mode {
            // One plan: growing is allowed when there is an output; whether it grew picks
            // the mode.
            Mode::Auto => match self.plan(changes, has_output, progress)? {
                Ok(plan) if plan.insert.is_none() => {
                    let r = format!(
                        "patch: every edit fits space the image already has ({} bytes to write)",
                        plan.bytes()
                    );
                    (Mode::Patch, r, Some(plan))
                }
                Ok(plan) => {
                    let r = format!(
                        "direct: the edits need more room than the image's padding; our writer \
                         copies the image and writes {} bytes, {}",
                        plan.bytes(),
                        grown(&plan)
                    );
                    (Mode::Direct, r, Some(plan))
                }
                Err(why) if has_output => (
                    Mode::Direct,
                    format!(
                        "direct: our writer cannot ({why}); xorriso replays the boot setup \
                         without mounting"
                    ),
                    None,
                ),
                Err(why) => {
                    return Err(Error::DoesNotFit {
                        reason: format!("{why}; editing in place needs patch mode, give -o OUT"),
                    });
                }
            },
            Mode::Patch => match self.plan(changes, false, progress)? {
                Ok(plan) => (
                    Mode::Patch,
                    format!("patch: asked for ({} bytes to write)", plan.bytes()),
                    Some(plan),
                ),
                Err(why) => return Err(Error::DoesNotFit { reason: why }),
            },
            Mode::Direct if has_output => match self.plan(changes, true, progress)? {
                Ok(plan) => {
                    let r = format!(
                        "direct: asked for; our writer copies the image and writes {} bytes, {}",
                        plan.bytes(),
                        grown(&plan)
                    );
                    (Mode::Direct, r, Some(plan))
                }
                Err(why) => (
                    Mode::Direct,
                    format!(
                        "direct: asked for; our writer cannot ({why}), xorriso replays the boot \
                         setup without mounting"
                    ),
                    None,
                ),
            },
            m => (m, format!("{m}: asked for"), None),
        })
    }

    /// Patch the input itself; flushed unless the request says not to.
    ///
    /// Editing in place is not atomic (a crash while the bytes go out leaves a mix of old
    /// and new), so it needs [`Request::force`]. Everything that takes time happens before
    /// the first byte is written: the plan, and the MD5 of the image as it will be (the
    /// input with the plan's writes overlaid). Then the writes and the MD5 go out in one
    /// short burst that a SIGINT/SIGTERM does not interrupt.
    fn patch_in_place(
        &mut self,
        plan: &PatchPlan,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<Md5Sums>> {
        let input = &self.req.input;
        if !self.req.force {
            return Err(Error::bad(
                "-o",
                "(none)",
                format!(
                    "editing {} in place is not crash-safe ({} bytes in {} places would be \
                     rewritten; a crash or kill -9 in between leaves a mixed image): give -o \
                     OUT, or --force to edit in place",
                    input.display(),
                    plan.bytes(),
                    plan.writes.len()
                ),
            ));
        }
        let md5 = match self.req.implant_md5 {
            true => {
                let pvd = self.vol.primary.lba;
                let mut hasher = IsoMd5::for_blocks(u64::from(plan.volume_blocks), pvd);
                timed(&mut self.steps, "md5 of the patched image", progress, |p| {
                    let f =
                        std::fs::File::open(input).map_err(|e| Error::io("opening", input, e))?;
                    crate::isomd5::hash_reads(
                        input,
                        &|off, buf| plan.read_output(&f, off, buf),
                        &mut hasher,
                        &mut |done, total| p(Event::Bytes(done, total)),
                    )
                })?;
                Some(hasher.finish())
            }
            false => None,
        };
        crate::cancel::check()?;
        timed(&mut self.steps, "patch in place", progress, |_| {
            apply_plan(input, plan)?;
            if let Some(sums) = &md5 {
                write_appdata(input, self.vol.primary.lba, sums)?;
            }
            Ok(())
        })?;
        if self.req.sync {
            timed(&mut self.steps, "fsync", progress, |_| sync_file(input))?;
        }
        Ok(md5)
    }

    /// Our writer with an output: copy the input and write the plan (hashing on the way for
    /// an MD5), check the boot setup when the image grew or may have, publish.
    fn write_planned(
        &mut self,
        out: &Path,
        mode: Mode,
        plan: &PatchPlan,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<Md5Sums>> {
        let staged = Staged::new(out, &self.scratch)?;
        let input = &self.req.input;
        let mut md5 = None;
        if self.req.implant_md5 {
            let pvd = self.vol.primary.lba;
            let hasher = IsoMd5::for_blocks(u64::from(plan.volume_blocks), pvd);
            let sums = timed(&mut self.steps, "copy + patch || md5", progress, |p| {
                copy_and_hash(input, staged.path(), plan, hasher, p)
            })?;
            write_appdata(staged.path(), pvd, &sums)?;
            md5 = Some(sums);
        } else {
            timed(&mut self.steps, "copy", progress, |_| {
                copy_for_plan(input, staged.path(), plan)
            })?;
            timed(&mut self.steps, "patch", progress, |_| {
                apply_plan(staged.path(), plan)
            })?;
        }
        if mode == Mode::Direct {
            verify_boot(&mut self.steps, progress, &self.insp, staged.path())?;
        }
        self.publish(staged, progress)?;
        Ok(md5)
    }

    /// The routes without a plan: xorriso replay (`direct`), extract + rebuild (`copy`
    /// without kernel iso9660), and the kernel routes; then the MD5, the boot check, publish.
    fn run_route(
        &mut self,
        out: &Path,
        mode: Mode,
        changes: &Changes,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<Md5Sums>> {
        let staged = Staged::new(out, &self.scratch)?;
        let (input, insp, scratch) = (&self.req.input, &self.insp, &self.scratch);
        let staged_path = staged.path();
        let steps = &mut self.steps;
        let mut md5 = None;
        match mode {
            Mode::Direct if self.req.implant_md5 => {
                md5 = timed(steps, "xorriso replay + md5 (streamed)", progress, |_| {
                    direct_streamed(input, staged_path, insp, changes, scratch.path()?)
                })?;
            }
            Mode::Direct => timed(steps, "xorriso replay", progress, |_| {
                direct(input, staged_path, insp, changes, scratch.path()?)
            })?,
            Mode::Copy if crate::kernel::unavailable().is_some() => {
                let tree = scratch.path()?.join("tree");
                timed(steps, "extract (osirrox)", progress, |_| {
                    extract_tree(input, &tree)
                })?;
                timed(steps, "edit copy", progress, |_| {
                    apply_to_dir(&tree, changes)
                })?;
                timed(steps, "rebuild (xorriso -as mkisofs)", progress, |_| {
                    rebuild(input, insp, &tree, staged_path, changes, scratch.path()?)
                })?;
            }
            Mode::Overlay | Mode::Bind | Mode::Copy => {
                let name = match mode {
                    Mode::Copy => "mount + rsync + rebuild",
                    _ => "mount + rebuild",
                };
                timed(steps, name, progress, |_| {
                    crate::kernel::run(mode, input, insp, staged_path, changes, scratch.path()?)
                })?
            }
            Mode::Auto | Mode::Patch => unreachable_mode(mode)?,
        }
        if matches!(mode, Mode::Copy | Mode::Overlay | Mode::Bind) {
            // A rebuild from a copy or a mounted view: every file of the input (as edited)
            // must be there. Read errors in the view (EIO) must not pass as a smaller image.
            let primary = &self.primary;
            let fold = self.vol.rock_ridge.is_none();
            timed(&mut self.steps, "compare file lists", progress, |_| {
                let out = Volume::open(staged.path())?.tree(TreeKind::Primary)?;
                let missing = missing_files(primary, changes, &out, fold);
                match missing.is_empty() {
                    true => Ok(()),
                    false => Err(Error::Incomplete {
                        output: staged.path().to_owned(),
                        count: missing.len(),
                        first: missing.into_iter().take(5).collect(),
                    }),
                }
            })?;
        }
        if self.req.implant_md5 && md5.is_none() {
            md5 = Some(implant_file(staged.path(), &mut self.steps, progress)?);
        }
        verify_boot(&mut self.steps, progress, &self.insp, staged.path())?;
        self.publish(staged, progress)?;
        Ok(md5)
    }

    /// Rename the checked output into place, flushed first unless the request says not to.
    fn publish(&mut self, staged: Staged, progress: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        let sync = self.req.sync;
        let name = if sync { "fsync + rename" } else { "rename" };
        timed(&mut self.steps, name, progress, |_| staged.publish(sync))
    }
}

/// The paths the rebuilt `output` should have and lacks: every node of the input's
/// primary tree not removed by `changes`, and every file `changes` puts. `fold`: compare
/// without case (an input without Rock Ridge shows its ISO names; the rebuild writes
/// the names the mounted view showed).
pub(crate) fn missing_files(
    input: &Tree,
    changes: &Changes,
    output: &Tree,
    fold: bool,
) -> Vec<String> {
    let key = |p: &str| {
        if fold {
            p.to_ascii_lowercase()
        } else {
            p.to_owned()
        }
    };
    let have: std::collections::HashSet<String> = output.nodes.keys().map(|p| key(p)).collect();
    let removed = |p: &str| {
        changes.removes.iter().any(|r| {
            p == r
                || p.strip_prefix(r.as_str())
                    .is_some_and(|t| t.starts_with('/'))
        })
    };
    let expected = input
        .nodes
        .keys()
        .filter(|p| !removed(p))
        .cloned()
        .chain(changes.puts.iter().map(|p| p.dest.clone()));
    expected.filter(|p| !have.contains(&key(p))).collect()
}

fn unreachable_mode(mode: Mode) -> Result<()> {
    Err(Error::bad(
        "--mode",
        mode.to_string(),
        "internal: mode has no output route",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{Content, Put};
    use crate::iso9660::{Node, NodeKind};

    fn tree(paths: &[&str]) -> Tree {
        let nodes = paths
            .iter()
            .map(|p| {
                let n = Node {
                    path: (*p).to_owned(),
                    kind: NodeKind::File,
                    extents: Vec::new(),
                    size: 0,
                    mode: None,
                    records: Vec::new(),
                };
                ((*p).to_owned(), n)
            })
            .collect();
        Tree {
            kind: TreeKind::Primary,
            nodes,
            dirs: Default::default(),
            problems: Vec::new(),
        }
    }

    /// Issue 13 defect 2: an output with 5 of 47 files passed; the lists are compared.
    #[test]
    fn missing_files_accounts_for_edits() {
        let input = tree(&["/a", "/d", "/d/x", "/d/y", "/keep"]);
        let changes = Changes {
            removes: vec!["/d".into()],
            puts: vec![Put {
                dest: "/new".into(),
                content: Content::Bytes(Vec::new()),
                existed: false,
                why: String::new(),
            }],
            ..Changes::default()
        };
        let full = tree(&["/a", "/keep", "/new"]);
        assert!(missing_files(&input, &changes, &full, false).is_empty());
        let short = tree(&["/a"]);
        assert_eq!(
            missing_files(&input, &changes, &short, false),
            ["/keep", "/new"]
        );
        let upper = tree(&["/A", "/KEEP", "/NEW"]);
        assert!(missing_files(&input, &changes, &upper, true).is_empty());
    }
}
