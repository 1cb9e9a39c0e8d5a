#!/usr/bin/env python3
"""Regenerate the small tarball corpus (tests/corpus/tar/*) and the OCI layouts
(tests/corpus/oci/*/). Headers are written byte by byte, so they can lie (sizes, checksums,
names) the way no well-behaved tar writer would.

The large inputs (gzip and zstd bombs, a sparse 1 TiB member, 100k entries, 10 MB names)
are not here: xtask/src/hardening/corpus/tar.rs writes them into the scratch dir at run time.
The checked-in files are what `cargo xtask hardening --only corpus` runs; this script only
documents and repeats how they were made (deterministic: fixed mtimes, gzip mtime 0).

    python3 tests/corpus/tar/make.py
"""

import gzip
import hashlib
import io
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
OCI = os.path.join(os.path.dirname(HERE), "oci")
CANARY = "diskforge-canary"
# Enough `..` to reach / from any directory the tools unpack into.
UP = "../" * 24
MTIME = 1700000000


def octal(v, width):
    return (("%0" + str(width - 1) + "o") % v).encode() + b"\0"


def header(name, size=0, typ=b"0", link="", mode=0o644, major=0, minor=0,
           chksum=None, size_field=None):
    """One 512-byte ustar header."""
    h = bytearray(512)
    nb = name.encode() if isinstance(name, str) else name
    h[0:len(nb[:100])] = nb[:100]
    h[100:108] = octal(mode, 8)
    h[108:116] = octal(0, 8)
    h[116:124] = octal(0, 8)
    h[124:136] = size_field if size_field is not None else octal(size, 12)
    h[136:148] = octal(MTIME, 12)
    h[148:156] = b" " * 8
    h[156:157] = typ
    lb = link.encode()
    h[157:157 + len(lb)] = lb
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = octal(major, 8)
    h[337:345] = octal(minor, 8)
    s = sum(h) if chksum is None else chksum
    h[148:156] = ("%06o" % s).encode() + b"\0 "
    return bytes(h)


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def member(name, data=b"", **kw):
    return header(name, size=len(data), **kw) + pad(data)


def pax(records, name="PaxHeaders/x"):
    body = b""
    for k, v in records:
        rec = b" " + k.encode() + b"=" + v + b"\n"
        n = len(rec)
        while len(str(n + len(str(n))).encode()) + len(rec) != n:
            n = len(str(n).encode()) + len(rec)
        body += str(n).encode() + rec
    return member(name, body, typ=b"x")


def end():
    return b"\0" * 1024


def good_members():
    return (
        member("./", typ=b"5", mode=0o755)
        + member("etc/", typ=b"5", mode=0o755)
        + member("etc/hostname", b"corpus\n")
        + member("etc/motd", b"a good layer\n", mode=0o600)
        + member("etc/motd-link", typ=b"1", link="etc/motd")
        + member("bin/", typ=b"5", mode=0o755)
        + member("bin/sh", typ=b"2", link="/usr/bin/busybox")
        + member("lib", typ=b"2", link="usr/lib")
        + member("run/", typ=b"5", mode=0o755)
        + member("run/fifo", typ=b"6", mode=0o600)
        + member(".wh.removed", b"")
        + member("var/", typ=b"5", mode=0o755)
        + member("var/.wh..wh..opq", b"")
    )


