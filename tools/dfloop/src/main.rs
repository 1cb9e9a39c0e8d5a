//! `dfloop`: attach, detach, list and find loop devices (a thin CLI over `diskforge-loop`).
//!
//! A device attached by `dfloop attach` outlives the process on purpose: the tool releases
//! the `LoopDevice` guard after attaching (use `dfloop detach`, or `--hold` to keep the
//! device only while `dfloop` runs).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use diskforge_loop::{AttachOptions, LoopDevice, LoopInfo, PartitionLocation};
use diskforge_mount::signal::TerminationFlag;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed (the message names the file or device)
  2  bad usage
  3  find: no loop device uses the file

Examples:
  dfloop attach disk.img                      # prints /dev/loopN
  dfloop attach --offset 1MiB --sizelimit 64MiB --ro disk.img
  dfloop attach --partscan --json disk.img
  dfloop attach --hold disk.img               # detach on Ctrl-C / SIGTERM
  dfloop list --json                          # same fields as losetup -J -l
  dfloop find disk.img
  dfloop partitions /dev/loop3
  dfloop detach /dev/loop3";

/// Attach, detach and list loop devices.
#[derive(Debug, Parser)]
#[command(name = "dfloop", version, after_help = AFTER_HELP, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Attach FILE to a free loop device and print the device.
    ///
    /// The device stays attached after dfloop exits (unless --hold or --autoclear).
    Attach {
        /// Image file or block device.
        file: PathBuf,
        /// Start of the range: a size such as 1MiB (KiB… binary; KB… and bare
        /// K… decimal).
        #[arg(long, value_parser = diskforge_size::parse_bytes, default_value = "0")]
        offset: u64,
        /// Length of the range, bytes (0 = to the end).
        #[arg(long, value_parser = diskforge_size::parse_bytes, default_value = "0")]
        sizelimit: u64,
        /// Attach read-only.
        #[arg(long, short = 'r')]
        ro: bool,
        /// Scan for partitions (loopNpK nodes).
        #[arg(long, short = 'P')]
        partscan: bool,
        /// Use direct I/O on the backing file.
        #[arg(long)]
        direct_io: bool,
        /// Detach automatically on the last close.
        #[arg(long)]
        autoclear: bool,
        /// Logical block size: 512, 1024, 2048 or 4096.
        #[arg(long)]
        block_size: Option<u32>,
        /// Keep the device only until SIGINT/SIGTERM/SIGHUP, then detach and exit.
        #[arg(long)]
        hold: bool,
        /// Print the device's state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach loop devices.
    Detach {
        /// Devices such as /dev/loop3.
        #[arg(required = true)]
        devices: Vec<PathBuf>,
        /// JSON: {"loopdevices": [{"name", "detached", "error"}]}, one entry per DEVICE.
        #[arg(long)]
        json: bool,
    },
    /// List attached loop devices.
    List {
        /// JSON like `losetup -J -l`: {"loopdevices": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// List the loop devices whose backing file is FILE.
    Find {
        /// The backing file.
        file: PathBuf,
        /// JSON: {"loopdevices": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Show a device's partitions: the pN node, or the byte range of the backing file
    /// (an MBR extended partition is marked as the container it is, with neither).
    Partitions {
        /// A loop device.
        device: PathBuf,
        /// JSON: {"partitions": [...]}.
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
            eprintln!("dfloop: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Attach {
            file,
            offset,
            sizelimit,
            ro,
            partscan,
            direct_io,
            autoclear,
            block_size,
            hold,
            json,
        } => {
            let mut opts = AttachOptions::new()
                .offset(offset)
                .sizelimit(sizelimit)
                .read_only(ro)
                .partscan(partscan)
                .direct_io(direct_io)
                .autoclear(autoclear);
            if let Some(bs) = block_size {
                opts = opts.block_size(bs);
            }
            // Register before attaching, so a signal during attach cannot leak the device.
            let flag = if hold {
                Some(TerminationFlag::register().context("installing signal handlers")?)
            } else {
                None
            };
            let dev = LoopDevice::attach(&file, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dev.info()?)?);
            } else {
                println!("{}", dev.path().display());
            }
            std::io::stdout().flush()?;
            match flag {
                Some(flag) => {
                    flag.wait(Duration::from_millis(100));
                    dev.detach()?;
                }
                // The CLI's contract: the device outlives us.
                None => drop(dev.release()),
            }
        }
        Cmd::Detach { devices, json } => {
            let mut failed = false;
            let mut rows = Vec::new();
            for d in devices {
                let error = diskforge_loop::detach(&d)
                    .err()
                    .map(|e| format!("{:#}", anyhow::Error::from(e)));
                if let Some(e) = &error {
                    eprintln!("dfloop: {e}");
                    failed = true;
                }
                rows.push(serde_json::json!({
                    "name": d,
                    "detached": error.is_none(),
                    "error": error,
                }));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "loopdevices": rows }))?
                );
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::List { json } => print_list(&diskforge_loop::list()?, json)?,
        Cmd::Find { file, json } => {
            let found = diskforge_loop::find_by_backing_file(&file)?;
            print_list(&found, json)?;
            if found.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Partitions { device, json } => partitions(&device, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(devs: &[LoopInfo], json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "loopdevices": devs }))?
        );
        return Ok(());
    }
    print!("{}", render_table(devs));
    Ok(())
}

