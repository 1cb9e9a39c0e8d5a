//! Corpus cases for format `tar` (see `hardening::corpus`): layer tarballs and OCI image
//! layouts, fed to `dflayers`.
//!
//! - `tests/corpus/tar/*` (small, checked in, made by `tests/corpus/tar/make.py`): each
//!   through `dflayers unpack` (import into a store in the case's target) and
//!   `dflayers squash` (import, then write one tarball into the target);
//! - `tests/corpus/oci/*/` (layouts, same script): `dflayers unpack LAYOUT` and
//!   `LAYOUT:latest`;
//! - large inputs written here, deterministically, into the scratch dir: zstd and gzip
//!   bombs (64 GiB of zeros after the end of the archive; 1 GiB of member data under a
//!   256 MiB total limit), a 1 TiB sparse member (old GNU and PAX 1.0), 100 000 entries, a
//!   10 MB path, an OCI layout whose `index.json` or layer blob is a FIFO;
//! - `dflayers run` on a busybox layer (positive control) and on hostile layers.
//!
//! Every input is copied into its case dir first, so a tool that writes into its input is
//! caught as writing outside its target.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{CANARY, Case, Expect, copy_tree};
use crate::hardening::{Ctx, corpus_dir};

const MTIME: u64 = 1_700_000_000;

/// A numeric tar field: octal when it fits, else GNU base-256.
fn numeric(field: &mut [u8], v: u64) {
    let w = field.len();
    let oct = format!("{v:0width$o}", width = w - 1);
    if oct.len() < w {
        field[..w - 1].copy_from_slice(oct.as_bytes());
        field[w - 1] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[w - 8..].copy_from_slice(&v.to_be_bytes());
    }
}

/// One 512-byte ustar header (`typ` as in POSIX: b'0' file, b'5' dir, b'2' symlink …).
fn header(name: &[u8], size: u64, typ: u8, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    numeric(&mut h[100..108], if typ == b'5' { 0o755 } else { 0o644 });
    numeric(&mut h[108..116], 0);
    numeric(&mut h[116..124], 0);
    numeric(&mut h[124..136], size);
    numeric(&mut h[136..148], MTIME);
    h[156] = typ;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    checksum(&mut h);
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

fn member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut v = header(name.as_bytes(), data.len() as u64, b'0', b"").to_vec();
    v.extend(padded(data));
    v
}

/// A PAX extended header carrying `records`.
fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3; // " k=v\n"
        let mut n = rest + 1;
        while n.to_string().len() + rest != n {
            n = n.to_string().len() + rest;
        }
        body.extend(format!("{n} {k}=").as_bytes());
        body.extend(*v);
        body.push(b'\n');
    }
    let mut v = header(b"PaxHeaders/x", body.len() as u64, b'x', b"").to_vec();
    v.extend(padded(&body));
    v
}

const END: [u8; 1024] = [0; 1024];

/// A zstd frame holding `data` as raw blocks followed by `zeros` bytes of zeros as RLE
/// blocks (4 bytes each per 128 KiB: RFC 8878 3.1.1.2), so a 64 GiB stream takes 2 MiB.
fn zstd_with_zeros(data: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    out.push(0x00); // frame header descriptor: no size, no checksum, not single segment
    out.push(7 << 3); // window descriptor: 2^(10+7) = 128 KiB
    let block = |out: &mut Vec<u8>, size: u64, rle: bool, last: bool| {
        let h = (size << 3) | (u64::from(rle) << 1) | u64::from(last);
        out.extend(&h.to_le_bytes()[..3]);
    };
    let chunks: Vec<&[u8]> = data.chunks(BLOCK as usize).collect();
    for (i, c) in chunks.iter().enumerate() {
        block(
            &mut out,
            c.len() as u64,
            false,
            zeros == 0 && i + 1 == chunks.len(),
        );
        out.extend(*c);
    }
    let mut left = zeros;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        block(&mut out, n, true, left == 0);
        out.push(0);
    }
    out
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// One gzip member of `n` zeros (compressed once, ~1/1000 of `n`).
fn gzip_zeros(n: usize) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        e.write_all(&chunk[..k])?;
        left -= k;
    }
    Ok(e.finish()?)
}

/// An old-GNU sparse member ('S') of apparent size `real` with one 512-byte data chunk at
/// its end.
fn gnu_sparse(name: &str, real: u64) -> Vec<u8> {
    let mut h = header(name.as_bytes(), 512, b'S', b"");
    // GNU header magic instead of ustar.
    h[257..265].copy_from_slice(b"ustar  \0");
    numeric(&mut h[386..398], real - 512); // sparse[0].offset
    numeric(&mut h[398..410], 512); // sparse[0].numbytes
    h[482] = 0; // not extended
    numeric(&mut h[483..495], real); // realsize
    checksum(&mut h);
    let mut v = h.to_vec();
    v.extend([b'z'; 512]);
    v
}

