//! The xorriso route of `direct` mode: `xorriso -indev IN -outdev OUT -boot_image any
//! replay` with `-map`/`-rm_r`/`-volid`/`-append_partition` for the edits ([`direct`]), and
//! the same with the MD5 hashed while the bytes stream through a FIFO ([`direct_streamed`]).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use diskforge_cmd::Cmd;

use crate::changes::{Changes, raw_images, staged_sources};
use crate::inspect::{Inspection, gpt_only_hidden_efi};
use crate::iso9660::SECTOR;
use crate::isomd5::{IsoMd5, Md5Sums, write_appdata};
use crate::output::IO_BUF;
use crate::{Error, Result};

/// `direct` mode: xorriso rewrites the image with the edits, replaying the boot setup.
pub fn direct(
    input: &Path,
    output: &Path,
    insp: &Inspection,
    changes: &Changes,
    scratch: &Path,
) -> Result<()> {
    diskforge_fault::point("iso.replay")?;
    let mut c = Cmd::new("xorriso")
        .args(["-abort_on", "FAILURE", "-return_with", "SORRY", "32"])
        .arg("-indev")
        .arg(input)
        .arg("-outdev")
        .arg(output)
        // No fsync every 32 MiB (cp does not sync either).
        .args(["-stdio_sync", "off"])
        .args(["-boot_image", "any", "replay"]);
    if insp.joliet.is_some() {
        c = c.args(["-joliet", "on", "-compliance", "joliet_long_names"]);
    }
    if let Some(v) = &changes.volid {
        c = c.args(["-volid", v]);
    }
    for r in &changes.removes {
        c = c.args(["-rm_r", r, "--"]);
    }
    for (src, dest) in staged_sources(changes, scratch)? {
        c = c.arg("-map").arg(src).arg(dest);
    }
    for (n, img) in raw_images(changes, scratch)? {
        c = c
            .args(["-append_partition", &n.to_string(), "0xef"])
            .arg(img);
    }
    if let Some(n) = gpt_only_hidden_efi(insp) {
        // Replay reports "Cannot enable EL Torito boot image" (SORRY) and drops the entry;
        // add it again. The boot entries are compared with the input's afterwards.
        c = c.args(["-boot_image", "any", "appended_part_as=gpt"]);
        c = c.args(["-boot_image", "any", "next", "-boot_image", "any"]);
        c = c.arg(format!("efi_path=--interval:appended_partition_{n}:all::"));
        c = c.args(["-return_with", "FAILURE", "32"]);
    }
    crate::exec::run(
        "replaying the image with xorriso",
        c.args(["-commit"]),
        crate::exec::LONG,
    )?;
    Ok(())
}

/// Pipe buffer asked for on the FIFO (the default 64 KiB costs a context switch per write).
const PIPE_SIZE: usize = 1 << 20;

/// Attempts to release a FIFO reader that xorriso never connected to, and the delay between.
const UNBLOCK_ATTEMPTS: usize = 500;
/// See [`UNBLOCK_ATTEMPTS`].
const UNBLOCK_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Where an output volume's PVD sits (xorriso always writes it at block 16).
const PVD_LBA: u32 = 16;

/// Reads the FIFO xorriso writes to: hashes (once the PVD has streamed past and the volume
/// size is known) and writes to `output`. Returns `None` for the sums when the stream had no
/// primary volume descriptor at block 16.
fn drain_fifo(fifo: &Path, output: &Path) -> Result<Option<Md5Sums>> {
    let mut input = File::open(fifo).map_err(|e| Error::io("opening", fifo, e))?;
    // A bigger pipe means fewer context switches between xorriso and us (best effort).
    let _ = rustix::pipe::fcntl_setpipe_size(&input, PIPE_SIZE);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(output)
        .map_err(|e| Error::io("opening", output, e))?;
    let head_len = (u64::from(PVD_LBA) + 1) * SECTOR;
    let mut head: Vec<u8> = Vec::with_capacity(head_len as usize);
    let mut hasher: Option<IsoMd5> = None;
    let mut buf = vec![0u8; IO_BUF];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading", fifo, e)),
        };
        let data = &buf[..n];
        out.write_all(data)
            .map_err(|e| Error::io("writing", output, e))?;
        match hasher.as_mut() {
            Some(h) => h.update(data),
            None => {
                head.extend_from_slice(data);
                if head.len() as u64 >= head_len {
                    let pvd = &head[(u64::from(PVD_LBA) * SECTOR) as usize..];
                    if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
                        let blocks = u64::from(crate::iso9660::le32(pvd, 80));
                        let mut h = IsoMd5::for_blocks(blocks, PVD_LBA);
                        h.update(&head);
                        hasher = Some(h);
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(hasher.map(IsoMd5::finish))
}

/// `direct` with `--implant-md5` in one pass: xorriso writes into a FIFO, a thread hashes the
/// bytes as they pass on their way to `output`, then the sum goes into the PVD.
pub fn direct_streamed(
    input: &Path,
    output: &Path,
    insp: &Inspection,
    changes: &Changes,
    scratch: &Path,
) -> Result<Option<Md5Sums>> {
    diskforge_fault::point("iso.replay")?;
    let fifo = scratch.join("xorriso-out.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| Error::io("creating the FIFO", &fifo, e.into()))?;
    let (sums, run) = std::thread::scope(|s| {
        let reader = s.spawn(|| drain_fifo(&fifo, output));
        let run = direct(input, &fifo, insp, changes, scratch);
        // If xorriso never opened the FIFO, the reader blocks in open(): open the write side
        // once (retrying until the reader has reached open(), since a non-blocking writer
        // open fails with ENXIO while no reader waits) so it sees EOF.
        for _ in 0..UNBLOCK_ATTEMPTS {
            if reader.is_finished() {
                break;
            }
            match rustix::fs::open(
                &fifo,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            ) {
                Ok(fd) => {
                    drop(fd);
                    break;
                }
                Err(_) => std::thread::sleep(UNBLOCK_DELAY),
            }
        }
        let sums = reader.join().unwrap_or_else(|_| {
            Err(Error::io(
                "hashing",
                output,
                std::io::Error::other("reader thread panicked"),
            ))
        });
        (sums, run)
    });
    run?;
    let sums = sums?;
    match &sums {
        Some(s) => write_appdata(output, PVD_LBA, s)?,
        // No PVD where xorriso puts it: hash the finished file instead.
        None => return crate::isomd5::implant(output, &mut |_, _| {}).map(Some),
    }
    Ok(sums)
}
