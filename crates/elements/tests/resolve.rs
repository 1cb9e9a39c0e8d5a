//! Resolution: dependencies, provides, conflicts, missing elements, cycles with their chains,
//! non-executable scripts, install types, script order, environment — as snapshots.

#![allow(clippy::unwrap_used)] // test setup failures should panic at once

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use diskforge_elements::{
    Error, Phase, ProblemKind, Resolved, RunContext, environment, prepare_hooks, resolve,
    shipped_elements,
};

fn ok(requested: &[&str], opts: &diskforge_elements::ResolveOptions) -> Resolved {
    match resolve(&names(requested), opts) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn problems(requested: &[&str], opts: &diskforge_elements::ResolveOptions) -> Error {
    match resolve(&names(requested), opts) {
        Ok(r) => panic!("resolved: {:?}", r.elements()),
        Err(e) => e,
    }
}

/// `element/name` of every script of `phase`.
fn order(r: &Resolved, phase: Phase) -> Vec<String> {
    r.scripts(phase)
        .iter()
        .map(|s| format!("{}/{}", s.element, s.name))
        .collect()
}

#[test]
fn deps_provides_and_override_order() {
    let dir = tmp();
    let root = real(dir.path());
    let (first, second) = (root.join("first"), root.join("second"));
    write(
        &second,
        &[
            ("distro/element-provides", "operating-system\n", false),
            ("distro/element-deps", "common\n", false),
            ("common/element-deps", "\n\nutil\n", false),
            ("util/README.rst", "second copy\n", false),
            ("app/element-deps", "util\nblock-device\ncommon\n", false),
            ("layout/element-provides", "block-device\n", false),
            (
                "layout/block-device-default.yaml",
                "- local_loop: {name: image0}\n",
                false,
            ),
        ],
    );
    // `util` in the first entry overrides the second's.
    write(&first, &[("util/README.rst", "first copy\n", false)]);
    let r = ok(&["distro", "app", "layout"], &opts(&[&first, &second], &[]));
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "elements": r.elements(),
        "provided": r.provided(),
        "block_device_default": r.block_device_default(),
    }))
    .unwrap();
    insta::assert_snapshot!(redact(&json, &root));
    assert!(r.has("block-device") && r.has("util") && !r.has("nope"));
    assert_eq!(r.element("util").unwrap().path, first.join("util"));
}

#[test]
fn every_problem_at_once_with_its_chain() {
    let dir = tmp();
    let root = real(dir.path());
    write(
        &root,
        &[
            // no operating-system anywhere
            ("top/element-deps", "mid\nloop-a\nbd-one\nbd-two\n", false),
            ("mid/element-deps", "leaf\n", false),
            ("leaf/element-deps", "gone\n", false),
            ("loop-a/element-deps", "loop-b\n", false),
            ("loop-b/element-deps", "loop-c\n", false),
            ("loop-c/element-deps", "loop-a\n", false),
            ("bd-one/element-provides", "block-device\n", false),
            ("bd-two/element-provides", "block-device\nvirt\n", false),
            ("virt/README.rst", "", false),
            ("mid/install.d/10-not-exec", "#!/bin/sh\n", false),
            ("mid/install.d/data.sh", "#!/bin/sh\n", true),
            ("mid/install.d/README.rst", "docs\n", false),
            ("leaf/install.d/10-not-exec", "#!/bin/sh\n", true),
            (
                "leaf/host-programs",
                "# needs\nsh\nmkfs.vfat-not-installed\nnot-a-real-program-xyz\n",
                false,
            ),
            (
                "leaf/package-installs.yaml",
                "ok-pkg:\nbad-pkg:\n  phase: nowhere.d\n",
                false,
            ),
            ("bd-one/pkg-map", "{\"defaults\": {}}", false),
        ],
    );
    let err = problems(
        &["top", "virt", "missing-top"],
        &opts(&[&root, &root.join("nonexistent")], &[]),
    );
    insta::assert_snapshot!(redact(&err.to_string(), &root));
    let Error::Problems(ps) = &err else {
        panic!("{err:?}")
    };
    let json = serde_json::to_string_pretty(ps).unwrap();
    insta::assert_snapshot!("every_problem_json", redact(&json, &root));
}

