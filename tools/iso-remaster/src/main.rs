//! `iso-remaster`: inspect and remaster bootable ISO images (a thin CLI over `diskforge-iso`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use diskforge_iso::isomd5;
use diskforge_iso::{Edit, Event, Inspection, Mode, Request};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const AFTER_HELP: &str = "\
Modes:
  auto     patch when every edit fits, else direct (says which and why)
  patch    rewrite bytes of the image (in place without -o; -o copies first)
  direct   copy + write, growing the image when edits need room (our writer;
           xorriso -boot_image any replay for new directories): no mount/root
  copy     extract the tree, edit, rebuild (the conventional route)
  overlay  loop mount + overlayfs + rebuild (root, kernel iso9660)
  bind     loop mount + bind mounts + rebuild (root, kernel iso9660)

Exit status:
  0  success (for --check-md5: the implanted MD5 matches)
  1  error (bad value, damaged image, tool failure, edit does not fit)
  2  usage error (unknown flag, malformed value, no input)
  3  --check-md5: the implanted MD5 does not match, or there is none
  4  inspect --strict: the image has problems
  130  interrupted by SIGINT, 143 by SIGTERM (129 SIGHUP): temporary files
       and mounts released; says whether the output was written

Examples:
  iso-remaster inspect in.iso --json
  iso-remaster in.iso -o out.iso --kickstart ks.cfg --implant-md5
  iso-remaster in.iso --force --replace my.cfg:/isolinux/isolinux.cfg
  iso-remaster in.iso -o out.iso --mode direct --add extra.rpm:/extra/x.rpm
  iso-remaster --check-md5 out.iso
  iso-remaster cleanup /srv/isos";

/// Inspect and remaster bootable ISO images, keeping BIOS and UEFI boot.
#[derive(Debug, Parser)]
#[command(
    name = "iso-remaster",
    version,
    term_width = 80,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP,
    long_about = "Inspect and remaster bootable ISO images: add, replace or remove files, \
                  set the volume id, add a kickstart or preseed and kernel arguments to every \
                  boot entry (also inside the EFI FAT image), implant or check an isomd5sum \
                  MD5. El Torito BIOS + UEFI entries and the isohybrid MBR/GPT are kept."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Input image.
    input: Option<PathBuf>,
    /// Output image (must not exist); without it, patch mode edits INPUT in place
    /// (not crash-safe: needs --force).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Add a local file SRC at DEST in the ISO (repeatable).
    #[arg(long, value_name = "SRC:DEST")]
    add: Vec<String>,
    /// Replace the ISO file DEST by the local file SRC (repeatable).
    #[arg(long, value_name = "SRC:DEST")]
    replace: Vec<String>,
    /// Remove DEST from the ISO (repeatable).
    #[arg(long, value_name = "DEST")]
    remove: Vec<String>,
    /// New volume id (boot configs that name the old one follow).
    #[arg(long)]
    volid: Option<String>,
    /// Add FILE at the root and inst.ks=hd:LABEL=VOLID:/NAME to every boot entry.
    #[arg(long, value_name = "FILE")]
    kickstart: Option<PathBuf>,
    /// Add FILE at the root and the Debian preseed arguments to every boot entry.
    #[arg(long, value_name = "FILE")]
    preseed: Option<PathBuf>,
    /// Extra kernel arguments for every boot entry (repeatable).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    kernel_args: Vec<String>,
    /// How to produce the output.
    #[arg(long, default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(Mode::NAMES))]
    mode: String,
    /// Implant an isomd5sum MD5 (checkisomd5 accepts it) into the output.
    #[arg(long)]
    implant_md5: bool,
    /// Resolve the edits and pick the mode, print the plan, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not fsync the output before publishing it (the default flushes the file,
    /// then its directory after the rename).
    #[arg(long)]
    no_sync: bool,
    /// Verify the implanted MD5 of INPUT and exit (0 match, 3 mismatch or none).
    #[arg(long, conflicts_with_all = ["output", "add", "replace", "remove", "volid", "kickstart", "preseed", "kernel_args", "implant_md5", "no_sync"])]
    check_md5: bool,
    /// Edit in place without -o, and write the image even where a boot file keeps
    /// naming the old volume id after --volid (with a warning).
    #[arg(long)]
    force: bool,
    /// On failure, print the external program's whole transcript.
    #[arg(short, long)]
    verbose: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print volume ids, El Torito entries, isohybrid MBR/GPT, file count and implanted MD5.
    Inspect {
        /// The image.
        iso: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Exit 4 when the image has problems (they are always listed).
        #[arg(long)]
        strict: bool,
    },
    /// Remove what killed runs left in DIR (their .iso-remaster-run-* directories
    /// whose lock is free); live runs are left alone. Every run does this too.
    Cleanup {
        /// The directory outputs were written to.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// A mistake on the command line (exit 2), as opposed to an error while working (exit 1).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    Usage(e.to_string()).into()
}

