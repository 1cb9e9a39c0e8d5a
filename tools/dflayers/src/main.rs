//! `dflayers`: stack overlay layers (directories, layer tarballs, OCI image layouts), run a
//! command in the merged root, commit an upper dir as an OCI layer, diff and squash.
//!
//! A thin CLI over `diskforge-layers`: parse, call, print.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use diskforge_layers::{
    Compression, Layer, Limits, RunOptions, Store, TarOptions, source_date_epoch,
};

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    failure (I/O, mount, OCI layout, …; the message names the file)
  2    usage error
  3    refused input: unsafe tar entry (.., absolute path, escaping symlink or
       hardlink), entry or archive over the size limits, digest mismatch
  run: the command's own exit code (128+N when killed by signal N; 130/143
       when dflayers itself was interrupted by SIGINT/SIGTERM; on a terminal,
       Ctrl-C goes to the command, so an interactive shell survives it)";

const EXAMPLES: &str = "\
Examples:
  dflayers mount --layer base.tar.gz --layer app.tar --upper up /mnt/root
  dflayers umount /mnt/root
  dflayers run --layer oci-dir:latest --upper up -- apt-get install -y curl
  dflayers run --layer oci-dir:latest -- /bin/sh     (interactive shell)
  SOURCE_DATE_EPOCH=0 dflayers commit up -o layer.tar.zst
  dflayers commit up --oci-layout oci-dir --base latest --tag v2
  dflayers diff base.tar.gz app.tar up
  dflayers squash --layer oci-dir:latest -o flat.tar
  dflayers --json unpack oci-dir:latest

A layer is a directory (used in place, overlay format), a tarball (.tar,
.tar.gz, .tar.zst: unpacked once into the store) or an OCI image layout
directory, optionally LAYOUT:REF (all layers of that image, base first).
Layers are listed base first, top last.";