#[test]
fn no_elements_requested() {
    let dir = tmp();
    let err = problems(&[], &opts(&[dir.path()], &[]));
    assert_eq!(
        err.to_string(),
        "1 element problem:\n  - no elements requested"
    );
}

#[test]
fn allow_nonexec_keeps_dibs_skip_and_lists_it() {
    let dir = tmp();
    let root = real(dir.path());
    os_element(&root);
    write(
        &root,
        &[
            ("el/root.d/10-not-exec", "#!/bin/sh\n", false),
            ("el/root.d/20-runs", "#!/bin/sh\n", true),
            ("el/root.d/helper.sh", "#!/bin/sh\n", true),
        ],
    );
    let mut o = opts(&[&root], &[]);
    let err = problems(&["os", "el"], &o);
    assert!(
        matches!(&err, Error::Problems(p) if p.len() == 1 && matches!(p[0].kind, ProblemKind::NotExecutable { .. })),
        "{err}"
    );
    o.allow_nonexec = true;
    let r = ok(&["os", "el"], &o);
    assert_eq!(order(&r, Phase::Root), ["el/20-runs"]);
    let skipped = serde_json::to_string_pretty(r.skipped()).unwrap();
    insta::assert_snapshot!(redact(&skipped, &root), @r#"
    [
      {
        "element": "el",
        "phase": "root.d",
        "path": "[ROOT]/el/root.d/10-not-exec",
        "reason": "not-executable"
      },
      {
        "element": "el",
        "phase": "root.d",
        "path": "[ROOT]/el/root.d/helper.sh",
        "reason": "name"
      }
    ]
    "#);
}

#[test]
fn scripts_merge_across_elements_in_sort_n_order() {
    let dir = tmp();
    let root = real(dir.path());
    os_element(&root);
    write(
        &root,
        &[
            ("a/install.d/100-late", "#!/bin/sh\n", true),
            ("a/install.d/9-early", "#!/bin/sh\n", true),
            ("b/install.d/50-mid", "#!/bin/sh\n", true),
            ("b/install.d/zz-no-number", "#!/bin/sh\n", true),
            ("b/install.d/010-ten", "#!/bin/sh\n", true),
            ("a/finalise.d/10-x", "#!/bin/sh\n", true),
            ("a/environment.d/20-b.bash", "", false),
            ("b/environment.d/10-z", "", false),
            ("b/environment.d/9-a", "", false),
            ("b/environment.d/not sourced", "", false),
        ],
    );
    let r = ok(&["os", "a", "b"], &opts(&[&root], &[]));
    assert_eq!(
        order(&r, Phase::Install),
        [
            "b/zz-no-number",
            "a/9-early",
            "b/010-ten",
            "b/50-mid",
            "a/100-late"
        ]
    );
    assert_eq!(order(&r, Phase::Finalise), ["a/10-x"]);
    assert!(order(&r, Phase::Root).is_empty());
    // Environment files: plain byte order of their names (dib sorts full paths with sort -n).
    let env: Vec<_> = r
        .environment_files()
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(
        env,
        [
            "b/environment.d/10-z",
            "a/environment.d/20-b.bash",
            "b/environment.d/9-a"
        ]
    );
}

/// An element with source and package install types, plus a common script.
fn install_type_elements(root: &Path) {
    os_element(root);
    write(
        root,
        &[
            ("nova/install.d/10-common", "#!/bin/sh\n", true),
            (
                "nova/install.d/nova-source-install/74-nova",
                "#!/bin/sh\necho source\n",
                true,
            ),
            (
                "nova/install.d/nova-package-install/74-nova",
                "#!/bin/sh\necho package\n",
                true,
            ),
            (
                "simple/install.d/simple-init-repo-install/50-simple",
                "#!/bin/sh\n",
                true,
            ),
            (
                "simple/install.d/simple-init-source-install/50-simple",
                "#!/bin/sh\n",
                true,
            ),
        ],
    );
}

#[test]
fn install_types() {
    let dir = tmp();
    let root = real(dir.path());
    install_type_elements(&root);
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[],
            &[
                "nova/10-common",
                "simple/50-simple@simple-init-source-install",
                "nova/74-nova@nova-source-install",
            ],
        ),
        (
            &[("DIB_INSTALLTYPE_nova", "package")],
            &[
                "nova/10-common",
                "simple/50-simple@simple-init-source-install",
                "nova/74-nova@nova-package-install",
            ],
        ),
        (
            &[
                ("DIB_DEFAULT_INSTALLTYPE", "package"),
                ("DIB_INSTALLTYPE_simple_init", "repo"),
            ],
            &[
                "nova/10-common",
                "simple/50-simple@simple-init-repo-install",
                "nova/74-nova@nova-package-install",
            ],
        ),
        // A type the element does not have: dib links nothing for that prefix.
        (
            &[("DIB_INSTALLTYPE_nova", "pip")],
            &[
                "nova/10-common",
                "simple/50-simple@simple-init-source-install",
            ],
        ),
    ];
    for (env, want) in cases {
        let r = ok(&["os", "nova", "simple"], &opts(&[&root], env));
        let got: Vec<String> = r
            .scripts(Phase::Install)
            .iter()
            .map(|s| match &s.install_dir {
                Some(d) => format!("{}/{}@{d}", s.element, s.name),
                None => format!("{}/{}", s.element, s.name),
            })
            .collect();
        assert_eq!(got, *want, "env {env:?}");
    }
}

