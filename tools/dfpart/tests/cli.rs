//! `dfpart` through its command line: output snapshots, exit codes, help text.
//! Images are sparse files in a scratch dir; paths in output are relative (`cwd` = scratch).

use std::path::Path;

use diskforge_cmd::Cmd;

const BIN: &str = env!("CARGO_BIN_EXE_dfpart");

/// Run dfpart in `dir`: (exit code, stdout, stderr).
fn dfpart(dir: &Path, args: &[&str]) -> (i32, String, String) {
    // An empty SOURCE_DATE_EPOCH counts as unset: outputs do not depend on the caller's.
    match Cmd::new(BIN)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "")
        .dir(dir)
        .run()
    {
        Ok(out) => (
            0,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(diskforge_cmd::Error::Failed {
            status,
            stderr,
            stdout,
            ..
        }) => (status.code().unwrap_or(-1), stdout, stderr),
        Err(e) => panic!("running dfpart: {e}"),
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = dfpart(dir, args);
    assert_eq!(code, 0, "dfpart {args:?}: {err}");
    out
}

const GPT_ARGS: &[&str] = &[
    "create",
    "gpt.img",
    "--label",
    "gpt",
    "--size",
    "1GiB",
    "--uuid-seed",
    "cli-test",
    "--part",
    "name=bios,size=1MiB,type=EF02",
    "--part",
    "name=ESP,size=256MiB,type=EF00,flags=boot",
    "--part",
    "name=swap,size=128MiB,type=8200,uuid=01234567-89ab-4def-8123-456789abcdef",
    "--part",
    "name=root,size=rest,type=8304",
];

const MBR_ARGS: &[&str] = &[
    "create",
    "mbr.img",
    "--label",
    "mbr",
    "--size",
    "1GiB",
    "--disk-uuid",
    "0xcafe0001",
    "--part",
    "name=boot,size=128MiB,flags=boot",
    "--part",
    "name=swap,size=64MiB,type=8200",
    "--part",
    "name=lvm,size=40%,type=8e00",
    "--part",
    "name=a,size=100MiB,type=0x0c",
    "--part",
    "name=b,size=rest,type=0x83",
];

#[test]
fn gpt_create_show_json_offsets() {
    let dir = diskforge_testutil::scratch_dir();
    insta::assert_snapshot!("gpt_create", ok(dir.path(), GPT_ARGS));
    insta::assert_snapshot!("gpt_show", ok(dir.path(), &["show", "gpt.img"]));
    let json = ok(dir.path(), &["show", "gpt.img", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    insta::assert_json_snapshot!("gpt_show_json", v);
    insta::assert_snapshot!(
        "gpt_offsets",
        ok(dir.path(), &["show", "gpt.img", "--offsets"])
    );
    let sg = Cmd::new("sgdisk")
        .args(["-v", "gpt.img"])
        .dir(dir.path())
        .read()
        .expect("sgdisk");
    assert!(sg.contains("No problems found"), "{sg}");
}

#[test]
fn mbr_create_with_logical_and_show() {
    let dir = diskforge_testutil::scratch_dir();
    insta::assert_snapshot!("mbr_create", ok(dir.path(), MBR_ARGS));
    insta::assert_snapshot!("mbr_show", ok(dir.path(), &["show", "mbr.img"]));
    // sfdisk agrees on the logical partitions' starts.
    let v: serde_json::Value = Cmd::new("sfdisk")
        .args(["--json", "mbr.img"])
        .dir(dir.path())
        .json()
        .expect("sfdisk");
    let starts: Vec<(String, u64)> = v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap_or("").to_owned(),
                p["start"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let offsets = ok(dir.path(), &["show", "mbr.img", "--offsets"]);
    for line in offsets.lines() {
        let f: Vec<u64> = line
            .split(' ')
            .map(|x| x.parse().expect("number"))
            .collect();
        let node = format!("mbr.img{}", f[0]);
        assert!(
            starts.contains(&(node.clone(), f[1] / 512)),
            "{node} {line} vs {starts:?}"
        );
    }
}

#[test]
fn dry_run_prints_plan_and_writes_nothing() {
    let dir = diskforge_testutil::scratch_dir();
    let mut args = GPT_ARGS.to_vec();
    args.push("--dry-run");
    insta::assert_snapshot!("gpt_dry_run", ok(dir.path(), &args));
    args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&ok(dir.path(), &args)).expect("json");
    insta::assert_json_snapshot!("gpt_dry_run_json", v);
    assert!(!dir.path().join("gpt.img").exists());
    // Without --seed and UUIDs, the plan says they will be random.
    let out = ok(
        dir.path(),
        &[
            "create",
            "x.img",
            "--label",
            "gpt",
            "--size",
            "64MiB",
            "--part",
            "size=rest",
            "--dry-run",
        ],
    );
    assert!(
        out.contains("(random when written)") && out.contains("(random)"),
        "{out}"
    );
}

#[test]
fn source_date_epoch_makes_uuids_reproducible() {
    let dir = diskforge_testutil::scratch_dir();
    let run = |name: &str, epoch: &str| {
        let out = Cmd::new(BIN)
            .args([
                "create",
                name,
                "--label",
                "gpt",
                "--size",
                "64MiB",
                "--part",
                "size=rest",
                "--json",
                "--dry-run",
            ])
            .env("SOURCE_DATE_EPOCH", epoch)
            .dir(dir.path())
            .read()
            .expect("dfpart");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        (v["disk_uuid"].clone(), v["partitions"][0]["uuid"].clone())
    };
    let a = run("a.img", "1700000000");
    assert!(a.0.is_string() && a.1.is_string(), "{a:?}");
    assert_eq!(a, run("a.img", "1700000000"));
    assert_ne!(
        a,
        run("b.img", "1700000000"),
        "another image of the same build"
    );
    assert_ne!(a, run("a.img", "1700000001"));
}

#[test]
fn layout_file_yaml_and_json() {
    let dir = diskforge_testutil::scratch_dir();
    std::fs::write(
        dir.path().join("layout.yaml"),
        "label: gpt\nalign: 4MiB\ndisk_uuid: 00000000-0000-4000-8000-0000000000aa\npartitions:\n\
         - name: ESP\n  size: 64MiB\n  type: EF00\n  uuid: 00000000-0000-4000-8000-000000000001\n\
         - name: root\n  size: rest\n  uuid: 00000000-0000-4000-8000-000000000002\n  flags: [legacy_boot]\n",
    )
    .expect("write layout");
    let out = ok(
        dir.path(),
        &[
            "create",
            "y.img",
            "--size",
            "256MiB",
            "--layout",
            "layout.yaml",
        ],
    );
    insta::assert_snapshot!("layout_yaml", out);
    let json =
        r#"{"label": "mbr", "partitions": [{"size": "50%"}, {"size": "rest", "type": "0x82"}]}"#;
    std::fs::write(dir.path().join("layout.json"), json).expect("write layout");
    let out = ok(
        dir.path(),
        &[
            "create",
            "z.img",
            "--size",
            "64MiB",
            "--layout",
            "layout.json",
            "--disk-uuid",
            "0x1",
        ],
    );
    assert!(out.contains("disk id 0x00000001"), "{out}");
    // Unknown fields in a layout file are usage errors.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "label: gpt\npartitions: []\ncolour: red\n",
    )
    .expect("write");
    let (code, _, err) = dfpart(
        dir.path(),
        &["create", "b.img", "--size", "64MiB", "--layout", "bad.yaml"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml") && err.contains("colour"), "{err}");
}

/// `dfpart create e.img --label LABEL --size 1G --part P…`
fn create_args<'a>(label: &'a str, parts: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["create", "e.img", "--label", label, "--size", "1GiB"];
    for p in parts {
        a.extend(["--part", p]);
    }
    a
}

fn gpt<'a>(parts: &[&'a str]) -> Vec<&'a str> {
    create_args("gpt", parts)
}

