//! `dfpart`: create and show GPT/MBR partition tables on image files and block devices
//! (a thin CLI over `diskforge-part`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use diskforge_part::{
    Error as PartError, Flag, Label, Layout, PartKind, PartSpec, Size, Table, WriteOptions,
};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  reading or writing the image failed (the message names the file)
  2  bad usage (unknown option, malformed --part)
  3  the layout is invalid (bad size or type, overlap, does not fit, too
     many primaries, percentages over 100%); nothing was written
     (add/delete/set: also a partition number that does not exist)
  4  show/add/delete/set: no partition table, or a damaged one

Sizes (the diskforge-size grammar, crates/size/README.md): KiB MiB GiB
TiB PiB are binary (powers of 1024); KB MB GB TB PB and bare K M G T P
are decimal (powers of 1000), as in diskimage-builder and parted; a bare
number is bytes. A partition size may also be NN% (of the space the
fixed-size partitions leave) or rest.

Examples:
  dfpart create disk.img --label gpt --size 4GiB \\
      --part name=ESP,size=512MiB,type=EF00 \\
      --part name=root,size=rest,type=8300
  dfpart create disk.img --label mbr --size 2GiB --part size=256MiB,flags=boot \\
      --part size=1GiB,type=8e00 --part size=rest,type=0x83,flags=logical
  dfpart create disk.img --layout layout.yaml --uuid-seed build-42
  dfpart create disk.img --label gpt --size 1GiB --part size=rest --dry-run
  dfpart add disk.img --part name=home,size=50% --part name=srv,size=rest
  dfpart set disk.img 2 --name root --type 8304 --flags legacy_boot
  dfpart delete disk.img 3 --dry-run
  dfpart show disk.img
  dfpart show disk.img --json
  dfpart show disk.img --offsets     # NUMBER START_BYTES SIZE_BYTES";

/// Create and show GPT/MBR partition tables.
#[derive(Debug, Parser)]
#[command(name = "dfpart", version, after_help = AFTER_HELP, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new partition table (replacing any existing one).
    ///
    /// The table is planned first (nothing is written if the layout is
    /// invalid), written, read back and checked.
    Create(CreateArgs),
    /// Add partitions after the existing ones (sizes NN% and rest share the
    /// free space at the end).
    Add(AddArgs),
    /// Delete partitions by number (GPT renumbers the rest 1, 2, ...; MBR
    /// renumbers logical partitions after a removed one).
    Delete(DeleteArgs),
    /// Change one partition's name, type, UUID or flags.
    Set(SetArgs),
    /// Print the partition table of IMAGE.
    Show {
        /// Image file or block device.
        image: PathBuf,
        /// Print the table as JSON.
        #[arg(long, conflicts_with = "offsets")]
        json: bool,
        /// Print one line per partition: NUMBER START_BYTES SIZE_BYTES.
        #[arg(long)]
        offsets: bool,
        /// Sector size of an image file (default 512; block devices report
        /// theirs).
        #[arg(long)]
        sector_size: Option<u32>,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Image file or block device.
    image: PathBuf,
    /// Table type: gpt or mbr (dos).
    #[arg(long, value_parser = parse_label)]
    label: Option<Label>,
    /// Create the file if needed and grow it to SIZE (never shrinks).
    #[arg(long, value_parser = diskforge_part::size::parse)]
    size: Option<Size>,
    /// Partition start alignment [default: 1MiB].
    #[arg(long)]
    align: Option<String>,
    /// GPT disk GUID, or MBR disk signature (0x1234abcd).
    #[arg(long)]
    disk_uuid: Option<String>,
    /// Derive every UUID not given from SEED: same seed, same table.
    /// Without it, SOURCE_DATE_EPOCH (when set) and the image's file name
    /// make the seed; otherwise UUIDs are random.
    #[arg(long, value_name = "SEED")]
    uuid_seed: Option<String>,
    /// Logical sector size: 512 or 4096 [default: 512].
    #[arg(long)]
    sector_size: Option<u32>,
    /// GPT: set the active flag on the protective MBR entry.
    #[arg(long)]
    pmbr_boot: bool,
    /// A partition, as comma-separated key=value pairs: name, size, type,
    /// uuid, start, flags (boot, legacy_boot, required, primary, logical;
    /// join several with +). Repeat for each partition, in disk order.
    #[arg(long = "part", value_name = "SPEC")]
    parts: Vec<String>,
    /// Read the layout from a YAML or JSON file (fields as in --part, plus
    /// label, align, disk_uuid, sector_size, pmbr_boot); options given on
    /// the command line override it, --part adds partitions.
    #[arg(long, value_name = "FILE")]
    layout: Option<PathBuf>,
    /// Print the computed plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result (or the plan) as JSON.
    #[arg(long)]
    json: bool,
}

