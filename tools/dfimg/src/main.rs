//! `dfimg`: disk image info, convert, create, resize, check and measure (over `qemu-img-cmd`),
//! plus `mkfs` and `detect` for filesystems (over `diskforge-mkfs`). Thin: parse, call the
//! crates, print human text or `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use diskforge_mkfs::{FsType, MkfsOptions, Target};
use qemu_img_cmd::{ConvertOptions, CreateOptions, Format, MeasureInput, NewSize};

const AFTER_HELP: &str = "\
Exit codes:
  0  success (check: the image is clean)
  1  the operation failed (the message names the file, field or value)
  2  bad usage
  3  check: the image has corruptions
  4  check: the image leaks clusters (no corruption)
  5  check: nothing to check in this format (raw images have no
     metadata; qemu-img has no check for vpc); the format is
     detected first and named in the message

Sizes (crates/size/README.md): KiB MiB GiB TiB are binary; KB MB GB TB and
bare K M G T are decimal, as in diskimage-builder; qemu-img gets bytes.
SOURCE_DATE_EPOCH makes mkfs output reproducible where the filesystem allows
(ext2/3/4, vfat, swap, squashfs, erofs).

Examples:
  dfimg info disk.qcow2 --backing-chain --json
  dfimg convert disk.raw disk.qcow2 -O qcow2 -c -m 8 -W
  dfimg convert disk.raw disk.vhd -O vpc -o force_size=on
  dfimg create overlay.qcow2 -f qcow2 -b base.qcow2 -F qcow2
  dfimg create disk.raw 10GiB
  dfimg resize disk.qcow2 +2GiB
  dfimg check disk.qcow2 --json
  dfimg measure disk.raw -O qcow2
  dfimg mkfs ext4 root.img --size 1GiB --label root --from ./rootfs
  dfimg mkfs vfat disk.img --offset 1MiB --size 64MiB --label ESP --from ./esp
  dfimg detect disk.img --offset 1MiB";