#[test]
fn prepared_hooks_link_the_selected_install_type() {
    let dir = tmp();
    let root = real(dir.path());
    install_type_elements(&root);
    write(
        &root,
        &[
            ("nova/static/etc/nova.conf", "x\n", false),
            ("os/static/etc/os-release", "y\n", false),
            ("nova/tests/test-only", "", false),
            ("nova/element-deps", "", false),
        ],
    );
    let r = ok(
        &["os", "nova", "simple"],
        &opts(&[&root], &[("DIB_INSTALLTYPE_nova", "package")]),
    );
    let hooks = root.join("hooks");
    prepare_hooks(&r, &hooks).unwrap();
    let link = std::fs::read_link(hooks.join("install.d/74-nova")).unwrap();
    assert_eq!(link, Path::new("nova-package-install/74-nova"));
    assert_eq!(
        std::fs::read_to_string(hooks.join("install.d/74-nova")).unwrap(),
        "#!/bin/sh\necho package\n"
    );
    // static/ trees merged, tests/ left out, top-level files copied, _lib/die written.
    assert!(hooks.join("static/etc/nova.conf").is_file());
    assert!(hooks.join("static/etc/os-release").is_file());
    assert!(!hooks.join("tests").exists());
    assert!(hooks.join("element-deps").is_file());
    assert!(hooks.join("_lib/die").is_file());
}

#[test]
fn vm_gets_dibs_default_block_device() {
    let dir = tmp();
    let shipped = shipped_elements(dir.path()).unwrap();
    let mut o = opts(&[&shipped], &[("ARCH", "amd64")]);
    let r = ok(&["busybox", "vm"], &o);
    assert_eq!(r.requested(), ["busybox", "vm", "block-device-mbr"]);
    assert_eq!(r.provided()["block-device"], "block-device-mbr");
    assert!(
        r.block_device_default()
            .unwrap()
            .ends_with("block-device-mbr/block-device-default.yaml")
    );
    o.env.insert("ARCH".into(), "arm64".into());
    let r = ok(&["busybox", "vm"], &o);
    assert_eq!(r.provided()["block-device"], "block-device-efi");
    // Named explicitly: no default added, and a second layout is a conflict.
    let r = ok(&["busybox", "vm", "block-device-gpt"], &o);
    assert_eq!(r.requested(), ["busybox", "vm", "block-device-gpt"]);
    let err = problems(
        &["busybox", "vm", "block-device-gpt", "block-device-efi"],
        &o,
    );
    assert!(err.to_string().contains("\"block-device\" is provided by more than one element: block-device-gpt, block-device-efi"), "{err}");
}