/// A PAX 1.0 sparse member (GNU tar --sparse --format=pax) of apparent size `real`.
fn pax_sparse(name: &str, real: u64) -> Vec<u8> {
    let real_s = real.to_string();
    let mut v = pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", name.as_bytes()),
        ("GNU.sparse.realsize", real_s.as_bytes()),
    ]);
    let map = format!("1\n{}\n512\n", real - 512);
    let mut data = padded(map.as_bytes());
    data.extend([b'z'; 512]);
    v.extend(header(b"GNUSparseFile.0/x", data.len() as u64, b'0', b""));
    v.extend(data);
    v
}

/// One generated input: its file name, its bytes (or a directory to copy), extra
/// `dflayers` arguments (limits) and what should happen.
struct Generated {
    name: String,
    bytes: Vec<u8>,
    args: Vec<String>,
    expect: Expect,
    limit: Duration,
}

fn generated(quick: bool) -> Result<Vec<Generated>> {
    let mut out = Vec::new();
    let small = {
        let mut t = member("etc/hostname", b"bomb\n");
        t.extend(END);
        t
    };
    // 64 GiB of zeros after a valid archive's end blocks: nothing to unpack, but a reader
    // that hashes "the rest of the stream" for the diff_id reads it all.
    out.push(Generated {
        name: "bomb-trailing-64g.tar.zst".into(),
        bytes: zstd_with_zeros(&small, 64 << 30),
        args: vec![],
        expect: Expect::Refuse,
        limit: Duration::from_secs(60),
    });
    let zeros64m = gzip_zeros(64 << 20)?;
    let mut gz = gzip(&small)?;
    for _ in 0..64 {
        gz.extend(&zeros64m);
    }
    out.push(Generated {
        name: "bomb-trailing-4g.tar.gz".into(),
        bytes: gz,
        args: vec![],
        expect: Expect::Refuse,
        limit: Duration::from_secs(60),
    });
    // 16 members of 64 MiB of zeros (1 GiB from ~1 MB) under a 256 MiB total limit.
    let mut gz = Vec::new();
    for i in 0..16 {
        gz.extend(gzip(&header(
            format!("zeros-{i:02}").as_bytes(),
            64 << 20,
            b'0',
            b"",
        ))?);
        gz.extend(&zeros64m);
    }
    gz.extend(gzip(&END)?);
    out.push(Generated {
        name: "bomb-members-1g.tar.gz".into(),
        bytes: gz,
        args: vec!["--max-total-size".into(), "256MiB".into()],
        expect: Expect::Refuse,
        limit: Duration::from_secs(60),
    });
    // A 5 GiB PAX extended header (zeros, ~5 MB compressed): a reader that loads
    // extended headers into memory whole runs out of it.
    let mut gz = gzip(&header(b"PaxHeaders/bomb", 5 << 30, b'x', b""))?;
    for _ in 0..80 {
        gz.extend(&zeros64m);
    }
    let mut tail = member("short", b"x\n");
    tail.extend(END);
    gz.extend(gzip(&tail)?);
    out.push(Generated {
        name: "bomb-pax-header-5g.tar.gz".into(),
        bytes: gz,
        args: vec![],
        expect: Expect::Refuse,
        limit: Duration::from_secs(60),
    });
    // 1 TiB sparse members: over the default entry limit (refused), and allowed by the
    // limits (then the file must be written sparse, in seconds).
    for (name, bytes) in [
        ("sparse-1t-gnu.tar", gnu_sparse("sparse", 1 << 40)),
        ("sparse-1t-pax.tar", pax_sparse("sparse", 1 << 40)),
    ] {
        let mut t = bytes;
        t.extend(END);
        out.push(Generated {
            name: name.into(),
            bytes: t.clone(),
            args: vec![],
            expect: Expect::Refuse,
            limit: Duration::from_secs(60),
        });
        out.push(Generated {
            name: name.replace(".tar", "-allowed.tar"),
            bytes: t,
            args: vec![
                "--max-entry-size".into(),
                "2TiB".into(),
                "--max-total-size".into(),
                "2TiB".into(),
            ],
            expect: Expect::Either,
            limit: Duration::from_secs(60),
        });
    }
    // 100 000 entries (100 directories of 1000 empty files).
    if !quick {
        let mut t = Vec::with_capacity(101_000 * 512 + 1024);
        for d in 0..100 {
            t.extend(header(format!("d{d:03}/").as_bytes(), 0, b'5', b""));
            for f in 0..1000 {
                t.extend(header(format!("d{d:03}/f{f:04}").as_bytes(), 0, b'0', b""));
            }
        }
        t.extend(END);
        out.push(Generated {
            name: "entries-100k.tar".into(),
            bytes: t,
            args: vec![],
            expect: Expect::Accept,
            limit: Duration::from_secs(120),
        });
    }
    // A 10 MB path: 5 million nested directories, and one 10 MB name.
    let deep = "a/".repeat(5_000_000) + CANARY;
    let mut t = pax(&[("path", deep.as_bytes())]);
    t.extend(member("short", b"x\n"));
    t.extend(END);
    out.push(Generated {
        name: "path-10mb-deep.tar".into(),
        bytes: t,
        args: vec![],
        expect: Expect::Refuse,
        limit: Duration::from_secs(60),
    });
    let long = "n".repeat(10 << 20);
    let mut t = pax(&[("path", long.as_bytes())]);
    t.extend(member("short", b"x\n"));
    t.extend(END);
    out.push(Generated {
        name: "name-10mb.tar".into(),
        bytes: t,
        args: vec![],
        expect: Expect::Refuse,
        limit: Duration::from_secs(60),
    });
    Ok(out)
}