/// Options shared by the commands that change a table.
#[derive(Debug, clap::Args)]
struct ChangeOpts {
    /// Print the computed plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result (or the plan) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// Image file or block device with a partition table.
    image: PathBuf,
    /// A partition, as for create. Repeat for each partition.
    #[arg(long = "part", value_name = "SPEC", required = true)]
    parts: Vec<String>,
    /// Partition start alignment [default: 1MiB].
    #[arg(long)]
    align: Option<String>,
    #[command(flatten)]
    opts: ChangeOpts,
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    /// Image file or block device with a partition table.
    image: PathBuf,
    /// Partition numbers, as `show` prints them.
    #[arg(required = true)]
    numbers: Vec<u32>,
    #[command(flatten)]
    opts: ChangeOpts,
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    /// Image file or block device with a partition table.
    image: PathBuf,
    /// Partition number, as `show` prints it.
    number: u32,
    /// New GPT name.
    #[arg(long)]
    name: Option<String>,
    /// New type (8300, EF00, 0x83, a GUID...).
    #[arg(long = "type", value_name = "TYPE")]
    type_code: Option<String>,
    /// New GPT partition GUID.
    #[arg(long)]
    uuid: Option<String>,
    /// New flags, joined with + (boot, legacy_boot, required); "" clears.
    #[arg(long)]
    flags: Option<String>,
    #[command(flatten)]
    opts: ChangeOpts,
}

fn parse_label(s: &str) -> Result<Label, String> {
    s.parse()
}

/// A usage error in a `--part` or `--layout` value (exit code 2).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Parse `name=ESP,size=512MiB,type=EF00,flags=boot+primary`.
fn parse_part(index: usize, spec: &str) -> Result<PartSpec, Usage> {
    let mut p = PartSpec::default();
    let mut size = None;
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Usage(format!("--part #{index} {spec:?}: {kv:?} is not key=value")))?;
        let v = v.to_owned();
        match k.trim() {
            "name" => p.name = Some(v),
            "size" => size = Some(v),
            "type" => p.type_code = Some(v),
            "uuid" => p.uuid = Some(v),
            "start" => p.start = Some(v),
            "flags" | "flag" => {
                for f in v.split(['+', ':']).filter(|f| !f.is_empty()) {
                    let flag: Flag = f.parse().map_err(|e| {
                        Usage(format!("--part #{index} {spec:?}: flags={f:?}: {e}"))
                    })?;
                    p.flags.push(flag);
                }
            }
            other => {
                return Err(Usage(format!(
                    "--part #{index} {spec:?}: unknown key {other:?} (name, size, type, uuid, \
                     start, flags)"
                )));
            }
        }
    }
    p.size = size.ok_or_else(|| Usage(format!("--part #{index} {spec:?}: no size=")))?;
    Ok(p)
}

fn load_layout(args: &CreateArgs) -> Result<Layout> {
    let mut layout = match &args.layout {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("{}: reading the layout", file.display()))?;
            // YAML is a superset of JSON: one parser reads both.
            serde_norway::from_str::<Layout>(&text)
                .map_err(|e| Usage(format!("{}: {e}", file.display())))?
        }
        None => {
            let label = args
                .label
                .ok_or_else(|| Usage("--label gpt|mbr is required".into()))?;
            Layout::new(label)
        }
    };
    if let Some(l) = args.label {
        layout.label = l;
    }
    if args.align.is_some() {
        layout.align.clone_from(&args.align);
    }
    if args.disk_uuid.is_some() {
        layout.disk_uuid.clone_from(&args.disk_uuid);
    }
    if args.sector_size.is_some() {
        layout.sector_size = args.sector_size;
    }
    layout.pmbr_boot |= args.pmbr_boot;
    let first = layout.partitions.len() + 1;
    for (i, s) in args.parts.iter().enumerate() {
        layout.partitions.push(parse_part(first + i, s)?);
    }
    if layout.partitions.is_empty() {
        return Err(Usage("no partitions: give --part or --layout".into()).into());
    }
    if let Some(seed) = uuid_seed(args) {
        layout.seed_uuids(&seed);
    }
    Ok(layout)
}

/// `--uuid-seed`, else `SOURCE_DATE_EPOCH:FILE_NAME` for reproducible builds (the file name
/// keeps two images of one build from sharing GUIDs).
fn uuid_seed(args: &CreateArgs) -> Option<String> {
    args.uuid_seed.clone().or_else(|| {
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .filter(|e| !e.is_empty())?;
        let name = args
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        Some(format!(
            "SOURCE_DATE_EPOCH={epoch}:{}",
            name.unwrap_or_default()
        ))
    })
}

