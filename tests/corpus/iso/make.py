#!/usr/bin/env python3
"""Regenerate the ISO corpus (tests/corpus/iso/*.iso.gz): one good image made by xorriso,
and hostile variants of it, each a byte patch at an offset found by walking the image.

The checked-in files are what `cargo xtask hardening --only corpus` runs
(xtask/src/hardening/corpus/iso.rs); this script only documents and repeats how they were
made. Deterministic: SOURCE_DATE_EPOCH, fixed xorriso dates, gzip mtime 0.

    python3 tests/corpus/iso/make.py        # needs xorriso and implantisomd5
"""

import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SECTOR = 2048
# Every escaping name aims at this (xtask's corpus::CANARY).
CANARY = "diskforge-canary"
# 22 characters: the length of "../../diskforge-canary", so a name can be patched in place.
LONG = "x" * 22
LONG_DIR = "k" * 22
ESCAPE = "../../" + CANARY
assert len(ESCAPE) == len(LONG)


def build_base(tree, out):
    os.makedirs(os.path.join(tree, "a", "b"))
    os.makedirs(os.path.join(tree, "jj"))
    os.makedirs(os.path.join(tree, LONG_DIR))
    with open(os.path.join(tree, "boot.img"), "wb") as f:
        f.write(b"\xeb\xfe" + b"\x90" * 2046)  # jmp $ — never run, only carried
    with open(os.path.join(tree, "readme.txt"), "w") as f:
        f.write("hello from the diskforge ISO corpus\n")
    with open(os.path.join(tree, "a", "b", "c.txt"), "w") as f:
        f.write("deep file\n")
    with open(os.path.join(tree, "zz"), "w") as f:
        f.write("renamed to .. by rr-dotdot.iso\n")
    with open(os.path.join(tree, LONG), "w") as f:
        f.write("renamed to ../../diskforge-canary by rr-slash.iso\n")
    with open(os.path.join(tree, "jj", "inside.txt"), "w") as f:
        f.write("in jj\n")
    for root, dirs, files in os.walk(tree):
        for n in dirs + files:
            os.utime(os.path.join(root, n), (1700000000, 1700000000))
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "DFCORPUS",
         "-b", "boot.img", "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4",
         "--modification-date=2023111400000000", "-o", out, tree],
        check=True, env=env)


def le32(b, at):
    return struct.unpack_from("<I", b, at)[0]


def put_both32(b, at, v):
    struct.pack_into("<I", b, at, v)
    struct.pack_into(">I", b, at + 4, v)


def descriptors(img):
    """(type, offset) of each volume descriptor."""
    out = []
    lba = 16
    while True:
        off = lba * SECTOR
        if img[off + 1:off + 6] != b"CD001":
            break
        out.append((img[off], off))
        if img[off] == 255:
            break
        lba += 1
    return out


def pvd(img):
    return next(off for t, off in descriptors(img) if t == 1)


def svd(img):
    return next(off for t, off in descriptors(img) if t == 2)