/// The expectation for a checked-in tarball.
fn tar_expect(name: &str) -> Expect {
    match name {
        n if n.starts_with("good") => Expect::Accept,
        // Accepting is correct when nothing escapes: an empty layer, device nodes inside
        // the layer (as container layers carry them), a symlink inside the layer.
        "empty.tar" | "only-end-blocks.tar" | "devices.tar" | "absolute.tar" => Expect::Either,
        _ => Expect::Refuse,
    }
}

fn oci_expect(name: &str) -> Expect {
    if name == "good" {
        Expect::Accept
    } else {
        Expect::Refuse
    }
}

/// A `dflayers` case on `input` (already in `case_dir/input`).
struct Run<'a> {
    ctx: &'a Ctx,
    case_dir: PathBuf,
    input_name: String,
    label: String,
}

impl Run<'_> {
    fn case(
        self,
        sub: &[&str],
        spec: &str,
        extra: &[String],
        expect: Expect,
        limit: Duration,
    ) -> Case {
        let target = self.case_dir.join("target");
        let mut cmd = Command::new(self.ctx.bin("dflayers"));
        cmd.arg("--store").arg(target.join("store"));
        cmd.args(extra);
        let mut args = sub.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for a in &mut args {
            *a = a
                .replace("{spec}", spec)
                .replace("{target}", &target.display().to_string());
        }
        cmd.args(args);
        cmd.env("TMPDIR", &target);
        Case {
            tool: "dflayers",
            name: self.label,
            input_name: self.input_name,
            cmd,
            target,
            case_dir: self.case_dir,
            expect,
            limit,
        }
    }
}

/// The subcommands each tarball goes through.
const TAR_RUNS: &[(&str, &[&str])] = &[
    ("unpack", &["unpack", "{spec}"]),
    (
        "squash",
        &["squash", "--layer", "{spec}", "-o", "{target}/squashed.tar"],
    ),
];

const RUN: &[&str] = &[
    "run",
    "--layer",
    "{spec}",
    "--scratch",
    "{target}/scratch",
    "--",
    "/bin/true",
];

fn prepare(
    ctx: &Ctx,
    label: &str,
    src: Option<&Path>,
    bytes: Option<&[u8]>,
    name: &str,
) -> Result<(PathBuf, PathBuf)> {
    let case_dir = ctx.dir(&format!(
        "tar-{}",
        label.replace('/', "-").replace(' ', "_")
    ))?;
    let input_dir = case_dir.join("input");
    std::fs::create_dir_all(&input_dir)?;
    std::fs::create_dir_all(case_dir.join("target/scratch"))?;
    let input = input_dir.join(name);
    match (src, bytes) {
        (Some(s), _) => copy_tree(s, &input)?,
        (None, Some(b)) => std::fs::write(&input, b)?,
        (None, None) => {}
    }
    Ok((case_dir, input))
}

