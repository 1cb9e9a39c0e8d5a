//! OCI image layouts: read an image's layers (every blob verified) and append a new image.
//!
//! Follows `image-layout.md` of the OCI image spec v1.1: `oci-layout`, `index.json`,
//! `blobs/sha256/HEX`; images are named by the `org.opencontainers.image.ref.name`
//! annotation of their descriptor in `index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest,
    MediaType, Os,
};

use std::io::Read as _;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::digest::{HashReader, sha256_hex};
use crate::{Compression, Error, Result};

/// Largest JSON document (`oci-layout`, `index.json`, a manifest, index or config blob) read
/// from a layout: 16 MiB.
pub const MAX_DOCUMENT: u64 = 16 << 20;

/// Open a file of a layout for reading: only a regular file, never through a symlink at its
/// last component (a blob linked to `/dev/zero` or out of the layout) and never blocking on a
/// FIFO. Returns the file and its size.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP => Error::Oci {
            path: path.to_owned(),
            reason: "is a symlink; a layout's blobs and documents must be regular files".into(),
        },
        e => Error::sys("opening", path, e),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::sys("inspecting", path, e))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(Error::Oci {
            path: path.to_owned(),
            reason: format!("is a {kind:?}, not a regular file"),
        });
    }
    Ok((
        std::fs::File::from(fd),
        u64::try_from(st.st_size).unwrap_or(0),
    ))
}

/// The bytes of a JSON document of a layout (see [`open_regular`]), at most [`MAX_DOCUMENT`].
pub(crate) fn read_document(path: &Path) -> Result<Vec<u8>> {
    let (f, size) = open_regular(path)?;
    if size > MAX_DOCUMENT {
        return Err(Error::Oci {
            path: path.to_owned(),
            reason: format!("document of {size} bytes (the limit is {MAX_DOCUMENT})"),
        });
    }
    let mut out = Vec::new();
    f.take(MAX_DOCUMENT)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("reading", path, e))?;
    Ok(out)
}

fn read_index(path: &Path) -> Result<ImageIndex> {
    ImageIndex::from_reader(read_document(path)?.as_slice()).map_err(spec_err(path))
}

/// One layer blob of an image, verified against the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerBlob {
    /// The blob file inside the layout.
    pub path: PathBuf,
    /// The blob's digest (`sha256:…`, of the possibly compressed bytes).
    pub digest: String,
    /// The layer's diff_id from the image config (digest of the uncompressed tar).
    pub diff_id: String,
    /// The media type from the manifest.
    pub media_type: String,
}

/// An image read from a layout.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image configuration.
    pub config: ImageConfiguration,
    /// The layers, base first.
    pub layers: Vec<LayerBlob>,
}

/// The path of blob `digest` in `layout`, refusing digests that are not `sha256:` + 64 hex.
pub fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = sha256_hex(digest).ok_or_else(|| Error::Oci {
        path: layout.to_owned(),
        reason: format!("unsupported or malformed digest {digest:?} (only sha256 is supported)"),
    })?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// Whether `dir` looks like an OCI image layout (has an `oci-layout` file).
pub fn is_layout(dir: &Path) -> bool {
    dir.join("oci-layout").is_file()
}

/// The `imageLayoutVersion`s this crate reads (`image-layout.md`: the only version so far).
pub const LAYOUT_VERSIONS: &[&str] = &["1.0.0"];

/// Check `layout`'s `oci-layout` file: JSON with an `imageLayoutVersion` we know
/// ([`LAYOUT_VERSIONS`]); an unknown version is refused rather than misread.
pub fn check_layout_version(layout: &Path) -> Result<()> {
    let path = layout.join("oci-layout");
    let raw = read_document(&path)?;
    let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| Error::Oci {
        path: path.clone(),
        reason: format!("oci-layout is not JSON: {e}"),
    })?;
    match v.get("imageLayoutVersion") {
        Some(serde_json::Value::String(s)) if LAYOUT_VERSIONS.contains(&s.as_str()) => Ok(()),
        Some(other) => Err(Error::Unsupported {
            path,
            reason: format!(
                "imageLayoutVersion {other} is not one this version reads ({})",
                LAYOUT_VERSIONS.join(", ")
            ),
        }),
        None => Err(Error::Oci {
            path,
            reason: "oci-layout has no imageLayoutVersion".into(),
        }),
    }
}

