//! Corpus cases for diskimage-builder elements: every directory under
//! `tests/corpus/elements/` is one case — an `elements/` dir that becomes `ELEMENTS_PATH` and a
//! `case.conf` (`element = NAME` per requested element, `mode = dry-run|build`,
//! `expect = accept|refuse|either`, `input = TEXT` the refusal must name, `args = …` extra
//! `disk-image-create` flags) — plus cases [`generated`] here where the files would be large
//! or their names cannot be checked in (a newline). Each runs `disk-image-create` on the
//! busybox element: `--dry-run` where the point is resolution, a real build where scripts must
//! run. Next to every elements dir sits a decoy element called `diskforge-canary` whose
//! script leaves a canary file: were `../diskforge-canary` ever resolved, the harness would see
//! it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{CANARY, Case, Expect, copy_tree};
use crate::hardening::Ctx;

/// One case as `case.conf` describes it.
struct Conf {
    elements: Vec<String>,
    dry_run: bool,
    expect: Expect,
    input: String,
    args: Vec<String>,
}

fn parse_conf(path: &Path) -> Result<Conf> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut c = Conf {
        elements: Vec::new(),
        dry_run: true,
        expect: Expect::Refuse,
        input: String::new(),
        args: Vec::new(),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(" = ") else {
            bail!("{}:{}: not `key = value`", path.display(), n + 1);
        };
        match k {
            "element" => c.elements.push(v.to_owned()),
            "mode" => c.dry_run = v == "dry-run",
            "expect" => {
                c.expect = match v {
                    "accept" => Expect::Accept,
                    "refuse" => Expect::Refuse,
                    "either" => Expect::Either,
                    _ => bail!("{}:{}: expect {v:?}", path.display(), n + 1),
                }
            }
            "input" => c.input = v.to_owned(),
            "args" => c.args = v.split_whitespace().map(str::to_owned).collect(),
            _ => bail!("{}:{}: unknown key {k:?}", path.display(), n + 1),
        }
    }
    if c.elements.is_empty() || c.input.is_empty() {
        bail!("{}: needs `element` and `input`", path.display());
    }
    Ok(c)
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A case dir with the decoy `diskforge-canary` element beside `elements/` (outside the
/// target, so anything it writes is an escape, and its script leaves a canary in /tmp).
fn case_dir(ctx: &Ctx, name: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = ctx.dir(&format!("corpus-elements-{name}"))?;
    write_exec(
        &dir.join(CANARY).join("root.d/10-canary"),
        &format!("#!/bin/sh\ntouch /tmp/{CANARY}-decoy-element-ran\n"),
    )?;
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("tmp"))?;
    Ok((dir, target))
}

fn case(ctx: &Ctx, name: String, dir: PathBuf, target: PathBuf, conf: &Conf) -> Case {
    let mut cmd = Command::new(ctx.bin("disk-image-create"));
    if conf.dry_run {
        cmd.arg("--dry-run");
    }
    if !conf.args.iter().any(|a| a == "-t") {
        cmd.args(["-t", "tar"]);
    }
    cmd.args(&conf.args)
        .arg("-o")
        .arg(target.join("image"))
        .arg("--work-dir")
        .arg(&target)
        .args(&conf.elements)
        .current_dir(&target)
        .env("ELEMENTS_PATH", dir.join("elements"))
        .env("TMPDIR", target.join("tmp"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("DIB_BLOCK_DEVICE_CONFIG");
    Case {
        tool: "disk-image-create",
        name: format!(
            "elements/{name} ({})",
            if conf.dry_run { "--dry-run" } else { "build" }
        ),
        input_name: conf.input.clone(),
        cmd,
        target,
        case_dir: dir,
        expect: conf.expect,
        limit: Duration::from_secs(if conf.dry_run { 60 } else { 300 }),
    }
}

/// The cases of this format.
pub fn cases(ctx: &Ctx) -> Result<Vec<Case>> {
    let dirs = super::listing(ctx, "elements", |p| p.join("case.conf").is_file(), None)?;
    let mut cases = Vec::new();
    for (src, name) in dirs {
        let conf = parse_conf(&src.join("case.conf"))?;
        if ctx.quick && !conf.dry_run && conf.expect != Expect::Accept && name != "script-hangs" {
            continue;
        }
        let (dir, target) = case_dir(ctx, &name)?;
        // git keeps no empty directory: a case without elements of its own has none.
        if src.join("elements").is_dir() {
            copy_tree(&src.join("elements"), &dir.join("elements"))?;
        } else {
            std::fs::create_dir_all(dir.join("elements"))?;
        }
        cases.push(case(ctx, name, dir, target, &conf));
    }
    cases.extend(generated(ctx)?);
    Ok(cases)
}

/// Cases whose files are made here: an element named with a newline, a chain of 1000
/// elements (a positive control: resolution stays fast), and an `element-deps` of 50 000
/// names that do not exist.
fn generated(ctx: &Ctx) -> Result<Vec<Case>> {
    let mut out = Vec::new();

    let (dir, target) = case_dir(ctx, "gen-newline-name")?;
    let nl = format!("nl\n{CANARY}");
    write_exec(
        &dir.join("elements").join(&nl).join("root.d/10-x"),
        "#!/bin/bash\nset -eu\necho \"$IMAGE_ELEMENT\" >/dev/null\n",
    )?;
    let conf = Conf {
        elements: vec!["busybox".into(), nl],
        dry_run: false,
        expect: Expect::Either,
        input: "nl".into(),
        args: Vec::new(),
    };
    out.push(case(ctx, "gen-newline-name".into(), dir, target, &conf));

    let (dir, target) = case_dir(ctx, "gen-chain-1000")?;
    const CHAIN: usize = 1000;
    for i in 0..CHAIN {
        let e = dir.join("elements").join(format!("chain{i}"));
        std::fs::create_dir_all(&e)?;
        if i + 1 < CHAIN {
            std::fs::write(e.join("element-deps"), format!("chain{}\n", i + 1))?;
        }
    }
    let conf = Conf {
        elements: vec!["busybox".into(), "chain0".into()],
        dry_run: true,
        expect: Expect::Accept,
        input: "chain0".into(),
        args: Vec::new(),
    };
    out.push(case(ctx, "gen-chain-1000".into(), dir, target, &conf));

    let (dir, target) = case_dir(ctx, "gen-wide-deps")?;
    let e = dir.join("elements/wide");
    std::fs::create_dir_all(&e)?;
    let names: String = (0..50_000).map(|i| format!("missing-{i}\n")).collect();
    std::fs::write(e.join("element-deps"), names)?;
    let conf = Conf {
        elements: vec!["busybox".into(), "wide".into()],
        dry_run: true,
        expect: Expect::Refuse,
        input: "missing-0".into(),
        args: Vec::new(),
    };
    out.push(case(ctx, "gen-wide-deps".into(), dir, target, &conf));
    Ok(out)
}