fn mbr<'a>(parts: &[&'a str]) -> Vec<&'a str> {
    create_args("mbr", parts)
}

#[test]
fn exit_codes_and_messages() {
    let dir = diskforge_testutil::scratch_dir();
    std::fs::write(dir.path().join("blank.img"), vec![0u8; 4096]).expect("write");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["create", "e.img", "--size", "1GiB", "--part", "size=1MiB"],
            2,
            "--label gpt|mbr is required",
        ),
        (
            vec!["create", "e.img", "--label", "gpt", "--size", "1GiB"],
            2,
            "no partitions",
        ),
        (
            gpt(&["size=1MiB,colour=red"]),
            2,
            "--part #1 \"size=1MiB,colour=red\": unknown key \"colour\"",
        ),
        (
            gpt(&["name=a,size=1MiB,flags=fast"]),
            2,
            "flags=\"fast\": unknown flag",
        ),
        (
            vec!["create", "e.img", "--label", "zfs"],
            2,
            "unknown label \"zfs\"",
        ),
        (
            vec![
                "create",
                "e.img",
                "--label",
                "gpt",
                "--size",
                "1Q",
                "--part",
                "size=1MiB",
            ],
            2,
            "unknown unit",
        ),
        (
            gpt(&["name=a,size=12X"]),
            3,
            "partition 1 (a): size=\"12X\": unknown unit \"X\"",
        ),
        (
            gpt(&["name=a,size=1MiB,type=9999"]),
            3,
            "partition 1 (a): type=\"9999\": unknown type",
        ),
        (
            gpt(&["name=a,size=60%", "name=b,size=50%"]),
            3,
            "partition 2 (b): size=\"50%\": percentages add up to 110%",
        ),
        (
            gpt(&["name=a,size=2GiB"]),
            3,
            "partition 1 (a): size=\"2GiB\": does not fit",
        ),
        (
            gpt(&["name=a,size=100MiB", "name=b,size=1MiB,start=50MiB"]),
            3,
            "partition 2 (b): start=\"50MiB\": overlaps partition 1 (a)",
        ),
        (
            mbr(&[
                "size=1MiB,flags=primary",
                "size=1MiB,flags=primary",
                "size=1MiB,flags=primary",
                "size=1MiB,flags=primary",
                "name=five,size=1MiB,flags=primary",
            ]),
            3,
            "partition 5 (five): flags=\"primary\": too many primary partitions",
        ),
        (
            mbr(&["name=a,size=1MiB,uuid=x"]),
            3,
            "uuid=\"x\": MBR partitions have no UUID",
        ),
        (
            vec!["show", "blank.img"],
            4,
            "blank.img: no partition table",
        ),
        (vec!["show", "missing.img"], 1, "missing.img: opening"),
        (
            vec![
                "create",
                "missing.img",
                "--label",
                "gpt",
                "--part",
                "size=1MiB",
                "--dry-run",
            ],
            1,
            "give --size",
        ),
        // Sizes whose byte count overflows once rounded to sectors.
        (
            gpt(&["name=a,size=18446744073709551615"]),
            3,
            "partition 1 (a): size=\"18446744073709551615\": does not fit: \
             18446744073709551615 bytes from byte 1048576 end past the usable area",
        ),
        (
            mbr(&["name=a,size=18446744073709551615"]),
            3,
            "partition 1 (a): size=\"18446744073709551615\": does not fit: \
             18446744073709551615 bytes from byte 1048576 end past the usable area",
        ),
        (
            vec![
                "create",
                "e.img",
                "--label",
                "gpt",
                "--size",
                "18446744073709551616",
                "--part",
                "size=1MiB",
            ],
            2,
            "invalid size \"18446744073709551616\": too large",
        ),
        (
            vec![
                "create",
                "e.img",
                "--label",
                "gpt",
                "--size=-1G",
                "--part",
                "size=1MiB",
            ],
            2,
            "invalid size \"-1G\": sizes cannot be negative",
        ),
        (
            gpt(&["name=a,size=1 gib"]),
            3,
            "size=\"1 gib\": unknown unit \"gib\"; units are case-sensitive: did you mean GiB?",
        ),
        (
            gpt(&["name=a\nb,size=1MiB"]),
            3,
            "partition 1 (a\\nb): name=\"a\\nb\": contains the control character U+000A",
        ),
    ];
    for (args, want_code, want_msg) in cases {
        let (code, _, err) = dfpart(dir.path(), &args);
        assert_eq!(code, want_code, "dfpart {args:?}: {err}");
        assert!(
            err.contains(want_msg),
            "dfpart {args:?}:\n got: {err}\nwant: {want_msg}"
        );
    }
    assert!(
        !dir.path().join("e.img").exists(),
        "an invalid layout must not create the file"
    );
}