fn read_verified(layout: &Path, desc: &Descriptor) -> Result<PathBuf> {
    let digest = desc.digest().to_string();
    let path = blob_path(layout, &digest)?;
    let (file, len) = open_regular(&path)?;
    if len != desc.size() {
        return Err(Error::Oci {
            path: path.clone(),
            reason: format!("blob is {len} bytes, its descriptor says {}", desc.size()),
        });
    }
    let mut hashed = HashReader::new(std::io::BufReader::new(file.take(len)));
    std::io::copy(&mut hashed, &mut std::io::sink()).map_err(|e| Error::io("reading", &path, e))?;
    let actual = hashed.digest();
    if actual != digest {
        return Err(Error::DigestMismatch {
            path,
            expected: digest,
            actual,
        });
    }
    Ok(path)
}

fn spec_err(path: &Path) -> impl FnOnce(oci_spec::OciSpecError) -> Error + '_ {
    move |source| Error::OciSpec {
        path: path.to_owned(),
        source,
    }
}

/// The names (`ref.name` annotations) of the images in `layout`'s `index.json`.
pub fn list_refs(layout: &Path) -> Result<Vec<String>> {
    let index = read_index(&layout.join("index.json"))?;
    Ok(index
        .manifests()
        .iter()
        .filter_map(|d| d.annotations().as_ref()?.get(ANNOTATION_REF_NAME).cloned())
        .collect())
}

/// Read the image named `reference` (or the only image when `None`) from `layout`, verifying
/// the digest and size of the manifest, the config and every layer blob, and that the config
/// lists one diff_id per layer. A nested image index picks its linux/amd64 (or only) manifest.
pub fn read_image(layout: &Path, reference: Option<&str>) -> Result<Image> {
    if !is_layout(layout) {
        return Err(Error::Oci {
            path: layout.to_owned(),
            reason: "no oci-layout file: not an OCI image layout".into(),
        });
    }
    check_layout_version(layout)?;
    let index = read_index(&layout.join("index.json"))?;
    let named = |d: &&Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .map(String::as_str)
            == reference
    };
    let candidates: Vec<&Descriptor> = match reference {
        Some(_) => index.manifests().iter().filter(named).collect(),
        None => index.manifests().iter().collect(),
    };
    let mut desc = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(Error::Oci {
                path: layout.to_owned(),
                reason: format!(
                    "no image named {:?} (images: {:?})",
                    reference.unwrap_or(""),
                    list_refs(layout)?
                ),
            });
        }
        _ => {
            return Err(Error::Oci {
                path: layout.to_owned(),
                reason: format!(
                    "several images match; name one with LAYOUT:REF (images: {:?})",
                    list_refs(layout)?
                ),
            });
        }
    };
    if *desc.media_type() == MediaType::ImageIndex {
        let p = read_verified(layout, &desc)?;
        let nested = read_index(&p)?;
        let pick = nested
            .manifests()
            .iter()
            .find(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
            })
            .or_else(|| (nested.manifests().len() == 1).then(|| &nested.manifests()[0]))
            .ok_or_else(|| Error::Oci {
                path: p.clone(),
                reason: "no linux/amd64 manifest in the image index".into(),
            })?;
        desc = pick.clone();
    }
    let manifest_path = read_verified(layout, &desc)?;
    let manifest = ImageManifest::from_reader(read_document(&manifest_path)?.as_slice())
        .map_err(spec_err(&manifest_path))?;
    let config_path = read_verified(layout, manifest.config())?;
    let config = ImageConfiguration::from_reader(read_document(&config_path)?.as_slice())
        .map_err(spec_err(&config_path))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Oci {
            path: config_path,
            reason: format!(
                "config lists {} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            ),
        });
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = l.media_type().to_string();
        if !media_type.contains("tar") {
            return Err(Error::Unsupported {
                path: manifest_path.clone(),
                reason: format!("layer media type {media_type} is not a tar layer"),
            });
        }
        let path = read_verified(layout, l)?;
        layers.push(LayerBlob {
            path,
            digest: l.digest().to_string(),
            diff_id: diff_id.clone(),
            media_type,
        });
    }
    Ok(Image {
        manifest_digest: desc.digest().to_string(),
        manifest,
        config,
        layers,
    })
}

/// What [`append_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppendedImage {
    /// The image's name in `index.json`.
    pub reference: String,
    /// The new manifest's digest.
    pub manifest_digest: String,
    /// The new config's digest.
    pub config_digest: String,
    /// The appended layer's blob digest.
    pub layer_digest: String,
    /// The appended layer's diff_id.
    pub diff_id: String,
    /// Number of layers in the new image.
    pub layers: usize,
}