fn create(args: &CreateArgs, out: &mut impl Write) -> Result<()> {
    let layout = load_layout(args)?;
    if args.dry_run {
        let size = match args.size {
            Some(s) => s.bytes(),
            None => diskforge_part::disk_size(&args.image)
                .with_context(|| "give --size for an image that does not exist yet".to_owned())?,
        };
        let plan = diskforge_part::plan(&layout, size)?;
        warn(&plan);
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
        } else {
            writeln!(
                out,
                "plan for {} (dry run: nothing written)",
                args.image.display()
            )?;
            render(&plan.table, out)?;
        }
        return Ok(());
    }
    if let Some(size) = args.size {
        // Plan first so an invalid layout leaves no file behind (create checks it again), and
        // to print its warnings.
        warn(&diskforge_part::plan(&layout, size.bytes())?);
    }
    let size = args.size.map(Size::bytes);
    let table = diskforge_part::create(&args.image, &layout, &WriteOptions { size })?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&table)?)?;
    } else {
        writeln!(out, "{}: wrote", args.image.display())?;
        render(&table, out)?;
    }
    Ok(())
}

/// Print a plan's warnings on stderr.
fn warn(plan: &diskforge_part::Plan) {
    for w in &plan.warnings {
        eprintln!("dfpart: warning: {w}");
    }
}

/// Print `plan` (dry run) or apply it and print the result.
fn finish(
    image: &Path,
    plan: &diskforge_part::Plan,
    opts: &ChangeOpts,
    out: &mut impl Write,
) -> Result<()> {
    warn(plan);
    if opts.dry_run {
        if opts.json {
            writeln!(out, "{}", serde_json::to_string_pretty(plan)?)?;
        } else {
            writeln!(
                out,
                "plan for {} (dry run: nothing written)",
                image.display()
            )?;
            render(&plan.table, out)?;
        }
        return Ok(());
    }
    let table = diskforge_part::apply(image, plan)?;
    if opts.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&table)?)?;
    } else {
        writeln!(out, "{}: wrote", image.display())?;
        render(&table, out)?;
    }
    Ok(())
}