#[test]
fn help_fits_80_columns_and_is_snapshotted() {
    let dir = diskforge_testutil::scratch_dir();
    for sub in [&["--help"][..], &["create", "--help"], &["show", "--help"]] {
        let out = ok(dir.path(), sub);
        for line in out.lines() {
            assert!(
                line.chars().count() <= 80,
                "{sub:?}: line over 80 columns: {line:?}"
            );
        }
        let name = format!("help_{}", sub[0].trim_start_matches('-'));
        insta::assert_snapshot!(name, out);
    }
}

#[test]
fn add_set_delete() {
    let dir = diskforge_testutil::scratch_dir();
    ok(dir.path(), MBR_ARGS);
    let d = dir.path();
    // Dry runs change nothing.
    let before = ok(d, &["show", "mbr.img", "--json"]);
    insta::assert_snapshot!(
        "mbr_delete_dry_run",
        ok(d, &["delete", "mbr.img", "5", "--dry-run"])
    );
    assert_eq!(ok(d, &["show", "mbr.img", "--json"]), before);
    insta::assert_snapshot!("mbr_delete", ok(d, &["delete", "mbr.img", "5"]));
    insta::assert_snapshot!(
        "mbr_set",
        ok(
            d,
            &["set", "mbr.img", "2", "--type", "0x83", "--flags", "boot"]
        )
    );
    let v: serde_json::Value = Cmd::new("sfdisk")
        .args(["--json", "mbr.img"])
        .dir(d)
        .json()
        .expect("sfdisk");
    let p2 = &v["partitiontable"]["partitions"][1];
    assert_eq!(
        (p2["type"].as_str(), p2["bootable"].as_bool()),
        (Some("83"), Some(true)),
        "{v}"
    );

    ok(
        d,
        &[
            "create",
            "g.img",
            "--label",
            "gpt",
            "--size",
            "256MiB",
            "--uuid-seed",
            "s",
            "--part",
            "name=a,size=64MiB",
        ],
    );
    let out = ok(
        d,
        &[
            "add",
            "g.img",
            "--part",
            "name=b,size=50%",
            "--part",
            "name=c,size=rest,uuid=00000000-0000-4000-8000-00000000000c",
        ],
    );
    assert!(
        out.contains("00000000-0000-4000-8000-00000000000c"),
        "{out}"
    );
    ok(
        d,
        &[
            "set",
            "g.img",
            "2",
            "--name",
            "bee",
            "--flags",
            "required+legacy_boot",
            "--uuid",
            "00000000-0000-4000-8000-00000000000b",
        ],
    );
    insta::assert_snapshot!("gpt_after_add_set", ok(d, &["show", "g.img"]));
    let sg = Cmd::new("sgdisk")
        .args(["-v", "g.img"])
        .dir(d)
        .read()
        .expect("sgdisk");
    assert!(sg.contains("No problems found"), "{sg}");

    let cases: &[(&[&str], i32, &str)] = &[
        (&["delete", "g.img", "9"], 3, "no partition 9"),
        (&["set", "g.img", "1"], 2, "nothing to change"),
        (
            &["set", "g.img", "1", "--flags", "shiny"],
            2,
            "--flags \"shiny\": unknown flag",
        ),
        (
            &["set", "g.img", "1", "--type", "zz"],
            3,
            "partition 1 (a): type=\"zz\": unknown type",
        ),
        (
            &["add", "g.img", "--part", "name=d,size=1MiB"],
            3,
            "partition 4 (d): size=\"1MiB\": does not fit",
        ),
        (
            &["set", "mbr.img", "1", "--name", "x"],
            3,
            "name=\"x\": MBR partitions have no names",
        ),
    ];
    for (args, code, msg) in cases {
        let (c, _, err) = dfpart(d, args);
        assert_eq!(c, *code, "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

/// Duplicate GPT names are written but warned about on stderr; bare unit letters are decimal.
#[test]
fn duplicate_names_warn_and_bare_letters_are_decimal() {
    let dir = diskforge_testutil::scratch_dir();
    let d = dir.path();
    let (code, out, err) = dfpart(
        d,
        &[
            "create",
            "w.img",
            "--label",
            "gpt",
            "--size",
            "64MiB",
            "--part",
            "name=data,size=1G",
            "--part",
            "name=data,size=rest",
            "--dry-run",
        ],
    );
    // 1G is 10^9 bytes: more than the 64 MiB disk.
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("size=\"1G\": does not fit: 1000000000 bytes"),
        "{err}"
    );

    let (code, out, err) = dfpart(
        d,
        &[
            "create",
            "w.img",
            "--label",
            "gpt",
            "--size",
            "64M",
            "--part",
            "name=data,size=10M",
            "--part",
            "name=data,size=rest",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.trim_end(),
        "dfpart: warning: partitions 1, 2 share the name \"data\": PARTLABEL=\"data\" finds \
         only one of them"
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    // 64M = 64 * 10^6 bytes; 10M = 10^7 bytes, rounded up to 512-byte sectors.
    assert_eq!(v["disk_size_bytes"], 64_000_000);
    assert_eq!(v["partitions"][0]["size_bytes"], 10_000_384);
    assert_eq!(
        std::fs::metadata(d.join("w.img")).expect("stat").len(),
        64_000_000
    );
}