/// Disk images (qemu-img) and filesystems (mkfs) from one tool.
#[derive(Debug, Parser)]
#[command(name = "dfimg", version, after_help = AFTER_HELP, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show an image's format, sizes and backing file.
    Info {
        /// The image.
        image: PathBuf,
        /// Its format (probed when omitted).
        #[arg(short = 'f', long)]
        format: Option<Format>,
        /// Also show every backing file, top first.
        #[arg(long)]
        backing_chain: bool,
        /// Print JSON (qemu-img's keys).
        #[arg(long)]
        json: bool,
    },
    /// Convert an image between raw, qcow2, vmdk, vhdx and vpc (VHD).
    ///
    /// DST must not exist; it appears only when the conversion succeeded.
    Convert {
        /// Input image.
        src: PathBuf,
        /// Output image.
        dst: PathBuf,
        /// Output format.
        #[arg(short = 'O', long = "output-format")]
        output_format: Format,
        /// Input format (probed when omitted).
        #[arg(short = 'f', long)]
        format: Option<Format>,
        /// Compress (qcow2, vmdk).
        #[arg(short = 'c', long)]
        compress: bool,
        /// Allow out-of-order writes (faster).
        #[arg(short = 'W', long)]
        out_of_order: bool,
        /// Parallel coroutines, 1-16.
        #[arg(short = 'm', long, value_parser = clap::value_parser!(u8).range(1..=16))]
        coroutines: Option<u8>,
        /// Output option key=value (repeatable), e.g. cluster_size=2M.
        #[arg(short = 'o', long = "option")]
        options: Vec<String>,
        /// Print the output image's info as JSON when done.
        #[arg(long)]
        json: bool,
    },
    /// Create an image (SIZE may be omitted with a backing file).
    Create {
        /// The image to create.
        image: PathBuf,
        /// Virtual size.
        #[arg(value_parser = diskforge_size::parse_bytes)]
        size: Option<u64>,
        /// Format.
        #[arg(short = 'f', long, default_value = "raw")]
        format: Format,
        /// Backing file.
        #[arg(short = 'b', long, requires = "backing_format")]
        backing: Option<PathBuf>,
        /// Backing file format.
        #[arg(short = 'F', long)]
        backing_format: Option<Format>,
        /// Format option key=value (repeatable).
        #[arg(short = 'o', long = "option")]
        options: Vec<String>,
        /// Print the new image's info as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resize an image: SIZE, +SIZE or -SIZE.
    Resize {
        /// The image.
        image: PathBuf,
        /// New size, or +/- a delta.
        #[arg(allow_hyphen_values = true)]
        size: NewSize,
        /// Its format (probed when omitted).
        #[arg(short = 'f', long)]
        format: Option<Format>,
        /// Allow an absolute size smaller than the current one.
        #[arg(long)]
        shrink: bool,
        /// Print the resized image's info as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check an image's metadata (exit 3: corrupt, 4: leaks, 5: nothing to check:
    /// raw images have no metadata).
    Check {
        /// The image.
        image: PathBuf,
        /// Its format (probed when omitted).
        #[arg(short = 'f', long)]
        format: Option<Format>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bytes a conversion to FORMAT needs.
    Measure {
        /// The image to measure (or use --size).
        #[arg(required_unless_present = "size")]
        image: Option<PathBuf>,
        /// Measure a new empty image of this size instead.
        #[arg(long, value_parser = diskforge_size::parse_bytes, conflicts_with = "image")]
        size: Option<u64>,
        /// Target format.
        #[arg(short = 'O', long = "output-format")]
        output_format: Format,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a filesystem on an image file, a device, or a byte range of an image.
    Mkfs {
        /// ext2, ext3, ext4, xfs, vfat, btrfs, swap, squashfs, erofs.
        fs: FsType,
        /// Image file or block device.
        target: PathBuf,
        /// Size of the file (created or emptied), or of the range with --offset.
        #[arg(long, value_parser = diskforge_size::parse_bytes)]
        size: Option<u64>,
        /// Byte offset into TARGET (needs --size): a partition without a loop device.
        #[arg(long, value_parser = diskforge_size::parse_bytes, requires = "size")]
        offset: Option<u64>,
        /// Filesystem label.
        #[arg(short = 'L', long)]
        label: Option<String>,
        /// Filesystem UUID (vfat: XXXX-XXXX).
        #[arg(short = 'U', long)]
        uuid: Option<String>,
        /// Populate from this directory (no mount needed).
        #[arg(long = "from")]
        from: Option<PathBuf>,
        /// Extra argument for the mkfs tool (repeatable).
        #[arg(long = "extra", allow_hyphen_values = true)]
        extra: Vec<String>,
        /// Print the plan and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON (the plan, and what blkid finds).
        #[arg(long)]
        json: bool,
    },
    /// Show the filesystem type, label and UUID on a file or device.
    Detect {
        /// Image file or device.
        path: PathBuf,
        /// Byte offset (a partition inside an image).
        #[arg(long, value_parser = diskforge_size::parse_bytes, default_value = "0")]
        offset: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    diskforge_cli::dist_hook::<Cli>();
    diskforge_cmd::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dfimg: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[u])
    }
}

fn render_info(i: &qemu_img_cmd::ImageInfo) -> String {
    let mut s = format!(
        "image: {}\nformat: {}\nvirtual size: {}\n",
        i.filename,
        i.format,
        human_size(i.virtual_size)
    );
    if let Some(a) = i.actual_size {
        s += &format!("disk size: {}\n", human_size(a));
    }
    if let Some(c) = i.cluster_size {
        s += &format!("cluster size: {c}\n");
    }
    if let Some(b) = &i.backing_filename {
        let f = i.backing_filename_format.as_deref().unwrap_or("?");
        s += &format!("backing file: {b} ({f})\n");
    }
    s
}

fn render_check(r: &qemu_img_cmd::CheckReport) -> String {
    let state = if r.is_clean() {
        "no errors"
    } else if r.corruptions > 0 {
        "CORRUPT"
    } else {
        "leaks"
    };
    let mut s = format!("{}: {} ({state})\n", r.filename, r.format);
    s += &format!(
        "corruptions: {}\nleaked clusters: {}\ncheck errors: {}\n",
        r.corruptions, r.leaks, r.check_errors
    );
    if let (Some(a), Some(t)) = (r.allocated_clusters, r.total_clusters) {
        s += &format!("allocated clusters: {a}/{t}\n");
    }
    s
}

/// A progress bar on a terminal; nothing otherwise.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(10_000);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
    {
        pb.set_style(style);
    }
    Some(pb)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Info {
            image,
            format,
            backing_chain,
            json,
        } => {
            let chain = if backing_chain {
                qemu_img_cmd::backing_chain(&image)?
            } else {
                vec![qemu_img_cmd::info(&image, format)?]
            };
            if json {
                if backing_chain {
                    print_json(&chain)?
                } else {
                    print_json(&chain[0])?
                }
            } else {
                let texts: Vec<String> = chain.iter().map(render_info).collect();
                print!("{}", texts.join("\n"));
            }
        }
        Cmd::Convert {
            src,
            dst,
            output_format,
            format,
            compress,
            out_of_order,
            coroutines,
            options,
            json,
        } => {
            if compress && !output_format.supports_compression() {
                anyhow::bail!("-c: {output_format} cannot be compressed (qcow2 and vmdk can)");
            }
            let opts = ConvertOptions {
                source_format: format,
                target_format: output_format,
                compress,
                out_of_order,
                coroutines,
                options,
            };
            let pb = progress_bar();
            let on_progress = |p: f64| {
                if let Some(pb) = &pb {
                    pb.set_position((p * 100.0) as u64);
                    pb.set_message(format!("{p:5.1}%"));
                }
            };
            // vmdk subformats with extent files named after the output cannot be renamed.
            let extents = output_format == Format::Vmdk
                && opts.options.iter().any(|o| {
                    o.starts_with("subformat=")
                        && !matches!(
                            &o["subformat=".len()..],
                            "monolithicSparse" | "streamOptimized"
                        )
                });
            if extents {
                qemu_img_cmd::convert(&src, &dst, &opts, on_progress)?;
            } else {
                qemu_img_cmd::convert_into_place(&src, &dst, &opts, on_progress)?;
            }
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let info = qemu_img_cmd::info(&dst, Some(output_format))?;
            if json {
                print_json(&info)?;
            } else {
                println!(
                    "{} → {} ({output_format}, {})",
                    src.display(),
                    dst.display(),
                    human_size(info.virtual_size)
                );
            }
        }
        Cmd::Create {
            image,
            size,
            format,
            backing,
            backing_format,
            options,
            json,
        } => {
            if size.is_none() && backing.is_none() {
                anyhow::bail!(
                    "create {}: give a SIZE (or a backing file with -b)",
                    image.display()
                );
            }
            let opts = CreateOptions {
                format,
                size,
                backing: backing.zip(backing_format),
                options,
            };
            qemu_img_cmd::create(&image, &opts)?;
            let info = qemu_img_cmd::info(&image, Some(format))?;
            if json {
                print_json(&info)?
            } else {
                print!("{}", render_info(&info))
            }
        }
        Cmd::Resize {
            image,
            size,
            format,
            shrink,
            json,
        } => {
            qemu_img_cmd::resize(&image, format, size, shrink)?;
            let info = qemu_img_cmd::info(&image, format)?;
            if json {
                print_json(&info)?;
            } else {
                println!("{}: {}", image.display(), human_size(info.virtual_size));
            }
        }
        Cmd::Check {
            image,
            format,
            json,
        } => {
            let report = match qemu_img_cmd::check(&image, format) {
                Ok(r) => r,
                Err(qemu_img_cmd::Error::CheckUnsupported { path, format }) => {
                    let reason = qemu_img_cmd::Error::CheckUnsupported {
                        path: path.clone(),
                        format: format.clone(),
                    }
                    .to_string();
                    if json {
                        print_json(&serde_json::json!({
                            "filename": path,
                            "format": format,
                            "checked": false,
                            "reason": reason,
                        }))?;
                    } else {
                        eprintln!("dfimg: {reason}");
                    }
                    return Ok(ExitCode::from(5));
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                print_json(&report)?
            } else {
                print!("{}", render_check(&report))
            }
            if report.corruptions > 0 || report.check_errors > 0 {
                return Ok(ExitCode::from(3));
            }
            if report.leaks > 0 {
                return Ok(ExitCode::from(4));
            }
        }
        Cmd::Measure {
            image,
            size,
            output_format,
            json,
        } => {
            let input = match (&image, size) {
                (Some(p), _) => MeasureInput::Image(p),
                (None, Some(n)) => MeasureInput::Size(n),
                (None, None) => anyhow::bail!("measure: give an IMAGE or --size"),
            };
            let m = qemu_img_cmd::measure(input, output_format)?;
            if json {
                print_json(&m)?;
            } else {
                println!(
                    "required size: {}\nfully allocated size: {}",
                    m.required, m.fully_allocated
                );
            }
        }
        Cmd::Mkfs {
            fs,
            target,
            size,
            offset,
            label,
            uuid,
            from,
            extra,
            dry_run,
            json,
        } => {
            let mut o = MkfsOptions::new(fs);
            o.label = label;
            o.uuid = uuid;
            o.populate_from = from;
            o.extra_args = extra;
            o.source_date_epoch = diskforge_mkfs::source_date_epoch_from_env();
            let is_device = std::fs::metadata(&target)
                .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
                .unwrap_or(false);
            let t = match (offset, size) {
                (Some(offset), Some(size)) => Target::Region {
                    image: target.clone(),
                    offset,
                    size,
                },
                (None, Some(_)) if is_device => anyhow::bail!(
                    "--size on block device {}: give --offset too (a range), or drop --size",
                    target.display()
                ),
                _ if is_device => Target::Device {
                    path: target.clone(),
                },
                _ => Target::File {
                    path: target.clone(),
                    size,
                },
            };
            if dry_run {
                let plan = diskforge_mkfs::plan(&o, &t)?;
                if json {
                    print_json(&plan)?;
                } else {
                    for s in &plan.steps {
                        println!("{}", serde_json::to_string(s)?);
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report = diskforge_mkfs::mkfs(&o, &t)
                .with_context(|| format!("mkfs {fs} on {}", target.display()))?;
            if json {
                print_json(&report)?;
            } else {
                let d = report.detected.as_ref();
                println!(
                    "{}: {fs} label={} uuid={}{}",
                    target.display(),
                    d.and_then(|d| d.label.as_deref()).unwrap_or("-"),
                    d.and_then(|d| d.uuid.as_deref()).unwrap_or("-"),
                    if report.plan.reproducible {
                        " (reproducible)"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Detect { path, offset, json } => {
            let d = diskforge_mkfs::detect_at(&path, offset)?;
            if json {
                print_json(&d)?;
            } else if let Some(d) = d {
                println!(
                    "{}: {} label={} uuid={}",
                    path.display(),
                    d.fs_type,
                    d.label.as_deref().unwrap_or("-"),
                    d.uuid.as_deref().unwrap_or("-")
                );
            } else {
                println!("{}: no filesystem found", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