fn render_table(devs: &[LoopInfo]) -> String {
    let mut out = String::new();
    if devs.is_empty() {
        return out;
    }
    out.push_str("NAME         SIZELIMIT     OFFSET AUTOCLEAR RO DIO LOG-SEC BACK-FILE\n");
    for d in devs {
        out.push_str(&format!(
            "{:<12} {:>9} {:>10} {:>9} {:>2} {:>3} {:>7} {}\n",
            d.name.display(),
            d.sizelimit,
            d.offset,
            u8::from(d.autoclear),
            u8::from(d.ro),
            u8::from(d.dio),
            d.log_sec,
            d.back_file.display()
        ));
    }
    out
}

#[derive(serde::Serialize)]
struct PartRow {
    number: u32,
    start: u64,
    size: u64,
    /// MBR extended partition: a container, with no location to use.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    extended: bool,
    location: Option<PartitionLocation>,
}

fn partitions(device: &std::path::Path, json: bool) -> Result<()> {
    let info = diskforge_loop::info(device)?;
    let table = diskforge_loop::read_partition_table(device)?;
    let node = |n: u32| PathBuf::from(format!("{}p{n}", info.name.display()));
    let rows: Vec<PartRow> = table
        .iter()
        .map(|e| PartRow {
            number: e.number,
            start: e.start,
            size: e.size,
            extended: e.extended,
            // The extended container's node is a 1 KiB stub and its range holds the logical
            // partitions: neither is a place to use.
            location: if e.extended {
                None
            } else if node(e.number).exists() {
                Some(PartitionLocation::Node(node(e.number)))
            } else {
                Some(PartitionLocation::Range {
                    backing_file: info.back_file.clone(),
                    offset: info.offset + e.start,
                    size: e.size,
                })
            },
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "partitions": rows }))?
        );
        return Ok(());
    }
    println!("NR       START        SIZE WHERE");
    for r in rows {
        let whr = match &r.location {
            None => "(extended: container of the logical partitions)".to_owned(),
            Some(PartitionLocation::Node(p)) => p.display().to_string(),
            Some(PartitionLocation::Range {
                backing_file,
                offset,
                size,
            }) => {
                format!(
                    "{} --offset {offset} --sizelimit {size}",
                    backing_file.display()
                )
            }
        };
        println!("{:<2} {:>11} {:>11} {whr}", r.number, r.start, r.size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --offset/--sizelimit read the one diskforge size grammar (bare letters decimal).
    #[test]
    fn sizes() {
        let offset = |v: &str| match Cli::try_parse_from(["dfloop", "attach", "--offset", v, "f"]) {
            Ok(Cli {
                cmd: Cmd::Attach { offset, .. },
            }) => Ok(offset),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        for (s, v) in [
            ("0", 0),
            ("4096", 4096),
            ("512KiB", 512 << 10),
            ("1MiB", 1 << 20),
            ("2GiB", 2 << 30),
            ("1M", 1_000_000),
            ("1MB", 1_000_000),
        ] {
            assert_eq!(offset(s), Ok(v), "{s}");
        }
        assert!(offset("1X").unwrap_err().contains("unknown unit \"X\""));
        assert!(offset("M").is_err());
        assert!(offset("-1").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn table_renders() {
        let d = LoopInfo {
            name: "/dev/loop7".into(),
            sizelimit: 2097152,
            offset: 1048576,
            autoclear: false,
            ro: true,
            back_file: "/var/tmp/x.img".into(),
            dio: false,
            log_sec: 512,
            partscan: false,
            maj_min: "7:7".into(),
        };
        insta::assert_snapshot!(render_table(&[d]));
    }
}