#[test]
fn shipped_elements_resolve_cleanly() {
    let dir = tmp();
    let shipped = shipped_elements(dir.path()).unwrap();
    let o = opts(&[&shipped], &[]);
    for layout in ["block-device-mbr", "block-device-gpt", "block-device-efi"] {
        let r = ok(
            &[
                "busybox",
                "vm",
                layout,
                "install-static",
                "stable-interface-names",
            ],
            &o,
        );
        assert_eq!(r.provided()["block-device"], layout);
        assert_eq!(
            order(&r, Phase::Install),
            [
                "stable-interface-names/02-stable-interface-names",
                "install-static/10-install-static-files"
            ]
        );
        let yaml = std::fs::read_to_string(r.block_device_default().unwrap()).unwrap();
        assert!(yaml.contains("local_loop"), "{yaml}");
    }
    let r = ok(&["busybox", "stable-interface-names"], &o);
    let pkgs =
        serde_json::to_string(&r.element("stable-interface-names").unwrap().packages).unwrap();
    assert_eq!(
        pkgs,
        r#"[{"package":"biosdevname","phase":"install.d","uninstall":false,"build_only":false,"installtype":null,"arch":"amd64, i386","not_arch":null,"when":[]}]"#
    );
}

#[test]
fn package_installs_and_pkg_map_are_parsed() {
    let dir = tmp();
    let root = real(dir.path());
    os_element(&root);
    write(
        &root,
        &[
            (
                "el/package-installs.yaml",
                "libxml2:\ngrub2:\n  phase: pre-install.d\nnetworkmanager:\n  uninstall: True\n\
                 linux-image-generic:\n  - not-arch: arm64\n    when: DIB_UBUNTU_KERNEL = linux-image-generic\n\
                 \x20 - arch: arm64\n    when:\n      - DIB_RELEASE != xenial\n      - DIB_UBUNTU_KERNEL = linux-image-generic\n\
                 libssl-dev:\n  build-only: true\n",
                false,
            ),
            (
                "el/pkg-map",
                r#"{"family": {"debian": {"libxml2": "libxml2-dev"}}, "default": {"libxml2": "libxml2"}}"#,
                false,
            ),
            (
                "other/package-installs.json",
                r#"{"curl": null, "os-collect-config": {"installtype": "source"}}"#,
                false,
            ),
        ],
    );
    let r = ok(&["os", "el", "other"], &opts(&[&root], &[]));
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "el": r.element("el").unwrap().packages,
        "el_pkg_map": r.element("el").unwrap().pkg_map,
        "other": r.element("other").unwrap().packages,
    }))
    .unwrap();
    insta::assert_snapshot!(json);
}

#[test]
fn environment_for_dry_run() {
    let dir = tmp();
    let root = real(dir.path());
    os_element(&root);
    write(&root, &[("app/element-deps", "os\n", false)]);
    let r = ok(&["app"], &opts(&[&root], &[]));
    let ctx = RunContext {
        target_root: root.join("build/mnt"),
        hooks_dir: root.join("build/hooks"),
        build_dir: root.join("build"),
        env: BTreeMap::from([
            ("IMAGE_NAME".into(), "my-image".into()),
            ("ARCH".into(), "amd64".into()),
            ("DIB_RELEASE".into(), "bookworm".into()),
            ("TMP_HOOKS_PATH".into(), "ignored: ours wins".into()),
        ]),
        script_timeout: Duration::from_secs(1),
        trace: true,
        cancel: None,
    };
    let env = environment(&r, &ctx);
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    insta::assert_snapshot!(redact(&text, &root));
}