/// The cases of this format.
pub fn cases(ctx: &Ctx) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    let limit = Duration::from_secs(60);
    // Checked-in tarballs.
    let files = super::listing(
        ctx,
        "tar",
        |p| {
            let n = p.to_string_lossy();
            n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tar.zst")
        },
        Some("good.tar"),
    )?;
    for (f, name) in &files {
        for (sub, argv) in TAR_RUNS {
            let label = format!("tar/{name} ({sub})");
            let (case_dir, input) = prepare(ctx, &label, Some(f), None, name)?;
            let spec = input.display().to_string();
            cases.push(
                Run {
                    ctx,
                    case_dir,
                    input_name: name.clone(),
                    label,
                }
                .case(argv, &spec, &[], tar_expect(name), limit),
            );
        }
    }
    // Checked-in OCI layouts.
    // Checked-in OCI layouts.
    let dir = corpus_dir(ctx).join("oci");
    let layouts = super::listing(ctx, "oci", Path::is_dir, Some("good"))?;
    for (l, name) in &layouts {
        for tail in ["", ":latest"] {
            let label = format!("oci/{name}{tail} (unpack)");
            let (case_dir, input) = prepare(ctx, &label, Some(l), None, name)?;
            let spec = format!("{}{tail}", input.display());
            cases.push(
                Run {
                    ctx,
                    case_dir,
                    input_name: name.clone(),
                    label,
                }
                .case(&["unpack", "{spec}"], &spec, &[], oci_expect(name), limit),
            );
        }
    }
    // Generated OCI layouts: the good one with index.json, then the layer blob, a FIFO.
    let good = dir.join("good");
    for what in ["index-fifo", "blob-fifo"] {
        let name = format!("oci-{what}");
        let label = format!("oci/{name} (unpack, generated)");
        let (case_dir, input) = prepare(ctx, &label, Some(&good), None, &name)?;
        let victim = if what == "index-fifo" {
            input.join("index.json")
        } else {
            let idx: serde_json::Value =
                serde_json::from_slice(&std::fs::read(input.join("index.json"))?)?;
            let m = idx["manifests"][0]["digest"].as_str().context("digest")?;
            let mf: serde_json::Value = serde_json::from_slice(&std::fs::read(
                input
                    .join("blobs/sha256")
                    .join(m.trim_start_matches("sha256:")),
            )?)?;
            let l = mf["layers"][0]["digest"].as_str().context("layer")?;
            input
                .join("blobs/sha256")
                .join(l.trim_start_matches("sha256:"))
        };
        std::fs::remove_file(&victim)?;
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &victim,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .with_context(|| format!("mkfifo {}", victim.display()))?;
        let spec = input.display().to_string();
        cases.push(
            Run {
                ctx,
                case_dir,
                input_name: name,
                label,
            }
            .case(&["unpack", "{spec}"], &spec, &[], Expect::Refuse, limit),
        );
    }
    // Generated large tarballs.
    for g in generated(ctx.quick)? {
        let label = format!("tar/{} (unpack, generated)", g.name);
        let (case_dir, input) = prepare(ctx, &label, None, Some(&g.bytes), &g.name)?;
        let spec = input.display().to_string();
        cases.push(
            Run {
                ctx,
                case_dir,
                input_name: g.name.clone(),
                label,
            }
            .case(&["unpack", "{spec}"], &spec, &g.args, g.expect, g.limit),
        );
    }
    // `run`: a busybox layer (positive control), then hostile layers: refused before
    // anything is mounted.
    let mut bb = header(b"bin/", 0, b'5', b"").to_vec();
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let mut h = header(b"bin/busybox", busybox.len() as u64, b'0', b"");
    numeric(&mut h[100..108], 0o755);
    checksum(&mut h);
    bb.extend(h);
    bb.extend(padded(&busybox));
    bb.extend(header(b"bin/true", 0, b'2', b"busybox"));
    bb.extend(header(b"bin/sh", 0, b'2', b"busybox"));
    bb.extend(END);
    let label = "tar/good-busybox.tar (run, generated)".to_string();
    let (case_dir, input) = prepare(ctx, &label, None, Some(&bb), "good-busybox.tar")?;
    let spec = input.display().to_string();
    cases.push(
        Run {
            ctx,
            case_dir,
            input_name: "good-busybox.tar".into(),
            label,
        }
        .case(RUN, &spec, &[], Expect::Accept, limit),
    );
    let tar_dir = corpus_dir(ctx).join("tar");
    let hostile: [(&str, &Path, &[&str]); 2] = [
        (
            "tar",
            &tar_dir,
            &[
                "dotdot.tar",
                "symlink-abs-then-write.tar",
                "hardlink-outside.tar",
                "pax-path-traversal.tar",
                "whiteout-dotdot.tar",
            ],
        ),
        (
            "oci",
            &dir,
            &["layer-dotdot", "blob-symlink-outside", "digest-mismatch"],
        ),
    ];
    for (format, from, names) in hostile {
        for &name in names {
            let label = format!("{format}/{name} (run)");
            let (case_dir, input) = prepare(ctx, &label, Some(&from.join(name)), None, name)?;
            let spec = input.display().to_string();
            cases.push(
                Run {
                    ctx,
                    case_dir,
                    input_name: name.into(),
                    label,
                }
                .case(RUN, &spec, &[], Expect::Refuse, limit),
            );
        }
    }
    Ok(cases)
}