/// Stack, run, commit, diff and squash overlay layers.
#[derive(Debug, Parser)]
#[command(name = "dflayers", version, about, long_about = None, term_width = 80, after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
struct Cli {
    /// Layer store (unpacked layers keyed by diff_id) [default: $DFLAYERS_STORE or
    /// /var/lib/diskforge/layers]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Largest size one tar entry may have (a size such as 16GiB; bare G is
    /// 10^9) [default: 16GiB]
    #[arg(long, global = true, value_name = "SIZE", value_parser = diskforge_size::parse_bytes)]
    max_entry_size: Option<u64>,
    /// Largest total size of one archive's entries [default: 64GiB]
    #[arg(long, global = true, value_name = "SIZE", value_parser = diskforge_size::parse_bytes)]
    max_total_size: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Unpack layers into the store (once per diff_id), print the lower dirs that
    /// show the image (base first; a fix-up layer on top when needed).
    Unpack {
        /// Layer sources.
        #[arg(required = true)]
        layers: Vec<String>,
    },
    /// Mount a stack on TARGET and leave it mounted (undo with `dflayers umount`).
    Mount {
        #[command(flatten)]
        stack: StackArgs,
        /// Mount point (an existing directory).
        target: PathBuf,
    },
    /// Unmount a stack mounted by `dflayers mount`.
    Umount {
        /// Mount point.
        target: PathBuf,
    },
    /// Run a command chrooted into the merged view (with /proc, /sys, /dev) in a private
    /// mount namespace, on this terminal's stdin/stdout/stderr (--json: stdin null, output
    /// collected); everything is unmounted afterwards and on SIGTERM (SIGINT off a terminal).
    Run {
        #[command(flatten)]
        stack: StackArgs,
        /// Where the temporary mount point (and upper dir) go [default: /var/tmp]
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Turn an upper dir into an OCI layer tarball and/or a new image of an OCI layout.
    /// Reproducible: entries sorted, owner names empty, and with SOURCE_DATE_EPOCH set,
    /// mtimes clamped to it.
    Commit {
        /// The overlay upper dir.
        upper: PathBuf,
        /// Output tarball (.tar, .tar.gz, .tar.zst picks the compression).
        #[arg(short, long, required_unless_present = "oci_layout")]
        output: Option<PathBuf>,
        /// Compression [default: from the -o name; gzip for --oci-layout]
        #[arg(long, value_enum)]
        compression: Option<Comp>,
        /// Also (or only) add the layer to this OCI layout as a new image.
        #[arg(long, requires = "tag", value_name = "DIR")]
        oci_layout: Option<PathBuf>,
        /// Name of the new image in the layout.
        #[arg(long, requires = "oci_layout")]
        tag: Option<String>,
        /// Image of the layout whose layers come below the new one.
        #[arg(long, requires = "oci_layout", value_name = "REF")]
        base: Option<String>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// List what UPPER changes relative to the merged lowers (A added, C changed,
    /// D deleted).
    Diff {
        /// Lower layers, base first, then the upper dir last.
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Remove what interrupted runs left: unlocked temporary entries in the store's
    /// tmp/ and scratch dirs of killed `run`s (also done on every store open / run).
    Gc {
        /// Where `run` puts its scratch dirs [default: /var/tmp]
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
    },
    /// Flatten a stack into one layer tarball with the same merged content (no mount).
    Squash {
        /// A layer, base first, top last (repeat).
        #[arg(long = "layer", short = 'l', required = true)]
        layers: Vec<String>,
        /// Output tarball (.tar, .tar.gz, .tar.zst picks the compression).
        #[arg(short, long)]
        output: PathBuf,
        /// Compression [default: from the -o name]
        #[arg(long, value_enum)]
        compression: Option<Comp>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

/// The layers and upper dir of `mount` and `run`.
#[derive(Debug, clap::Args)]
struct StackArgs {
    /// A layer, base first, top last (repeat).
    #[arg(long = "layer", short = 'l', required = true)]
    layers: Vec<String>,
    /// Upper dir that keeps the changes [default: mount: none (read-only stack);
    /// run: a temporary one, discarded]
    #[arg(long)]
    upper: Option<PathBuf>,
    /// Work dir for --upper [default: .NAME.work next to the upper dir]
    #[arg(long, requires = "upper")]
    work: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Comp {
    None,
    Gzip,
    Zstd,
}

impl From<Comp> for Compression {
    fn from(c: Comp) -> Self {
        match c {
            Comp::None => Compression::None,
            Comp::Gzip => Compression::Gzip,
            Comp::Zstd => Compression::Zstd,
        }
    }
}

fn main() -> ExitCode {
    diskforge_cli::dist_hook::<Cli>();
    diskforge_cmd::exit_quietly_on_broken_pipe();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("DFLAYERS_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dflayers: {e:#}");
            let refused = e.chain().any(|c| {
                c.downcast_ref::<diskforge_layers::Error>()
                    .is_some_and(|e| e.is_refusal())
            });
            ExitCode::from(if refused { 3 } else { 1 })
        }
    }
}

/// A progress bar on stderr for unpacking (only used when stderr is a terminal).
fn progress_bar() -> diskforge_layers::ProgressFn {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Arc::new(move |p: &diskforge_layers::UnpackProgress| {
        bar.set_length(p.total);
        bar.set_position(p.read);
        let name = p.source.file_name().unwrap_or_default().to_string_lossy();
        bar.set_message(format!("unpacking {name}"));
        if p.done {
            bar.finish_and_clear();
            bar.reset();
        }
    })
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Resolve every source and make the stack (repeated layers once, fix-up layer on top).
fn resolve_all(store: &Store, specs: &[String]) -> anyhow::Result<Vec<Layer>> {
    let mut out = Vec::new();
    for s in specs {
        out.extend(store.resolve(s).with_context(|| format!("layer {s}"))?);
    }
    store.stack(&out).context("stacking the layers")
}

fn paths(layers: &[Layer]) -> Vec<PathBuf> {
    layers.iter().map(|l| l.path.clone()).collect()
}

fn tar_options(output: Option<&PathBuf>, comp: Option<Comp>, force: bool) -> TarOptions {
    let compression = comp
        .map(Compression::from)
        .or_else(|| output.map(|o| Compression::from_path(o)))
        .unwrap_or(Compression::Gzip);
    TarOptions {
        compression,
        clamp_mtime: source_date_epoch(),
        overwrite: force,
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut limits = Limits::default();
    if let Some(n) = cli.max_entry_size {
        limits.max_entry_size = n;
    }
    if let Some(n) = cli.max_total_size {
        limits.max_total_size = n;
    }
    let store_root = cli.store.clone().unwrap_or_else(Store::default_root);
    let progress = (!cli.json && std::io::stderr().is_terminal()).then(progress_bar);
    let store = || -> anyhow::Result<Store> {
        let s = Store::open(&store_root)
            .with_context(|| format!("opening layer store {}", store_root.display()))?
            .with_limits(limits);
        Ok(match &progress {
            Some(p) => s.with_progress(p.clone()),
            None => s,
        })
    };
    match cli.command {
        Command::Unpack { layers } => {
            let layers = resolve_all(&store()?, &layers)?;
            if cli.json {
                print_json(&layers)?;
            } else {
                for l in &layers {
                    let id = match (&l.diff_id, &l.origin) {
                        (Some(id), _) => id.as_str(),
                        (None, diskforge_layers::LayerOrigin::Fixup) => "(fix-up)",
                        (None, _) => "(directory)",
                    };
                    let how = if l.reused { "reused" } else { "unpacked" };
                    println!("{id}  {how:8}  {}", l.path.display());
                }
            }
        }
        Command::Mount {
            stack:
                StackArgs {
                    layers,
                    upper,
                    work,
                },
            target,
        } => {
            let layers = resolve_all(&store()?, &layers)?;
            let work = upper
                .as_ref()
                .map(|u| work.unwrap_or_else(|| diskforge_layers::default_work_dir(u)));
            let up = upper.as_deref().zip(work.as_deref());
            let m = diskforge_layers::mount_stack(&paths(&layers), up, &target)?;
            let method = m.method();
            let target = m.release();
            if cli.json {
                print_json(&serde_json::json!({
                    "target": target, "method": method, "layers": layers, "upper": upper, "work": work,
                }))?;
            } else {
                println!(
                    "mounted {} layer(s) on {} ({method})",
                    layers.len(),
                    target.display()
                );
            }
        }
        Command::Umount { target } => {
            diskforge_mount::unmount(&target, diskforge_mount::UnmountOptions::default())
                .with_context(|| format!("unmounting {}", target.display()))?;
            if cli.json {
                print_json(&serde_json::json!({ "unmounted": target }))?;
            }
        }
        Command::Run {
            stack:
                StackArgs {
                    layers,
                    upper,
                    work,
                },
            scratch,
            command,
        } => {
            let layers = resolve_all(&store()?, &layers)?;
            let interrupt = Arc::new(AtomicBool::new(false));
            // On a terminal, Ctrl-C reaches the command itself (same foreground process
            // group): an interactive shell handles it, and a command it kills exits 130 on
            // its own. So SIGINT only tears down when stdin is not a terminal; SIGTERM always.
            let attached = !cli.json && std::io::stdin().is_terminal();
            let ignored = Arc::new(AtomicBool::new(false));
            let term = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())
                .context("installing signal handlers")?;
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let flag = if attached && sig == signal_hook::consts::SIGINT {
                    ignored.clone()
                } else {
                    interrupt.clone()
                };
                signal_hook::flag::register(sig, flag).context("installing signal handlers")?;
            }
            let opts = RunOptions {
                command,
                upper,
                work,
                scratch,
                interrupt: Some(interrupt.clone()),
            };
            let json = cli.json;
            let mut lines = Vec::new();
            let outcome = if json {
                diskforge_layers::run_in_stack(&paths(&layers), &opts, |l| {
                    lines.push(l.to_owned());
                })?
            } else {
                diskforge_layers::run_in_stack_interactive(&paths(&layers), &opts)?
            };
            if json {
                print_json(
                    &serde_json::json!({ "code": outcome.code, "interrupted": outcome.interrupted, "output": lines }),
                )?;
            }
            let code = if outcome.interrupted {
                if term.load(std::sync::atomic::Ordering::SeqCst) {
                    143
                } else {
                    130
                }
            } else {
                outcome.code
            };
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::Commit {
            upper,
            output,
            compression,
            oci_layout,
            tag,
            base,
            force,
        } => {
            let mut report = serde_json::Map::new();
            if let Some(o) = &output {
                let stats = diskforge_layers::write_layer(
                    &upper,
                    o,
                    tar_options(Some(o), compression, force),
                )
                .with_context(|| format!("committing {} to {}", upper.display(), o.display()))?;
                if !cli.json {
                    println!(
                        "{}: {} entries, digest {}, diff_id {}",
                        o.display(),
                        stats.entries,
                        stats.digest,
                        stats.diff_id
                    );
                }
                report.insert("layer".into(), serde_json::to_value(&stats)?);
            }
            if let (Some(layout), Some(tag)) = (&oci_layout, &tag) {
                let opts = tar_options(None, compression, force);
                let created = source_date_epoch().or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs())
                });
                let img = diskforge_layers::oci::commit_to_layout(
                    &upper,
                    layout,
                    tag,
                    base.as_deref(),
                    opts,
                    created,
                )
                .with_context(|| {
                    format!(
                        "committing {} to OCI layout {}",
                        upper.display(),
                        layout.display()
                    )
                })?;
                if !cli.json {
                    println!(
                        "{}:{tag}: manifest {}, {} layer(s), new layer {}",
                        layout.display(),
                        img.manifest_digest,
                        img.layers,
                        img.layer_digest
                    );
                }
                report.insert("image".into(), serde_json::to_value(&img)?);
            }
            if cli.json {
                print_json(&report)?;
            }
        }
        Command::Diff { mut paths } => {
            let upper = PathBuf::from(paths.pop().unwrap_or_default());
            let lowers = resolve_all(&store()?, &paths)?;
            let changes = diskforge_layers::diff(&self::paths(&lowers), &upper)?;
            if cli.json {
                print_json(&changes)?;
            } else {
                for c in &changes {
                    println!("{} {}", c.kind.letter(), c.path);
                }
            }
        }
        Command::Gc { scratch } => {
            let store = store()?;
            let mut report = store.cleaned_at_open().clone();
            let again = store.gc()?;
            report.removed.extend(again.removed);
            report.in_use = again.in_use;
            let base = scratch.unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let scratch_removed = diskforge_layers::clean_stale_scratch(&base)
                .with_context(|| format!("cleaning scratch dirs in {}", base.display()))?;
            if cli.json {
                print_json(&serde_json::json!({
                    "removed": report.removed, "in_use": report.in_use, "scratch_removed": scratch_removed,
                }))?;
            } else {
                for p in report.removed.iter().chain(&scratch_removed) {
                    println!("removed {}", p.display());
                }
                for p in &report.in_use {
                    println!("in use  {}", p.display());
                }
            }
        }
        Command::Squash {
            layers,
            output,
            compression,
            force,
        } => {
            let layers = resolve_all(&store()?, &layers)?;
            let stats = diskforge_layers::squash(
                &paths(&layers),
                &output,
                tar_options(Some(&output), compression, force),
            )
            .with_context(|| format!("squashing into {}", output.display()))?;
            if cli.json {
                print_json(&stats)?;
            } else {
                println!(
                    "{}: {} layer(s) squashed, {} entries, digest {}, diff_id {}",
                    output.display(),
                    layers.len(),
                    stats.entries,
                    stats.digest,
                    stats.diff_id
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --max-entry-size reads the one diskforge size grammar (bare letters decimal).
    #[test]
    fn sizes() {
        let max = |v: &str| {
            Cli::try_parse_from(["dflayers", "--max-entry-size", v, "unpack", "x"])
                .map(|c| c.max_entry_size)
                .map_err(|e| e.to_string())
        };
        assert_eq!(max("512"), Ok(Some(512)));
        assert_eq!(max("4KiB"), Ok(Some(4096)));
        assert_eq!(max("4K"), Ok(Some(4000)));
        assert_eq!(max("2GiB"), Ok(Some(2 << 30)));
        assert!(max("1X").is_err());
        assert!(max("abc").is_err());
        // Units are case-sensitive: the error says which was meant.
        assert!(max("2g").unwrap_err().contains("did you mean G?"));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