#[test]
fn a_name_provided_by_an_element_found_later_is_not_missing() {
    // dib's breadth-first expansion fails here when it meets `virtual` before `impl` has
    // been expanded; the fixed point does not.
    let dir = tmp();
    let root = real(dir.path());
    os_element(&root);
    write(
        &root,
        &[
            ("a/element-deps", "virtual\n", false),
            ("c/element-deps", "d\n", false),
            ("d/element-deps", "impl\n", false),
            ("impl/element-provides", "virtual\n", false),
            // A real element of the provided name is not pulled in.
            ("virtual/element-deps", "never\n", false),
        ],
    );
    let r = ok(&["os", "a", "c"], &opts(&[&root], &[]));
    let names: Vec<_> = r.elements().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["os", "a", "c", "d", "impl"]);
    assert_eq!(r.provided()["virtual"], "impl");
    assert_eq!(r.element("impl").unwrap().chain, ["c", "d", "impl"]);
}

#[test]
fn dry_run_json_of_the_default_build() {
    let dir = tmp();
    let root = real(dir.path());
    let shipped = shipped_elements(&root).unwrap();
    let r = ok(
        &["busybox", "vm", "block-device-efi", "install-static"],
        &opts(&[&shipped], &[("ARCH", "amd64")]),
    );
    let json = serde_json::to_string_pretty(&r).unwrap();
    insta::assert_snapshot!(redact(&json, &root));
    // The whole dry-run plan: resolution, environment, phases.
    let ctx = RunContext {
        target_root: root.join("build/mnt"),
        hooks_dir: root.join("build/hooks"),
        build_dir: root.join("build"),
        env: BTreeMap::from([("ARCH".into(), "amd64".into())]),
        script_timeout: Duration::from_secs(1),
        trace: false,
        cancel: None,
    };
    let plan = serde_json::to_value(diskforge_elements::plan(&r, &ctx)).unwrap();
    assert_eq!(plan["resolved"], serde_json::to_value(&r).unwrap());
    assert_eq!(
        plan["environment"]["IMAGE_ELEMENT"],
        "busybox vm block-device-efi install-static"
    );
    let phases: Vec<String> = plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {} {}",
                p["phase"],
                p["in_chroot"],
                p["scripts"].as_array().unwrap().len()
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            "\"root.d\" false 0",
            "\"extra-data.d\" false 0",
            "\"pre-install.d\" true 0",
            "\"install.d\" true 1",
            "\"post-install.d\" true 0",
            "\"post-root.d\" false 0",
            "\"block-device.d\" false 0",
            "\"pre-finalise.d\" false 0",
            "\"finalise.d\" true 0",
            "\"cleanup.d\" false 0",
        ]
    );
}

/// Hardening corpus `elements/symlink-loop`: an element entry that is a symlink loop (or
/// dangles) is reported as such, naming the entry, not as a missing element; an earlier path
/// entry of the same name still wins over a broken later one.
#[test]
fn symlink_loops_and_dangling_entries_are_named() {
    let dir = tmp();
    let root = real(dir.path());
    let (first, second) = (root.join("first"), root.join("second"));
    os_element(&first);
    std::fs::create_dir_all(&second).unwrap();
    std::os::unix::fs::symlink("looped", second.join("looped")).unwrap();
    std::os::unix::fs::symlink("pong", second.join("ping")).unwrap();
    std::os::unix::fs::symlink("ping", second.join("pong")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", second.join("dangling")).unwrap();
    std::fs::create_dir_all(first.join("ping")).unwrap();
    let o = opts(&[&first, &second], &[]);
    let Error::Problems(p) = problems(&["os", "looped", "dangling", "ping"], &o) else {
        panic!("not problems")
    };
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(p.len(), 2, "{text:?}");
    let looped = &p[0];
    assert!(
        matches!(&looped.kind, ProblemKind::BrokenElement { name, path, .. }
            if name == "looped" && path == &second.join("looped")),
        "{text:?}"
    );
    assert!(text[0].contains("loops"), "{}", text[0]);
    assert!(
        text[1].contains("dangling") && text[1].contains("symlink to nothing"),
        "{}",
        text[1]
    );
}