fn add(args: &AddArgs, out: &mut impl Write) -> Result<()> {
    let table = diskforge_part::read(&args.image)?;
    let first = table.partitions.len() + 1;
    let specs = args
        .parts
        .iter()
        .enumerate()
        .map(|(i, s)| parse_part(first + i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = diskforge_part::plan_add(&table, &specs, args.align.as_deref())?;
    finish(&args.image, &plan, &args.opts, out)
}

fn delete(args: &DeleteArgs, out: &mut impl Write) -> Result<()> {
    let table = diskforge_part::read(&args.image)?;
    let plan = diskforge_part::plan_delete(&table, &args.numbers)?;
    finish(&args.image, &plan, &args.opts, out)
}

fn set(args: &SetArgs, out: &mut impl Write) -> Result<()> {
    let flags = match &args.flags {
        None => None,
        Some(f) => Some(
            f.split(['+', ':', ','])
                .filter(|x| !x.is_empty())
                .map(|x| {
                    x.parse::<Flag>()
                        .map_err(|e| Usage(format!("--flags {x:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let change = diskforge_part::PartChange {
        name: args.name.clone(),
        type_code: args.type_code.clone(),
        uuid: args.uuid.clone(),
        flags,
    };
    if change == diskforge_part::PartChange::default() {
        return Err(
            Usage("nothing to change: give --name, --type, --uuid or --flags".into()).into(),
        );
    }
    let table = diskforge_part::read(&args.image)?;
    let plan = diskforge_part::plan_set(&table, args.number, &change)?;
    finish(&args.image, &plan, &args.opts, out)
}

fn show(
    image: &Path,
    json: bool,
    offsets: bool,
    sector_size: Option<u32>,
    out: &mut impl Write,
) -> Result<()> {
    let table = match sector_size {
        Some(ss) => diskforge_part::read_with_sector_size(image, ss)?,
        None => diskforge_part::read(image)?,
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&table)?)?;
    } else if offsets {
        for p in &table.partitions {
            writeln!(out, "{} {} {}", p.number, p.start_bytes, p.size_bytes)?;
        }
    } else {
        writeln!(out, "{}:", image.display())?;
        render(&table, out)?;
    }
    Ok(())
}

/// The human view of a table: a summary line, then one row per partition.
fn render(t: &Table, out: &mut impl Write) -> Result<()> {
    let ss = u64::from(t.sector_size);
    writeln!(
        out,
        "{} table, {} ({} sectors of {} bytes), disk id {}",
        t.label,
        Size::from_bytes(t.disk_size_bytes).approx(),
        t.disk_size_bytes / ss,
        ss,
        t.disk_uuid.as_deref().unwrap_or("(random when written)"),
    )?;
    let mut line = format!(
        "usable sectors {}..={}",
        t.first_usable_lba, t.last_usable_lba
    );
    if let Some(a) = t.align_bytes {
        line += &format!(", alignment {}", Size::from_bytes(a).approx());
    }
    if t.pmbr_boot {
        line += ", protective MBR active";
    }
    if let Some(e) = &t.extended {
        line += &format!(
            ", extended partition {} at sectors {}..={} (type {})",
            e.number,
            e.start_lba,
            e.start_lba + e.size_lba - 1,
            e.type_byte
        );
    }
    writeln!(out, "{line}")?;
    let mut rows = vec![
        [
            "#", "START", "END", "SECTORS", "SIZE", "TYPE", "NAME", "UUID", "FLAGS",
        ]
        .map(String::from),
    ];
    for p in &t.partitions {
        let mut flags: Vec<String> = p.flags.iter().map(ToString::to_string).collect();
        if t.label == Label::Mbr && p.kind == PartKind::Logical {
            flags.insert(0, "logical".into());
        }
        rows.push([
            p.number.to_string(),
            p.start_lba.to_string(),
            p.end_lba.to_string(),
            p.size_lba.to_string(),
            Size::from_bytes(p.size_bytes).approx(),
            match t.label {
                Label::Mbr => p.part_type.mbr.clone().unwrap_or_default(),
                Label::Gpt => p.part_type.short().to_owned(),
            },
            // Names from other tools may hold control characters: escape them so a row
            // stays one line.
            p.name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map_or_else(|| "-".into(), escape_controls),
            p.uuid.clone().unwrap_or_else(|| "(random)".into()),
            if flags.is_empty() {
                "-".into()
            } else {
                flags.join(",")
            },
        ]);
    }
    let mut widths = [0usize; 9];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let mut s = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left-aligned; no trailing spaces.
            if (1..=4).contains(&i) || i == 0 {
                s += &format!("{c:>w$}  ");
            } else if i == 8 {
                s += c;
            } else {
                s += &format!("{c:<w$}  ");
            }
        }
        writeln!(out, "{}", s.trim_end())?;
    }
    Ok(())
}

/// `name` with control characters escaped (`a\nb`); other names unchanged.
fn escape_controls(name: &str) -> String {
    if name.chars().any(char::is_control) {
        name.escape_debug().to_string()
    } else {
        name.to_owned()
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    match e.downcast_ref::<PartError>() {
        Some(
            PartError::InvalidSize { .. }
            | PartError::UnknownType { .. }
            | PartError::InvalidField { .. }
            | PartError::InvalidLayout { .. }
            | PartError::PercentOver100 { .. }
            | PartError::Oversize { .. }
            | PartError::NoSpace { .. }
            | PartError::Overlap { .. }
            | PartError::TooManyPrimaries { .. }
            | PartError::NoSuchPartition { .. },
        ) => 3,
        Some(PartError::NoTable { .. } | PartError::Corrupt { .. }) => 4,
        _ => 1,
    }
}

fn run(cli: &Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let r = match &cli.cmd {
        Command::Create(args) => create(args, &mut out),
        Command::Add(args) => add(args, &mut out),
        Command::Delete(args) => delete(args, &mut out),
        Command::Set(args) => set(args, &mut out),
        Command::Show {
            image,
            json,
            offsets,
            sector_size,
        } => show(image, *json, *offsets, *sector_size, &mut out),
    };
    match r {
        // A closed pipe (`dfpart show x | head -1`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn main() -> ExitCode {
    diskforge_cli::dist_hook::<Cli>();
    diskforge_cmd::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfpart: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_specs() {
        let p = parse_part(
            1,
            "name=ESP,size=512MiB,type=EF00,flags=boot+primary,uuid=u,start=1M",
        )
        .expect("parse");
        assert_eq!(p.name.as_deref(), Some("ESP"));
        assert_eq!(p.size, "512MiB");
        assert_eq!(p.type_code.as_deref(), Some("EF00"));
        assert_eq!(p.flags, [Flag::Boot, Flag::Primary]);
        assert_eq!(p.start.as_deref(), Some("1M"));
        let bad = [
            ("name=a", "no size="),
            ("size=1M,color=red", "unknown key \"color\""),
            ("size=1M,flags=fast", "flags=\"fast\": unknown flag"),
            ("size", "\"size\" is not key=value"),
        ];
        for (s, want) in bad {
            let e = parse_part(3, s).expect_err(s).to_string();
            assert!(e.starts_with("--part #3") && e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