/// Create an empty OCI layout at `dir` if it has none yet.
pub fn init_layout(dir: &Path) -> Result<()> {
    if is_layout(dir) {
        check_layout_version(dir)?;
    }
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(|e| Error::io("creating", dir, e))?;
    if !is_layout(dir) {
        write_atomic(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
    }
    if !dir.join("index.json").exists() {
        write_atomic(
            &dir.join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )?;
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    diskforge_fault::point("layers.write")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("creating temporary file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("writing", path, e))?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|e| Error::io("chmod", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("renaming into place", path, e.error))?;
    Ok(())
}

/// Store `bytes` as a blob of `layout`; returns its descriptor. A blob that was not there
/// before is added to `made`.
fn put_blob(
    layout: &Path,
    media_type: MediaType,
    bytes: &[u8],
    made: &mut Vec<PathBuf>,
) -> Result<Descriptor> {
    use sha2::Digest as _;
    let digest = format!(
        "sha256:{}",
        crate::digest::hex(&sha2::Sha256::digest(bytes))
    );
    let path = blob_path(layout, &digest)?;
    let existed = path.exists();
    write_atomic(&path, bytes)?;
    if !existed {
        made.push(path);
    }
    let d: Digest = digest.parse().map_err(spec_err(layout))?;
    Ok(Descriptor::new(media_type, bytes.len() as u64, d))
}

/// Append a new image named `reference` to the OCI layout `layout` (created if missing):
/// its layers are those of image `base` (when given) plus the layer blob `layer_file`
/// (moved into `blobs/`), its config lists their diff_ids. An existing image with the same
/// name is replaced in `index.json`; nothing else there changes. `created` (seconds since the
/// epoch, e.g. `SOURCE_DATE_EPOCH`) fills the config's `created` field when given.
///
/// All or nothing: when a step fails, the blobs this call added are removed again (and the
/// whole layout when this call created it), so `index.json` names no missing blob and no
/// orphan blob is left.
pub fn append_image(
    layout: &Path,
    reference: &str,
    base: Option<&str>,
    layer_file: &Path,
    stats: &crate::TarStats,
    created: Option<u64>,
) -> Result<AppendedImage> {
    let existed = layout.exists();
    let mut made = Vec::new();
    let res = append_image_to(
        layout, reference, base, layer_file, stats, created, &mut made,
    );
    if res.is_err() {
        undo_layout_changes(layout, existed, &made);
    }
    res
}

/// Remove what a failed append made: the whole layout when it did not exist before, else
/// the blobs in `made`. Failures are logged; the caller reports the primary error.
fn undo_layout_changes(layout: &Path, existed: bool, made: &[PathBuf]) {
    if !existed {
        if let Err(e) = std::fs::remove_dir_all(layout) {
            tracing::warn!(layout = %layout.display(), "removing the layout this call created: {e}");
        }
        return;
    }
    for p in made {
        if let Err(e) = std::fs::remove_file(p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(blob = %p.display(), "removing a blob of a failed append: {e}");
        }
    }
}

fn append_image_to(
    layout: &Path,
    reference: &str,
    base: Option<&str>,
    layer_file: &Path,
    stats: &crate::TarStats,
    created: Option<u64>,
    made: &mut Vec<PathBuf>,
) -> Result<AppendedImage> {
    init_layout(layout)?;
    let (mut layers, mut diff_ids, mut config_json) = match base {
        Some(b) => {
            let img = read_image(layout, Some(b))?;
            let layers: Vec<Descriptor> = img.manifest.layers().clone();
            let diff_ids = img.config.rootfs().diff_ids().clone();
            let cfg_path = blob_path(layout, img.manifest.config().digest().as_ref())?;
            let raw = read_document(&cfg_path)?;
            let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| Error::Oci {
                path: cfg_path.clone(),
                reason: format!("config is not JSON: {e}"),
            })?;
            (layers, diff_ids, v)
        }
        None => (
            Vec::new(),
            Vec::new(),
            serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}),
        ),
    };
    let layer_path = blob_path(layout, &stats.digest)?;
    diskforge_fault::point("layers.commit.layer")?;
    let layer_existed = layer_path.exists();
    std::fs::rename(layer_file, &layer_path)
        .map_err(|e| Error::io("moving layer into", &layer_path, e))?;
    if !layer_existed {
        made.push(layer_path);
    }
    let media_type = match stats.compression {
        Compression::None => MediaType::ImageLayer,
        Compression::Gzip => MediaType::ImageLayerGzip,
        Compression::Zstd => MediaType::ImageLayerZstd,
    };
    let ld: Digest = stats.digest.parse().map_err(spec_err(layout))?;
    layers.push(Descriptor::new(media_type, stats.size, ld));
    diff_ids.push(stats.diff_id.clone());
    config_json["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    let created_str = created.map(rfc3339);
    if let Some(c) = &created_str {
        config_json["created"] = serde_json::Value::String(c.clone());
    }
    let mut history = config_json
        .get("history")
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default();
    let mut h = serde_json::json!({"created_by": "dflayers commit"});
    if let Some(c) = &created_str {
        h["created"] = serde_json::Value::String(c.clone());
    }
    history.push(h);
    config_json["history"] = serde_json::Value::Array(history);
    let config_bytes = serde_json::to_vec(&config_json).map_err(|e| Error::Oci {
        path: layout.to_owned(),
        reason: format!("serialising config: {e}"),
    })?;
    let config_desc = put_blob(layout, MediaType::ImageConfig, &config_bytes, made)?;

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| Error::Oci {
        path: layout.to_owned(),
        reason: format!("serialising manifest: {e}"),
    })?;
    let mut manifest_desc = put_blob(layout, MediaType::ImageManifest, &manifest_bytes, made)?;
    manifest_desc.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_owned(),
        reference.to_owned(),
    )])));

    let index_path = layout.join("index.json");
    let mut index = read_index(&index_path)?;
    let mut manifests: Vec<Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .map(String::as_str)
                != Some(reference)
        })
        .cloned()
        .collect();
    manifests.push(manifest_desc.clone());
    index.set_manifests(manifests);
    let index_bytes = index.to_string().map_err(spec_err(&index_path))?;
    write_atomic(&index_path, index_bytes.as_bytes())?;
    Ok(AppendedImage {
        reference: reference.to_owned(),
        manifest_digest: manifest_desc.digest().to_string(),
        config_digest: config_desc.digest().to_string(),
        layer_digest: stats.digest.clone(),
        diff_id: stats.diff_id.clone(),
        layers: layers.len(),
    })
}