def tars():
    t = {}
    good = good_members() + end()
    t["good.tar"] = good
    t["good.tar.gz"] = gzip.compress(good, mtime=0)
    t["dotdot.tar"] = member(UP + "tmp/" + CANARY + "-dotdot", b"x\n") + end()
    t["dotdot-inner.tar"] = member("a/" + UP + "tmp/" + CANARY + "-inner", b"x\n") + end()
    t["absolute.tar"] = member("/tmp/" + CANARY + "-absolute", b"x\n") + end()
    t["symlink-abs-then-write.tar"] = (
        member("l", typ=b"2", link="/tmp") + member("l/" + CANARY + "-symlink", b"x\n") + end())
    t["symlink-rel-then-write.tar"] = (
        member("l", typ=b"2", link=UP + "tmp")
        + member("l/" + CANARY + "-symlink-rel", b"x\n") + end())
    t["symlink-inside-then-write.tar"] = (
        member("d/", typ=b"5", mode=0o755) + member("l", typ=b"2", link="d")
        + member("l/" + CANARY + "-through-inner-link", b"x\n") + end())
    t["symlink-then-hardlink.tar"] = (
        member("l", typ=b"2", link="/tmp")
        + member(CANARY + "-h", typ=b"1", link="l/" + CANARY + "-target") + end())
    t["symlink-replaced-dir.tar"] = (
        member("d/", typ=b"5", mode=0o755) + member("d", typ=b"2", link="/tmp")
        + member("d/" + CANARY + "-replaced", b"x\n") + end())
    t["hardlink-outside.tar"] = (
        member("h", typ=b"1", link=UP + "tmp/" + CANARY + "-hardlink") + end())
    t["hardlink-absolute.tar"] = (
        member("h", typ=b"1", link="/etc/hostname") + end())
    t["hardlink-to-dir.tar"] = (
        member("d/", typ=b"5", mode=0o755) + member("h", typ=b"1", link="d") + end())
    t["devices.tar"] = (
        member(CANARY + "-null", typ=b"3", mode=0o666, major=1, minor=3)
        + member(CANARY + "-sda", typ=b"4", mode=0o600, major=8, minor=0) + end())
    t["truncated-mid-header.tar"] = good[:512 * 2 + 200]
    t["truncated-mid-data.tar"] = (header("big", size=10000) + b"y" * 600)
    t["lying-size-over-data.tar"] = header("f", size=1 << 20) + pad(b"short\n") + end()
    # 1 TiB in the size field (base-256, as GNU tar writes sizes over 8 GiB), 6 bytes data.
    t["lying-size-1tib.tar"] = (
        header("f", size_field=b"\x80" + (1 << 40).to_bytes(11, "big")) + pad(b"short\n") + end())
    t["lying-size-garbage.tar"] = header("f", size_field=b"12345678zzz\0") + end()
    t["bad-checksum.tar"] = (
        header(CANARY + "-cksum", size=3, chksum=12345) + pad(b"x\n\n") + end())
    t["whiteout-dot.tar"] = member(".wh..", b"") + end()
    t["whiteout-dotdot.tar"] = member(".wh...", b"") + end()
    t["whiteout-dotdot-nested.tar"] = (
        member("a/", typ=b"5", mode=0o755) + member("a/.wh...", b"") + end())
    t["whiteout-empty.tar"] = member("a/.wh.", b"") + end()
    t["pax-path-traversal.tar"] = (
        pax([("path", (UP + "tmp/" + CANARY + "-pax").encode())])
        + member("safe", b"x\n") + end())
    t["pax-linkpath-escape.tar"] = (
        pax([("linkpath", (UP + "tmp").encode())])
        + member("l", typ=b"2", link="ok")
        + member("l/" + CANARY + "-paxlink", b"x\n") + end())
    long = (UP * 3 + "tmp/" + CANARY + "-longname").encode()
    t["gnu-longname-traversal.tar"] = (
        member("././@LongLink", long + b"\0", typ=b"L") + member("short", b"x\n") + end())
    t["pax-sparse-name-traversal.tar"] = (
        pax([("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0"),
             ("GNU.sparse.name", (UP + "tmp/" + CANARY + "-sparse").encode()),
             ("GNU.sparse.realsize", b"4096")])
        + member("GNUSparseFile.0/x", b"1\n0\n1\n" + b"\0" * 506 + b"x") + end())
    t["xattr-overlay.tar"] = (
        pax([("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        + member("d/", typ=b"5", mode=0o755) + end())
    t["unknown-type.tar"] = member(CANARY + "-weird", b"", typ=b"Z") + end()
    t["empty.tar"] = b""
    t["only-end-blocks.tar"] = end()
    seed = 4242
    garbage = bytearray()
    for _ in range(4096):
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        garbage.append(seed >> 16 & 0xFF)
    t["garbage.tar"] = bytes(garbage)
    t["gzip-garbage.tar.gz"] = b"\x1f\x8b\x08\x00" + bytes(garbage[:1000])
    t["gzip-truncated.tar.gz"] = gzip.compress(good, mtime=0)[:300]
    t["zstd-garbage.tar.zst"] = b"\x28\xb5\x2f\xfd" + bytes(garbage[:1000])
    return t


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def layout(name, layer_tar, mutate=None):
    """An OCI layout with one image ("latest") of one gzip layer; `mutate(d, blobs)` edits
    what is written (d: the dict of blob parts, blobs: digest -> bytes)."""
    layer = gzip.compress(layer_tar, mtime=0)
    config = {
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
        "config": {},
    }
    d = {"layer": layer, "config": config, "layer_size": len(layer), "layer_digest": sha(layer),
         "extra": {}, "symlinks": {}, "index_override": None, "manifest_override": None,
         "oci_layout": {"imageLayoutVersion": "1.0.0"}}
    if mutate:
        mutate(d, "pre")
    config_b = json.dumps(d["config"], sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config_b), "size": len(config_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": d["layer_digest"], "size": d["layer_size"]}],
    }
    if d["manifest_override"]:
        d["manifest_override"](manifest)
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": sha(manifest_b), "size": len(manifest_b),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    }
    if d["index_override"]:
        d["index_override"](index, manifest_b)
    blobs = {sha(layer): d["layer"], sha(config_b): config_b, sha(manifest_b): manifest_b}
    blobs.update(d["extra"])
    d["blobs"] = blobs
    d["digests"] = {"layer": sha(layer), "config": sha(config_b), "manifest": sha(manifest_b)}
    if mutate:
        mutate(d, "post")
    root = os.path.join(OCI, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "blobs", "sha256"))
    with open(os.path.join(root, "oci-layout"), "w") as f:
        if isinstance(d["oci_layout"], str):
            f.write(d["oci_layout"])
        else:
            json.dump(d["oci_layout"], f)
    with open(os.path.join(root, "index.json"), "w") as f:
        if isinstance(index, str):
            f.write(index)
        else:
            json.dump(index, f, sort_keys=True)
    for dg, b in d["blobs"].items():
        if b is None:
            continue
        with open(os.path.join(root, "blobs", "sha256", dg.split(":")[1]), "wb") as f:
            f.write(b)
    for dg, target in d["symlinks"].items():
        p = os.path.join(root, "blobs", "sha256", dg.split(":")[1])
        if os.path.exists(p):
            os.remove(p)
        os.symlink(target, p)
    return root, d["digests"]


def layouts(t):
    good = t["good.tar"]
    layout("good", good)

    def digest_mismatch(d, when):
        if when == "post":
            d["blobs"][d["digests"]["layer"]] = gzip.compress(
                member(CANARY + "-swapped", b"x\n") + end(), mtime=0)
    layout("digest-mismatch", good, digest_mismatch)

    def size_mismatch(d, when):
        if when == "pre":
            d["layer_size"] += 1
    layout("size-mismatch", good, size_mismatch)

    def size_huge(d, when):
        if when == "pre":
            d["layer_size"] = 1 << 50
    layout("size-huge", good, size_huge)

    def diffid_mismatch(d, when):
        if when == "pre":
            d["config"]["rootfs"]["diff_ids"] = [sha(b"not the layer")]
    layout("diffid-mismatch", good, diffid_mismatch)

    def blob_symlink_outside(d, when):
        if when == "post":
            d["blobs"][d["digests"]["layer"]] = None
            d["symlinks"][d["digests"]["layer"]] = UP + "tmp/" + CANARY + "-blob"
    layout("blob-symlink-outside", good, blob_symlink_outside)

    # The layer blob is a symlink to /dev/zero and its descriptor says 0 bytes with the
    # digest of nothing: a reader that follows it hashes zeros forever.
    empty = sha(b"")

    def blob_symlink_dev_zero(d, when):
        if when == "pre":
            d["layer_size"] = 0
            d["layer_digest"] = empty
        if when == "post":
            d["blobs"].pop(empty, None)
            d["symlinks"][empty] = "/dev/zero"
    layout("blob-symlink-dev-zero", good, blob_symlink_dev_zero)

    # The manifest blob is a symlink to a file of the same layout outside blobs/: not a
    # regular file of the layout, refused the same way.
    root, digests = layout("manifest-symlink", good)
    blob = os.path.join(root, "blobs", "sha256", digests["manifest"].split(":")[1])
    os.rename(blob, os.path.join(root, "manifest.json"))
    os.symlink("../../manifest.json", blob)

    def missing_layer(d, when):
        if when == "post":
            d["blobs"][d["digests"]["layer"]] = None
    layout("missing-layer", good, missing_layer)

    def missing_config(d, when):
        if when == "post":
            d["blobs"][d["digests"]["config"]] = None
    layout("missing-config", good, missing_config)

    def missing_manifest(d, when):
        if when == "post":
            d["blobs"][d["digests"]["manifest"]] = None
    layout("missing-manifest", good, missing_manifest)

    def bad_digest_string(d, when):
        if when == "pre":
            d["index_override"] = lambda index, _m: index["manifests"][0].update(
                digest="sha256:" + UP + "tmp/" + CANARY + "-digest")
    layout("digest-traversal", good, bad_digest_string)

    def index_self_loop(d, when):
        # index.json -> a nested index blob whose only entry is itself.
        if when == "pre":
            def over(index, _m):
                nested = {"schemaVersion": 2,
                          "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": []}
                nb = json.dumps(nested, sort_keys=True).encode()
                index["manifests"][0].update(
                    mediaType="application/vnd.oci.image.index.v1+json",
                    digest=sha(nb), size=len(nb))
                d["extra"] = {sha(nb): nb}
            d["index_override"] = over
    layout("nested-index-empty", good, index_self_loop)

    def layout_version(d, when):
        if when == "pre":
            d["oci_layout"] = {"imageLayoutVersion": "9.9.9"}
    layout("layout-version-unknown", good, layout_version)

    def layout_not_json(d, when):
        if when == "pre":
            d["oci_layout"] = "this is not json"
    layout("layout-not-json", good, layout_not_json)

    for name, tar_name in [("layer-dotdot", "dotdot.tar"),
                           ("layer-absolute", "absolute.tar"),
                           ("layer-symlink-write", "symlink-abs-then-write.tar"),
                           ("layer-hardlink-outside", "hardlink-outside.tar"),
                           ("layer-whiteout-dotdot", "whiteout-dotdot.tar")]:
        layout(name, t[tar_name])


def main():
    t = tars()
    for name, data in sorted(t.items()):
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    layouts(t)


if __name__ == "__main__":
    main()