def records(img, lba, length):
    """(offset, ident) of each record of the directory at lba."""
    out = []
    at = lba * SECTOR
    end = at + length
    while at < end:
        n = img[at]
        if n == 0:
            at = (at // SECTOR + 1) * SECTOR
            continue
        name_len = img[at + 32]
        out.append((at, bytes(img[at + 33:at + 33 + name_len])))
        at += n
    return out


def root_of(img, vd):
    return le32(img, vd + 156 + 2), le32(img, vd + 156 + 10)


def find(img, lba, length, ident):
    for off, name in records(img, lba, length):
        if name == ident:
            return off
    raise KeyError(ident)


def sub(img, vd, *idents):
    """Offset of the record reached by following idents from the root of vd."""
    lba, length = root_of(img, vd)
    off = None
    for ident in idents:
        off = find(img, lba, length, ident)
        lba, length = le32(img, off + 2), le32(img, off + 10)
    return off


def catalog(img):
    off = next(off for t, off in descriptors(img) if t == 0)
    return off, le32(img, off + 71) * SECTOR


def replace_all(img, old, new):
    assert len(old) == len(new)
    n = 0
    at = img.find(old)
    while at >= 0:
        img[at:at + len(old)] = new
        n += 1
        at = img.find(old, at + 1)
    assert n > 0, old
    return n


def main():
    work = tempfile.mkdtemp()
    try:
        base = os.path.join(work, "base.iso")
        build_base(os.path.join(work, "tree"), base)
        good = bytearray(open(base, "rb").read())
        out = {"good.iso": bytes(good)}
        p = pvd(good)
        s = svd(good)

        out["truncated-after-descriptors.iso"] = bytes(good[:20 * SECTOR])
        out["truncated-half.iso"] = bytes(good[:len(good) // 2 // SECTOR * SECTOR + 100])

        img = bytearray(good)
        bvd, _ = catalog(img)
        struct.pack_into("<I", img, bvd + 71, 0x7FFFFFF0)
        out["bootcat-past-end.iso"] = bytes(img)

        img = bytearray(good)
        _, cat = catalog(img)
        struct.pack_into("<I", img, cat + 32 + 8, 0x00FFFFF0)
        out["bootimg-past-end.iso"] = bytes(img)

        img = bytearray(good)
        _, cat = catalog(img)
        struct.pack_into("<H", img, cat + 28, (struct.unpack_from("<H", img, cat + 28)[0] + 1) & 0xFFFF)
        out["eltorito-bad-checksum.iso"] = bytes(img)

        img = bytearray(good)
        _, cat = catalog(img)
        img[cat + 30] = 0x00  # key bytes 55 AA
        img[cat + 31] = 0x00
        out["eltorito-no-key.iso"] = bytes(img)

        # An implanted MD5, then one byte of /readme.txt changed.
        md5 = os.path.join(work, "md5.iso")
        shutil.copy(base, md5)
        subprocess.run(["implantisomd5", "--force", md5], check=True, stdout=subprocess.DEVNULL)
        img = bytearray(open(md5, "rb").read())
        out["md5-good.iso"] = bytes(img)
        r = sub(img, pvd(img), b"README.TXT;1")
        data = le32(img, r + 2) * SECTOR
        img[data] ^= 0x20
        out["md5-mismatch.iso"] = bytes(img)

        # The third record of the root (first after . and ..) gets length 0: the rest of
        # the block is hidden from every reader.
        img = bytearray(good)
        lba, length = root_of(img, p)
        img[records(img, lba, length)[2][0]] = 0
        out["zero-length-record.iso"] = bytes(img)

        # /A/B's extent is the root's: a loop (and the same in the Joliet tree).
        img = bytearray(good)
        rlba, rlen = root_of(img, p)
        b = sub(img, p, b"A", b"B")
        put_both32(img, b + 2, rlba)
        put_both32(img, b + 10, rlen)
        jlba, jlen = root_of(img, s)
        jb = sub(img, s, "a".encode("utf-16-be"), "b".encode("utf-16-be"))
        put_both32(img, jb + 2, jlba)
        put_both32(img, jb + 10, jlen)
        out["dir-loop.iso"] = bytes(img)

        # /A's extent is its own parent's (the root's) through a child: /A/B -> /A.
        img = bytearray(good)
        a = sub(img, p, b"A")
        b = sub(img, p, b"A", b"B")
        put_both32(img, b + 2, le32(img, a + 2))
        put_both32(img, b + 10, le32(img, a + 10))
        out["dir-loop-parent.iso"] = bytes(img)

        img = bytearray(good)
        r = sub(img, p, b"README.TXT;1")
        put_both32(img, r + 2, 0x00F00000)
        out["extent-past-end.iso"] = bytes(img)

        img = bytearray(good)
        a = sub(img, p, b"A")
        put_both32(img, a + 10, 0x7FFFF800)
        out["dir-huge-length.iso"] = bytes(img)

        img = bytearray(good)
        put_both32(img, p + 80, 0xFFFFFFFF)
        out["volume-space-huge.iso"] = bytes(img)

        img = bytearray(good)
        struct.pack_into("<H", img, p + 128, 512)
        struct.pack_into(">H", img, p + 130, 512)
        out["block-size-512.iso"] = bytes(img)

        # Rock Ridge NM names: "..", and one with "/" climbing out.
        img = bytearray(good)
        replace_all(img, b"NM\x07\x01\x00zz", b"NM\x07\x01\x00..")
        out["rr-dotdot.iso"] = bytes(img)
        img = bytearray(good)
        nm = b"NM" + bytes([5 + len(LONG), 1, 0])
        replace_all(img, nm + LONG.encode(), nm + ESCAPE.encode())
        out["rr-slash.iso"] = bytes(img)
        img = bytearray(good)
        replace_all(img, b"NM\x07\x01\x00zz", b"NM\x07\x01\x00\x00\x00")
        out["rr-nul.iso"] = bytes(img)

        # Joliet names: the directory "jj" becomes "..", "kkk…" becomes "../../diskforge-canary"
        # (records and path tables alike).
        img = bytearray(good)
        replace_all(img, "jj".encode("utf-16-be"), "..".encode("utf-16-be"))
        out["joliet-dotdot.iso"] = bytes(img)
        img = bytearray(good)
        replace_all(img, LONG_DIR.encode("utf-16-be"), ESCAPE.encode("utf-16-be"))
        out["joliet-slash.iso"] = bytes(img)

        # A SUSP continuation (CE) that points at itself: the root's "." record gets a CE
        # entry in place of its SP (Rock Ridge is detected from a copy kept in the block).
        img = bytearray(good)
        lba, length = root_of(img, p)
        dot = lba * SECTOR
        su = dot + 34
        assert img[su:su + 2] == b"SP", img[su:su + 2]
        # Make the CE area: a 28-byte CE at the start of the "." record's area, pointing at
        # a continuation in an unused part of the image that holds a CE pointing to itself.
        cont_lba = len(img) // SECTOR - 1
        cont = cont_lba * SECTOR + 1024
        ce = b"CE\x1c\x01" + struct.pack("<I", cont_lba) + struct.pack(">I", cont_lba) \
            + struct.pack("<I", 1024) + struct.pack(">I", 1024) \
            + struct.pack("<I", 28) + struct.pack(">I", 28)
        img[cont:cont + 28] = ce
        # In every record of /A (rr names are read through CE for each record).
        a = sub(img, p, b"A")
        alba, alen = le32(img, a + 2), le32(img, a + 10)
        for off, ident in records(img, alba, alen):
            if ident not in (b"\x00", b"\x01"):
                n = img[off]
                nl = img[off + 32]
                area = off + 33 + nl + (1 if nl % 2 == 0 else 0)
                if off + n - area >= 28:
                    img[area:area + 28] = ce
        out["susp-ce-loop.iso"] = bytes(img)

        out["empty.iso"] = b""
        out["zeros.iso"] = bytes(40 * SECTOR)
        seed = 12345
        garbage = bytearray()
        for _ in range(18 * SECTOR):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            garbage.append(seed >> 16 & 0xFF)
        out["garbage.iso"] = bytes(garbage)

        for name, data in sorted(out.items()):
            path = os.path.join(HERE, name + ".gz")
            with open(path, "wb") as f:
                with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as g:
                    g.write(data)
            print(f"{name}: {len(data)} bytes -> {os.path.getsize(path)}", file=sys.stderr)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