/// Commit the overlay upper dir `upper` as a new layer of the OCI layout `layout` (created
/// if missing) and add image `reference` (base image `base`'s layers plus this one).
/// The layer is written straight into `blobs/` (temporary name, then its digest).
pub fn commit_to_layout(
    upper: &Path,
    layout: &Path,
    reference: &str,
    base: Option<&str>,
    opts: crate::TarOptions,
    created: Option<u64>,
) -> Result<AppendedImage> {
    let existed = layout.exists();
    let res = commit_into(upper, layout, reference, base, opts, created);
    if res.is_err() && !existed && layout.exists() {
        // append_image undid its own part; what is left is the layout init_layout made.
        undo_layout_changes(layout, false, &[]);
    }
    res
}

fn commit_into(
    upper: &Path,
    layout: &Path,
    reference: &str,
    base: Option<&str>,
    opts: crate::TarOptions,
    created: Option<u64>,
) -> Result<AppendedImage> {
    init_layout(layout)?;
    let blobs = layout.join("blobs/sha256");
    diskforge_fault::point("layers.commit")?;
    let tmp = tempfile::NamedTempFile::new_in(&blobs)
        .map_err(|e| Error::io("creating temporary file in", &blobs, e))?;
    let file = tmp
        .reopen()
        .map_err(|e| Error::io("opening", tmp.path(), e))?;
    let (file, stats) = crate::write_layer_to(upper, file, opts)?;
    file.sync_all()
        .map_err(|e| Error::io("syncing", tmp.path(), e))?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|e| Error::io("chmod", tmp.path(), e))?;
    let (_, path) = tmp
        .keep()
        .map_err(|e| Error::io("keeping", &blobs, e.error))?;
    let res = append_image(layout, reference, base, &path, &stats, created);
    if res.is_err() && path.exists() {
        let _ = std::fs::remove_file(&path);
    }
    res
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp (`1970-01-01T00:00:00Z`).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for all dates after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(layout: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(layout.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Found by `cargo xtask hardening` (faults): a commit that failed after
    /// `init_layout` left a new layout behind, and one that failed after writing its blobs
    /// left them orphaned in an existing layout.
    #[test]
    fn a_failed_commit_leaves_the_layout_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let (up1, up2) = (d.path().join("up1"), d.path().join("up2"));
        std::fs::create_dir_all(&up1).unwrap();
        std::fs::create_dir_all(&up2).unwrap();
        std::fs::write(up1.join("a"), "one\n").unwrap();
        std::fs::write(up2.join("b"), "two\n").unwrap();
        let opts = crate::TarOptions::default();

        // A new layout: a failure (the base image does not exist) removes all of it.
        let fresh = d.path().join("fresh");
        let e = commit_to_layout(&up1, &fresh, "t", Some("nope"), opts, None).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(
            !fresh.exists(),
            "the layout made by a failed commit is left"
        );

        // An existing layout: the blobs written before the failure go again.
        let layout = d.path().join("oci");
        commit_to_layout(&up1, &layout, "t1", None, opts, None).unwrap();
        let before = blobs(&layout);
        let index = std::fs::read(layout.join("index.json")).unwrap();
        std::fs::write(layout.join("index.json"), "not json").unwrap();
        commit_to_layout(&up2, &layout, "t2", None, opts, None).unwrap_err();
        assert_eq!(blobs(&layout), before, "orphan blobs left");
        std::fs::write(layout.join("index.json"), index).unwrap();
        commit_to_layout(&up2, &layout, "t2", None, opts, None).unwrap();
        assert_eq!(blobs(&layout).len(), before.len() + 3);
    }

    /// Defect 9 of issue 12: an unknown `imageLayoutVersion` is refused, naming it.
    #[test]
    fn unknown_layout_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        init_layout(d.path()).unwrap();
        check_layout_version(d.path()).unwrap();
        std::fs::write(
            d.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        let e = read_image(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("imageLayoutVersion \"2.0.0\""), "{e}");
        std::fs::write(d.path().join("oci-layout"), "{}").unwrap();
        assert!(read_image(d.path(), None).is_err());
    }

    /// A layout with one image of one layer (a file `f`), and the path of its layer blob.
    fn one_image() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        std::fs::write(upper.join("f"), b"f").unwrap();
        let layout = d.path().join("layout");
        let opts = crate::TarOptions {
            compression: Compression::Gzip,
            clamp_mtime: Some(0),
            overwrite: false,
        };
        let img = commit_to_layout(&upper, &layout, "latest", None, opts, Some(0)).unwrap();
        let blob = blob_path(&layout, &img.layer_digest).unwrap();
        read_image(&layout, Some("latest")).unwrap();
        (d, blob)
    }

    /// Why reading the layout made by [`one_image`] (since altered) fails.
    fn refusal(d: &tempfile::TempDir) -> String {
        read_image(&d.path().join("layout"), None)
            .unwrap_err()
            .to_string()
    }

    /// Issue 17 corpus (`oci/blob-symlink-*`): a blob that is a symlink (to `/dev/zero`,
    /// which hashes forever, or out of the layout) is refused without being read.
    #[test]
    fn symlinked_blobs_are_refused() {
        for target in ["/dev/zero", "../../../outside"] {
            let (d, blob) = one_image();
            std::fs::remove_file(&blob).unwrap();
            std::os::unix::fs::symlink(target, &blob).unwrap();
            let e = refusal(&d);
            assert!(e.contains("is a symlink"), "{target}: {e}");
        }
    }

    /// Issue 17 corpus (`oci-index-fifo`, `oci-blob-fifo`): a FIFO in place of `index.json`
    /// or a blob is refused at once (opening it used to block forever).
    #[test]
    fn fifos_are_refused_without_blocking() {
        for which in ["index", "blob"] {
            let (d, blob) = one_image();
            let victim = if which == "index" {
                d.path().join("layout/index.json")
            } else {
                blob
            };
            std::fs::remove_file(&victim).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &victim,
                FileType::Fifo,
                Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap();
            let e = refusal(&d);
            assert!(e.contains("not a regular file"), "{which}: {e}");
        }
    }

    /// A document over [`MAX_DOCUMENT`] is refused before it is read.
    #[test]
    fn huge_documents_are_refused() {
        let (d, _) = one_image();
        let index = d.path().join("layout/index.json");
        let f = std::fs::File::options().write(true).open(&index).unwrap();
        f.set_len(MAX_DOCUMENT + 1).unwrap();
        let e = refusal(&d);
        assert!(e.contains("the limit is"), "{e}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn digests_become_safe_paths() {
        let l = Path::new("/l");
        assert!(blob_path(l, "sha256:../../etc/passwd").is_err());
        assert!(blob_path(l, "sha512:00").is_err());
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            blob_path(l, &ok).unwrap(),
            Path::new("/l/blobs/sha256").join("a".repeat(64))
        );
    }
}