/// The exit status for a signal (128 + its number).
fn signal_exit(sig: usize) -> ExitCode {
    ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(127)))
}

fn signal_name(sig: usize) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

fn main() -> ExitCode {
    diskforge_cli::dist_hook::<Cli>();
    diskforge_cmd::exit_quietly_on_broken_pipe();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iso-remaster: {e:#}");
            let lib = e
                .chain()
                .find_map(|c| c.downcast_ref::<diskforge_iso::Error>());
            match lib.and_then(diskforge_iso::Error::transcript) {
                Some(t) if verbose => eprintln!("transcript:\n{}", t.trim_end()),
                Some(_) => eprintln!("(run with --verbose or RUST_LOG=debug for its output)"),
                None => {}
            }
            if e.chain().any(|c| c.is::<Usage>()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(Command::Inspect { iso, json, strict }) = &cli.command {
        let r = diskforge_iso::inspect(iso)?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", render_inspection(&r));
        }
        for p in &r.problems {
            eprintln!("iso-remaster: warning: {}: {p}", r.path);
        }
        return Ok(if *strict && !r.problems.is_empty() {
            ExitCode::from(4)
        } else {
            ExitCode::SUCCESS
        });
    }
    if let Some(Command::Cleanup { dir }) = &cli.command {
        let gone = diskforge_iso::cleanup(dir)?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&gone)?);
        } else {
            for g in &gone {
                println!("removed {}", g.display());
            }
            if gone.is_empty() {
                println!("nothing to clean up in {}", dir.display());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(input) = cli.input.clone() else {
        return Err(usage("no input image given (see --help)"));
    };
    let tty = std::io::stderr().is_terminal() && !cli.json;
    if cli.check_md5 {
        let bar = progress_bar(tty);
        bar.set_message("checking md5");
        let mut cb = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let res = match isomd5::check(&input, &mut cb) {
            Ok(r) => r,
            Err(diskforge_iso::Error::NoMd5 { path }) => {
                eprintln!("{}: no implanted MD5", path.display());
                return Ok(ExitCode::from(3));
            }
            Err(e) => return Err(e.into()),
        };
        bar.finish_and_clear();
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&res)?);
        } else {
            println!(
                "{}: {} (stored {}, computed {})",
                input.display(),
                if res.ok { "PASS" } else { "FAIL" },
                res.stored.md5,
                res.computed.md5
            );
        }
        if !res.ok {
            // The verdict is on stdout (or in the JSON); a failure also says so on stderr,
            // like every other refusal, naming the image.
            eprintln!(
                "iso-remaster: {}: the implanted MD5 does not match the image (stored {}, \
                 computed {})",
                input.display(),
                res.stored.md5,
                res.computed.md5
            );
        }
        return Ok(if res.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        });
    }
    let mut req = Request::new(&input);
    req.output = cli.output.clone();
    for v in &cli.add {
        let (src, dest) = Edit::parse_pair("--add", v).map_err(usage)?;
        req.edits.push(Edit::Add { src, dest });
    }
    for v in &cli.replace {
        let (src, dest) = Edit::parse_pair("--replace", v).map_err(usage)?;
        req.edits.push(Edit::Replace { src, dest });
    }
    for v in &cli.remove {
        req.edits.push(Edit::Remove {
            dest: diskforge_iso::iso9660::normalize(v),
        });
    }
    req.volid = cli.volid.clone();
    req.kickstart = cli.kickstart.clone();
    req.preseed = cli.preseed.clone();
    req.kernel_args = cli.kernel_args.clone();
    req.mode = cli.mode.parse().map_err(usage)?;
    req.force = cli.force;
    req.implant_md5 = cli.implant_md5;
    req.dry_run = cli.dry_run;
    req.sync = !cli.no_sync;
    let bar = progress_bar(tty);
    let mut progress = |ev: Event<'_>| match ev {
        Event::Step(s) => {
            bar.set_message(s.to_owned());
            bar.set_length(0);
            bar.set_position(0);
        }
        Event::Bytes(d, t) => {
            bar.set_length(t);
            bar.set_position(d);
        }
    };
    // Every mode: SIGINT/SIGTERM/SIGHUP set the flag (to the signal number) instead of
    // killing us; the library stops within a second, kills the program it runs, removes its
    // temporary files and unwinds its mounts, and we say whether the output was written.
    let flag = Arc::new(AtomicUsize::new(0));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let value = usize::try_from(sig).unwrap_or(1);
        signal_hook::flag::register_usize(sig, Arc::clone(&flag), value)?;
    }
    req.cancel = Some(Arc::clone(&flag));
    let res = diskforge_iso::remaster(&req, &mut progress);
    bar.finish_and_clear();
    let sig = flag.load(Ordering::Relaxed);
    if sig != 0 {
        let name = signal_name(sig);
        match &res {
            Ok(out) if out.dry_run => {
                eprintln!("iso-remaster: interrupted by {name}; nothing written")
            }
            Ok(out) => eprintln!(
                "iso-remaster: interrupted by {name} after the output was complete: {} is \
                 written{}",
                out.output.display(),
                if out.in_place {
                    " (edited in place)"
                } else {
                    ""
                }
            ),
            Err(_) => eprintln!(
                "iso-remaster: interrupted by {name}; temporary files and mounts removed, no \
                 output written{}",
                if req.output.is_none() {
                    " (input unchanged)"
                } else {
                    ""
                }
            ),
        }
        return Ok(signal_exit(sig));
    }
    let out = res.with_context(|| format!("remastering {}", input.display()))?;
    for w in &out.warnings {
        eprintln!("iso-remaster: warning: {w}");
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("mode: {} ({})", out.mode, out.reason);
        for n in &out.notes {
            println!("  {n}");
        }
        for c in &out.configs {
            println!("  boot config edited: {c}");
        }
        for s in &out.steps {
            println!("  step {:<32} {:8.3} s", s.name, s.seconds);
        }
        if let Some(m) = &out.md5 {
            println!("implanted md5: {}", m.md5);
        }
        println!(
            "{} {}{}",
            if out.dry_run { "would write" } else { "wrote" },
            out.output.display(),
            if out.in_place { " (in place)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn render_inspection(r: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let p = &r.primary;
    let _ = writeln!(
        s,
        "{}: {} bytes, volume {} blocks ({} bytes)",
        r.path, r.file_size, p.volume_blocks, r.volume_size
    );
    for (k, v) in [
        ("volume id", &p.volume_id),
        ("system id", &p.system_id),
        ("application id", &p.application_id),
        ("publisher id", &p.publisher_id),
        ("preparer id", &p.preparer_id),
        ("volume set id", &p.volume_set_id),
    ] {
        let _ = writeln!(s, "  {k:<15} {v}");
    }
    let _ = writeln!(
        s,
        "  {:<15} rock ridge {}, joliet {}",
        "trees",
        if r.rock_ridge { "yes" } else { "no" },
        r.joliet
            .as_deref()
            .map(|j| format!("yes ({j})"))
            .unwrap_or_else(|| "no".into())
    );
    let _ = writeln!(
        s,
        "  {:<15} {} files, {} bytes, {} directories",
        "content", r.file_count, r.file_bytes, r.dir_count
    );
    match &r.el_torito {
        Some(c) => {
            let _ = writeln!(
                s,
                "El Torito catalog at block {} ({})",
                c.lba,
                c.path.as_deref().unwrap_or("hidden")
            );
            for (i, e) in c.entries.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  {:>2} {:<4} {:<12} emul {:<6} load {:>5}x512 rba {:>7}  {} ({} bytes)",
                    i + 1,
                    e.platform.to_string(),
                    if e.bootable {
                        "bootable"
                    } else {
                        "not bootable"
                    },
                    e.emulation.to_string(),
                    e.load_size,
                    e.load_rba,
                    e.image.as_deref().unwrap_or("hidden image"),
                    e.image_size
                );
            }
        }
        None => s.push_str("El Torito: none\n"),
    }
    match &r.hybrid.mbr {
        Some(parts) => {
            let _ = writeln!(s, "isohybrid MBR: {} partitions", parts.len());
            for m in parts {
                let _ = writeln!(
                    s,
                    "  {} {} type 0x{:02x} start {} sectors {}",
                    m.number,
                    if m.bootable { "*" } else { " " },
                    m.ptype,
                    m.start,
                    m.sectors
                );
            }
        }
        None => s.push_str("isohybrid MBR: none\n"),
    }
    match &r.hybrid.gpt {
        Some(parts) => {
            let _ = writeln!(s, "GPT: {} partitions", parts.len());
            for g in parts {
                let _ = writeln!(
                    s,
                    "  {} {:<12} {} {}..{}",
                    g.number, g.name, g.type_guid, g.first_lba, g.last_lba
                );
            }
        }
        None => s.push_str("GPT: none\n"),
    }
    match &r.implanted_md5 {
        Some(m) => {
            let _ = writeln!(
                s,
                "implanted MD5: {} (skip {} sectors, {} fragments)",
                m.md5,
                m.skip_sectors,
                m.fragment_count.unwrap_or(0)
            );
        }
        None => s.push_str("implanted MD5: none\n"),
    }
    if r.problems.is_empty() {
        s.push_str("problems: none\n");
    } else {
        let _ = writeln!(s, "problems: {}", r.problems.len());
        for p in &r.problems {
            let _ = writeln!(s, "  {:?} at byte {}: {}", p.kind, p.offset, p.detail);
        }
    }
    s
}

/// A byte progress bar on stderr when it is a terminal (and not `--json`); hidden otherwise,
/// so pipelines and logs stay clean.
fn progress_bar(tty: bool) -> indicatif::ProgressBar {
    if !tty {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template(
        "{msg:28} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    indicatif::ProgressBar::new(0).with_style(style)
}
