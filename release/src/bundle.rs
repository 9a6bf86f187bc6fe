//! The bundle file: header, signed manifest, signatures, then a zstd-compressed tar of the
//! release tree. Building writes one; verification streams one. Not installation: unpacking
//! onto a node belongs to the agent.
//!
//! Layout: `MAGIC`, u32 big-endian manifest length, manifest JSON, u32 big-endian signature
//! list length, signature list JSON, then the payload to the end of the file.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ReleaseError;
use crate::keys::{PublicKey, SecretKey, io_err};
use crate::manifest::{self, Entry, FORMAT, MODE_BITS, Manifest, Payload, Timestamp};
use crate::signatures::{self, Signature};
use crate::trust::Root;

pub const MAGIC: &[u8; 16] = b"fleet-bundle-v1\n";
/// Prefix of every manifest signature.
pub const MANIFEST_DOMAIN: &[u8] = b"fleet release manifest v1\0";
/// A manifest larger than this is refused before it is read, and so before any signature is
/// checked: it bounds what an unauthenticated sender can make a node allocate. A manifest
/// entry is about 120 bytes plus its path (type, mode, size and a 64-digit sha256), so 1 MiB
/// holds over 6000 files with 40-byte paths; a release (`bin/etl-server`, `bin/fleet-agent`,
/// migrations, templates) lists a few dozen.
pub const MANIFEST_CAP: u64 = 1 << 20;
/// A signature list larger than this is refused before it is read.
pub const SIGNATURES_CAP: u64 = 64 << 10;
/// File name suffix of bundles in a store.
pub const BUNDLE_SUFFIX: &str = ".bundle";

const IO_BUF: usize = 1 << 20;
/// Largest zstd window a bundle may use (16 MiB); `build` stays well under it.
const WINDOW_LOG_MAX: u32 = 24;

/// The part of a bundle before the payload, as read (not yet trusted).
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<Signature>,
}

impl Header {
    /// Parses the manifest without checking any signature; for listing a store, never for
    /// deciding what to install.
    pub fn manifest_unverified(&self) -> Result<Manifest, ReleaseError> {
        parse_manifest(&self.manifest_bytes)
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let sigs = serde_json::to_vec(&self.signatures).map_err(io::Error::other)?;
        w.write_all(MAGIC)?;
        write_block(w, &self.manifest_bytes)?;
        write_block(w, &sigs)
    }
}

fn write_block(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ReleaseError> {
    serde_json::from_slice(bytes).map_err(|e| ReleaseError::BadManifest(e.to_string()))
}

/// Reads the header, refusing a block over its cap before allocating it.
pub fn read_header(r: &mut impl Read) -> Result<Header, ReleaseError> {
    let mut magic = [0u8; 16];
    match read_exact(r, &mut magic) {
        Err(ReleaseError::Truncated) => return Err(ReleaseError::NotABundle),
        Err(e) => return Err(e),
        Ok(()) if &magic != MAGIC => return Err(ReleaseError::NotABundle),
        Ok(()) => {}
    }
    let manifest_bytes = read_block(r, "manifest", MANIFEST_CAP)?;
    let sig_bytes = read_block(r, "signature list", SIGNATURES_CAP)?;
    let signatures = serde_json::from_slice(&sig_bytes)
        .map_err(|e| ReleaseError::Corrupt(format!("signature list: {e}")))?;
    Ok(Header {
        manifest_bytes,
        signatures,
    })
}

fn read_block(r: &mut impl Read, what: &'static str, cap: u64) -> Result<Vec<u8>, ReleaseError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len)?;
    let size = u64::from(u32::from_be_bytes(len));
    if size > cap {
        return Err(ReleaseError::TooLarge { what, size, cap });
    }
    let mut bytes = vec![0u8; size as usize];
    read_exact(r, &mut bytes)?;
    Ok(bytes)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ReleaseError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReleaseError::Truncated,
        _ => ReleaseError::Read(e),
    })
}

/// The digest a rollout order names a release by: the sha256, in lowercase hex, of the exact
/// manifest bytes its signatures cover (never of a re-serialized manifest).
pub fn manifest_digest(manifest_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(manifest_bytes))
}

/// What a successful verification established.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub manifest: Manifest,
    /// The sha256 (lowercase hex) of the exact signed manifest bytes: what a rollout order
    /// names as the release's digest ([`manifest_digest`]).
    pub manifest_sha256: String,
    /// The release keys whose signatures counted.
    pub signers: Vec<PublicKey>,
    pub files: usize,
    pub bytes: u64,
}

/// Verifies a bundle against a trusted root at time `now`, with fixed-size buffers whatever
/// its size. Nothing is believed before it is authenticated: the signatures over the exact
/// manifest bytes first, then the manifest's rules, then (first pass) the compressed payload
/// against the manifest's digest, and only then (second pass) is the payload decompressed and
/// every archive entry held to the manifest entry of the same path.
pub fn verify<R: Read + Seek>(
    r: R,
    root: &Root,
    now: SystemTime,
) -> Result<Verified, ReleaseError> {
    check(r, root, now, None, None)
}

/// Verifies a bundle exactly as [`verify`] does and, in the same second pass, writes its tree
/// into `dest`, a directory that must not exist yet. Each file is hashed as it is written; on
/// any refusal the caller must discard `dest` (the agent unpacks into a staging name and
/// renames only a complete, verified tree).
pub fn unpack<R: Read + Seek>(
    r: R,
    root: &Root,
    now: SystemTime,
    dest: &Path,
) -> Result<Verified, ReleaseError> {
    fs::create_dir(dest).map_err(|e| io_err(dest, e))?;
    check(r, root, now, Some(dest), None)
}

/// The size and sha256 of a bundle's payload, measured by [`receive`] as it wrote the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub size: u64,
    pub sha256: String,
}

/// Copies a bundle from `input` to `out`, hashing the payload as it passes, so that
/// [`unpack_measured`] need not read it again. The manifest's signatures are checked against
/// `root` before any payload byte is accepted, and at most one byte more than the signed
/// manifest announces is read: a sender without a trusted release key cannot make the receiver
/// store anything, and a signed one cannot make it store more than it signed for.
pub fn receive(
    input: &mut impl Read,
    out: &mut impl Write,
    root: &Root,
) -> Result<Measured, ReleaseError> {
    let header = read_header(input)?;
    verify_signatures(&header, root)?;
    let limit = header.manifest_unverified()?.payload.size.saturating_add(1);
    header.write_to(out).map_err(ReleaseError::Write)?;
    let mut hashing = Hashing::new(out);
    io::copy(&mut input.take(limit), &mut hashing).map_err(ReleaseError::Read)?;
    let (out, size, sha256) = hashing.finish();
    out.flush().map_err(ReleaseError::Write)?;
    Ok(Measured { size, sha256 })
}

fn verify_signatures(header: &Header, root: &Root) -> Result<Vec<PublicKey>, ReleaseError> {
    signatures::verify_threshold(
        "manifest",
        MANIFEST_DOMAIN,
        &header.manifest_bytes,
        &header.signatures,
        &root.body().release_keys,
        root.body().release_threshold,
    )
}

/// [`unpack`] for a bundle written by [`receive`]: the payload digest measured while receiving
/// stands in for the first pass; everything else is checked as in [`verify`].
pub fn unpack_measured<R: Read + Seek>(
    r: R,
    measured: &Measured,
    root: &Root,
    now: SystemTime,
    dest: &Path,
) -> Result<Verified, ReleaseError> {
    fs::create_dir(dest).map_err(|e| io_err(dest, e))?;
    check(r, root, now, Some(dest), Some(measured))
}

fn check<R: Read + Seek>(
    r: R,
    root: &Root,
    now: SystemTime,
    dest: Option<&Path>,
    measured: Option<&Measured>,
) -> Result<Verified, ReleaseError> {
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let header = read_header(&mut r)?;
    let signers = verify_signatures(&header, root)?;
    let manifest = parse_manifest(&header.manifest_bytes)?;
    manifest.check()?;
    if now >= manifest.expires.0 {
        return Err(ReleaseError::Expired {
            version: manifest.version.to_string(),
            expires: manifest.expires,
        });
    }
    match measured {
        Some(m) => compare_payload(m.size, &m.sha256, &manifest.payload)?,
        None => {
            let start = r.stream_position().map_err(ReleaseError::Read)?;
            check_payload_digest(&mut r, &manifest.payload)?;
            r.seek(SeekFrom::Start(start)).map_err(ReleaseError::Read)?;
        }
    }
    check_entries(r, &manifest, dest)?;
    Ok(Verified {
        files: manifest.file_count(),
        bytes: manifest.total_size(),
        manifest_sha256: manifest_digest(&header.manifest_bytes),
        manifest,
        signers,
    })
}

/// Hashes the payload to the end of the bundle, reading at most one byte past its declared
/// size, so that every byte of the file is covered by the signature before any is parsed.
fn check_payload_digest(r: impl Read, payload: &Payload) -> Result<(), ReleaseError> {
    let mut hashing = Hashing::new(r.take(payload.size.saturating_add(1)));
    io::copy(&mut hashing, &mut io::sink()).map_err(ReleaseError::Read)?;
    let (_, count, sha256) = hashing.finish();
    compare_payload(count, &sha256, payload)
}

fn compare_payload(count: u64, sha256: &str, payload: &Payload) -> Result<(), ReleaseError> {
    match count.cmp(&payload.size) {
        std::cmp::Ordering::Less => Err(ReleaseError::PayloadMismatch(
            "shorter than the manifest says",
        )),
        std::cmp::Ordering::Greater => Err(ReleaseError::PayloadMismatch(
            "longer than the manifest says",
        )),
        std::cmp::Ordering::Equal if sha256 != payload.sha256 => Err(
            ReleaseError::PayloadMismatch("sha256 differs from the manifest"),
        ),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Decompresses the (authenticated) payload and holds each archive entry to the manifest.
fn check_entries(
    r: impl BufRead,
    manifest: &Manifest,
    dest: Option<&Path>,
) -> Result<(), ReleaseError> {
    let mut expected: Expected<'_> = manifest
        .entries
        .iter()
        .map(|e| (e.path(), (e, false)))
        .collect();
    let mut decoder = zstd::stream::read::Decoder::with_buffer(r).map_err(corrupt)?;
    // Bounds the decoder's window (and so its memory) whatever window a frame asks for.
    decoder.window_log_max(WINDOW_LOG_MAX).map_err(corrupt)?;
    // Bounds what comes out of it: a small payload cannot unpack into unbounded work, and no
    // record the tar reader holds in memory (a long name) can outgrow the listed entries.
    let cap = archive_bound(manifest);
    let mut archive = tar::Archive::new(Bounded {
        inner: decoder,
        left: cap,
        over: false,
    });
    let checked = check_archive(&mut archive, &mut expected, dest);
    if archive.into_inner().over {
        return Err(ReleaseError::Inflated { cap });
    }
    checked?;
    if let Some((path, _)) = expected.iter().find(|(_, (_, seen))| !seen) {
        return Err(ReleaseError::Missing {
            path: (*path).to_owned(),
        });
    }
    if let Some(dest) = dest {
        finish_dirs(dest, manifest)?;
    }
    Ok(())
}

fn check_archive<R: Read>(
    archive: &mut tar::Archive<R>,
    expected: &mut Expected<'_>,
    dest: Option<&Path>,
) -> Result<(), ReleaseError> {
    let mut buf = vec![0u8; IO_BUF];
    for entry in archive.entries().map_err(corrupt)? {
        check_entry(entry.map_err(corrupt)?, expected, &mut buf, dest)?;
    }
    Ok(())
}

const BLOCK: u64 = 512;

/// The most bytes the tar stream of `manifest`'s release can take: for each entry its header,
/// a GNU long-name record for a path or link target too long for the header, and its data in
/// 512-byte blocks; then the two zero blocks that end the archive.
fn archive_bound(manifest: &Manifest) -> u64 {
    let blocks = |n: u64| n.div_ceil(BLOCK).saturating_mul(BLOCK);
    let long = |name: &str| {
        if name.len() < 100 {
            0
        } else {
            BLOCK + blocks(name.len() as u64 + 1)
        }
    };
    manifest
        .entries
        .iter()
        .map(|e| {
            let (data, link) = match e {
                Entry::File { size, .. } => (*size, ""),
                Entry::Symlink { target, .. } => (0, target.as_str()),
                Entry::Dir { .. } => (0, ""),
            };
            BLOCK
                .saturating_add(long(e.path()))
                .saturating_add(long(link))
                .saturating_add(blocks(data))
        })
        .fold(2 * BLOCK, u64::saturating_add)
}

/// A reader that gives at most `left` bytes and notes (`over`) a reader wanting more.
struct Bounded<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // The end of the stream is fine; one byte more is over the bound.
            if self.inner.read(&mut buf[..1])? == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(io::Error::other(
                "the archive is larger than its manifest accounts for",
            ));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Gives unpacked directories their modes (deepest first, so a read-only directory is closed
/// only after everything inside it was written) and makes the tree durable.
fn finish_dirs(dest: &Path, manifest: &Manifest) -> Result<(), ReleaseError> {
    for entry in manifest.entries.iter().rev() {
        if let Entry::Dir { path, mode } = entry {
            let dir = dest.join(path);
            let file = File::open(&dir).map_err(|e| io_err(&dir, e))?;
            file.sync_all().map_err(|e| io_err(&dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(*mode))
                .map_err(|e| io_err(&dir, e))?;
        }
    }
    File::open(dest)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dest, e))
}

type Expected<'a> = BTreeMap<&'a str, (&'a Entry, bool)>;

fn check_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    expected: &mut Expected<'_>,
    buf: &mut [u8],
    dest: Option<&Path>,
) -> Result<(), ReleaseError> {
    let raw_path = entry.path_bytes();
    let path = std::str::from_utf8(&raw_path)
        .map_err(|_| ReleaseError::UnsafePath {
            path: String::from_utf8_lossy(&raw_path).into_owned(),
            reason: "not UTF-8".into(),
        })?
        .trim_end_matches('/')
        .to_owned();
    manifest::check_path(&path)?;
    let kind = entry.header().entry_type();
    if kind.is_character_special() || kind.is_block_special() {
        return Err(ReleaseError::DeviceFile { path });
    }
    if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
        return Err(ReleaseError::UnsafePath {
            path,
            reason: format!("unsupported entry type {kind:?}"),
        });
    }
    let link = entry
        .link_name_bytes()
        .map(|l| String::from_utf8_lossy(&l).into_owned());
    if let (true, Some(link)) = (kind.is_symlink(), &link) {
        manifest::check_link(&path, link)?;
    }
    let Some((listed, seen)) = expected.get_mut(path.as_str()) else {
        return Err(ReleaseError::Unlisted { path });
    };
    if std::mem::replace(seen, true) {
        return Err(ReleaseError::Corrupt(format!(
            "`{path}` appears twice in the archive"
        )));
    }
    let mode = entry.header().mode().map_err(corrupt)? & 0o7777;
    let differs = |what: &str| {
        Err(ReleaseError::EntryDiffers {
            path: path.clone(),
            what: what.into(),
        })
    };
    // Only a file carries data: anything after another header would be decompressed to be
    // skipped, unaccounted for.
    if !kind.is_file() && entry.size() != 0 {
        return Err(ReleaseError::SizeMismatch {
            path,
            expected: 0,
            actual: entry.size(),
        });
    }
    match **listed {
        Entry::Dir { mode: m, .. } if kind.is_dir() => {
            if mode != m {
                return differs("mode");
            }
            if let Some(dest) = dest {
                // Owner-writable until `finish_dirs` sets the listed mode.
                let dir = dest.join(&path);
                std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
                    .create(&dir)
                    .map_err(|e| io_err(&dir, e))?;
            }
        }
        Entry::Symlink { ref target, .. } if kind.is_symlink() => {
            if link.as_deref() != Some(target.as_str()) {
                return differs("symlink target");
            }
            if let Some(dest) = dest {
                let at = dest.join(&path);
                std::os::unix::fs::symlink(target, &at).map_err(|e| io_err(&at, e))?;
            }
        }
        Entry::File {
            mode: m,
            size,
            ref sha256,
            ..
        } if kind.is_file() => {
            let actual = entry.size();
            if actual != size {
                return Err(ReleaseError::SizeMismatch {
                    path,
                    expected: size,
                    actual,
                });
            }
            if mode != m {
                return differs("mode");
            }
            let mut out = match dest {
                Some(dest) => {
                    let at = dest.join(&path);
                    let file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&at)
                        .map_err(|e| io_err(&at, e))?;
                    Some((at, file))
                }
                None => None,
            };
            let mut hasher = Sha256::new();
            loop {
                let n = entry.read(buf).map_err(corrupt)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                if let Some((at, file)) = &mut out {
                    file.write_all(&buf[..n]).map_err(|e| io_err(at, e))?;
                }
            }
            if hex::encode(hasher.finalize()) != *sha256 {
                return Err(ReleaseError::HashMismatch { path });
            }
            if let Some((at, file)) = out {
                file.set_permissions(fs::Permissions::from_mode(m))
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_err(&at, e))?;
            }
        }
        _ => return differs("entry type"),
    }
    Ok(())
}

fn corrupt(e: io::Error) -> ReleaseError {
    ReleaseError::Corrupt(e.to_string())
}

/// Everything `build` needs besides the files.
#[derive(Debug)]
pub struct BuildOptions<'a> {
    pub version: semver::Version,
    pub from: &'a Path,
    pub key: &'a SecretKey,
    pub channel: String,
    pub expires_in: Duration,
    pub platform: String,
    pub min_agent_version: semver::Version,
    pub store: &'a Path,
    /// The creation time written into the manifest.
    pub now: SystemTime,
}

/// How long a release stays installable when its builder does not say.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(90 * 86_400);

impl<'a> BuildOptions<'a> {
    /// Options with the usual defaults: channel `stable`, [`DEFAULT_EXPIRY`], this machine's
    /// platform, this version as the minimum agent version, created now.
    pub fn new(
        version: semver::Version,
        from: &'a Path,
        key: &'a SecretKey,
        store: &'a Path,
    ) -> Self {
        Self {
            version,
            from,
            key,
            channel: "stable".into(),
            expires_in: DEFAULT_EXPIRY,
            platform: host_platform(),
            min_agent_version: env!("CARGO_PKG_VERSION")
                .parse()
                .expect("the crate version is semver"),
            store,
            now: SystemTime::now(),
        }
    }
}

/// The platform this controller runs on, as manifests name it.
pub fn host_platform() -> String {
    format!("linux-{}", std::env::consts::ARCH)
}

/// Builds and signs a bundle of `opts.from` into the store as `<version>.bundle`, with a
/// counter one above the highest in the store. The store is locked for the whole build; the
/// bundle appears under its name only once complete.
pub fn build(opts: &BuildOptions<'_>) -> Result<(PathBuf, Manifest), ReleaseError> {
    manifest::check_channel(&opts.channel)?;
    fs::create_dir_all(opts.store).map_err(|e| io_err(opts.store, e))?;
    let (from, store) = (canonical(opts.from)?, canonical(opts.store)?);
    if store.starts_with(&from) {
        return Err(ReleaseError::Source {
            path: opts.from.to_owned(),
            reason: format!(
                "the release store {} is inside it; the build would pack its own output",
                opts.store.display()
            ),
        });
    }
    let lock_path = opts.store.join(".lock");
    let lock = File::create(&lock_path).map_err(|e| io_err(&lock_path, e))?;
    lock.lock().map_err(|e| io_err(&lock_path, e))?;

    let target = opts.store.join(format!("{}{BUNDLE_SUFFIX}", opts.version));
    if target.exists() {
        return Err(ReleaseError::VersionExists {
            version: opts.version.to_string(),
            path: target,
        });
    }
    let counter = list_store(opts.store)?
        .into_iter()
        .map(|item| item.map(|s| s.manifest.counter))
        .try_fold(0u64, |max, c| c.map(|c| max.max(c)))?
        .checked_add(1)
        .ok_or_else(|| {
            ReleaseError::BadManifest("the store's release counter is at its maximum".into())
        })?;

    let walked = walk(opts.from)?;
    let mut payload = tempfile::tempfile_in(opts.store).map_err(|e| io_err(opts.store, e))?;
    let (entries, payload_digest) = write_payload(opts.from, &walked, &mut payload)?;
    let created = Timestamp::from(opts.now);
    let manifest = Manifest {
        format: FORMAT,
        version: opts.version.clone(),
        counter,
        channel: opts.channel.clone(),
        created,
        expires: created.plus(opts.expires_in),
        platform: opts.platform.clone(),
        min_agent_version: opts.min_agent_version.clone(),
        payload: payload_digest,
        entries,
    };
    manifest.check()?;
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| ReleaseError::BadManifest(e.to_string()))?;
    // Every node refuses a manifest over the cap before reading it: none is built.
    let size = manifest_bytes.len() as u64;
    if size > MANIFEST_CAP {
        return Err(ReleaseError::TooLarge {
            what: "manifest",
            size,
            cap: MANIFEST_CAP,
        });
    }
    let header = Header {
        signatures: vec![Signature::create(
            opts.key,
            MANIFEST_DOMAIN,
            &manifest_bytes,
        )],
        manifest_bytes,
    };

    let out = tempfile::NamedTempFile::new_in(opts.store).map_err(|e| io_err(opts.store, e))?;
    let write = |out: &File, payload: &mut File| -> io::Result<()> {
        let mut w = io::BufWriter::with_capacity(IO_BUF, out);
        header.write_to(&mut w)?;
        w.flush()?;
        io::Seek::rewind(payload)?;
        io::copy(payload, &mut w.into_inner().map_err(|e| e.into_error())?)?;
        out.sync_all()
    };
    write(out.as_file(), &mut payload).map_err(|e| io_err(out.path(), e))?;
    out.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(|e| io_err(out.path(), e))?;
    out.persist_noclobber(&target)
        .map_err(|e| io_err(&target, e.error))?;
    Ok((target, manifest))
}

fn canonical(path: &Path) -> Result<PathBuf, ReleaseError> {
    fs::canonicalize(path).map_err(|e| io_err(path, e))
}

enum Walked {
    Dir {
        rel: String,
        mode: u32,
    },
    /// `id` is the device and inode, to notice a file swapped between the walk and the read.
    File {
        rel: String,
        mode: u32,
        size: u64,
        id: (u64, u64),
    },
    Symlink {
        rel: String,
        target: String,
    },
}

/// Lists the tree under `root` in a fixed order (sorted by path components, so parents come
/// first), refusing what a release cannot carry.
fn walk(root: &Path) -> Result<Vec<Walked>, ReleaseError> {
    let meta = fs::metadata(root).map_err(|e| io_err(root, e))?;
    if !meta.is_dir() {
        return Err(ReleaseError::Source {
            path: root.to_owned(),
            reason: "not a directory".into(),
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let name = item.map_err(|e| io_err(&dir, e))?.file_name();
            let abs = dir.join(&name);
            let name = name.into_string().map_err(|_| ReleaseError::Source {
                path: abs.clone(),
                reason: "file name is not UTF-8".into(),
            })?;
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = fs::symlink_metadata(&abs).map_err(|e| io_err(&abs, e))?;
            let kind = meta.file_type();
            let mode = meta.mode() & 0o7777;
            let source_err = |reason: String| ReleaseError::Source {
                path: abs.clone(),
                reason,
            };
            if mode & !MODE_BITS != 0 && !kind.is_symlink() {
                return Err(source_err(format!(
                    "mode {mode:o} has setuid, setgid or sticky bits"
                )));
            }
            if kind.is_dir() {
                out.push(Walked::Dir {
                    rel: rel.clone(),
                    mode,
                });
                stack.push((abs, rel));
            } else if kind.is_file() {
                out.push(Walked::File {
                    rel,
                    mode,
                    size: meta.size(),
                    id: (meta.dev(), meta.ino()),
                });
            } else if kind.is_symlink() {
                let target = fs::read_link(&abs).map_err(|e| io_err(&abs, e))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| source_err("symlink target is not UTF-8".into()))?;
                manifest::check_link(&rel, &target)?;
                out.push(Walked::Symlink { rel, target });
            } else {
                return Err(source_err(
                    "not a regular file, directory or symlink (device, FIFO or socket)".into(),
                ));
            }
        }
    }
    Ok(sort_parents_first(out))
}

/// Sorts entries by path components, which puts every directory before what it holds.
fn sort_parents_first(mut entries: Vec<Walked>) -> Vec<Walked> {
    let key = |w: &Walked| match w {
        Walked::Dir { rel, .. } | Walked::File { rel, .. } | Walked::Symlink { rel, .. } => {
            rel.split('/').map(str::to_owned).collect::<Vec<_>>()
        }
    };
    entries.sort_by_cached_key(key);
    entries
}

/// Writes the tar (zstd) payload and returns the manifest entries, hashing each file as it
/// is copied so that every byte is read once.
fn write_payload(
    root: &Path,
    walked: &[Walked],
    out: &mut File,
) -> Result<(Vec<Entry>, Payload), ReleaseError> {
    let store_err = |e: io::Error| ReleaseError::Write(e);
    let sink = Hashing::new(io::BufWriter::with_capacity(IO_BUF, out));
    let mut encoder = zstd::stream::write::Encoder::new(sink, 3).map_err(store_err)?;
    // Two workers keep compression off the reading thread; failure just means one thread.
    let _ = encoder.multithread(2);
    let mut tar = tar::Builder::new(encoder);
    let mut entries = Vec::with_capacity(walked.len());
    for w in walked {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match w {
            Walked::Dir { rel, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, rel, io::empty())
                    .map_err(store_err)?;
                entries.push(Entry::Dir {
                    path: rel.clone(),
                    mode: *mode,
                });
            }
            Walked::File {
                rel,
                mode,
                size,
                id,
            } => {
                let abs = root.join(rel);
                let file = File::open(&abs).map_err(|e| io_err(&abs, e))?;
                // The walk saw a regular file here; refuse whatever was put in its place since
                // (a symlink to outside the tree would have been followed by `open`).
                let meta = file.metadata().map_err(|e| io_err(&abs, e))?;
                if (meta.dev(), meta.ino()) != *id || !meta.is_file() {
                    return Err(ReleaseError::Source {
                        path: abs,
                        reason: "file was replaced while the release was built".into(),
                    });
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*size);
                let mut reader = Hashing::new(file.take(*size));
                tar.append_data(&mut header, rel, &mut reader)
                    .map_err(|e| io_err(&abs, e))?;
                let (_, count, sha256) = reader.finish();
                if count != *size {
                    return Err(ReleaseError::Source {
                        path: abs,
                        reason: "file changed size while it was read".into(),
                    });
                }
                entries.push(Entry::File {
                    path: rel.clone(),
                    mode: *mode,
                    size: *size,
                    sha256,
                });
            }
            Walked::Symlink { rel, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, rel, target)
                    .map_err(store_err)?;
                entries.push(Entry::Symlink {
                    path: rel.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    let encoder = tar.into_inner().map_err(store_err)?;
    let (mut file, size, sha256) = encoder.finish().map_err(store_err)?.finish();
    file.flush().map_err(store_err)?;
    Ok((entries, Payload { size, sha256 }))
}

/// Counts and hashes the bytes that pass through it, read or written.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner reader or writer, the byte count and the hex sha256.
    fn finish(self) -> (T, u64, String) {
        (self.inner, self.count, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One bundle of a store, read without verifying its signatures.
#[derive(Debug, Clone, Serialize)]
pub struct StoredRelease {
    pub path: PathBuf,
    pub size: u64,
    pub signers: Vec<PublicKey>,
    pub manifest: Manifest,
}

/// Every bundle in `store`, by counter; a bundle that cannot be read is an `Err` naming it.
pub fn list_store(store: &Path) -> Result<Vec<Result<StoredRelease, ReleaseError>>, ReleaseError> {
    let mut out = Vec::new();
    for item in fs::read_dir(store).map_err(|e| io_err(store, e))? {
        let path = item.map_err(|e| io_err(store, e))?.path();
        if !path.to_string_lossy().ends_with(BUNDLE_SUFFIX) {
            continue;
        }
        out.push(read_stored(&path).map_err(|e| ReleaseError::InFile {
            path: path.clone(),
            error: Box::new(e),
        }));
    }
    out.sort_by_key(|r| match r {
        Ok(s) => (0, s.manifest.counter, PathBuf::new()),
        Err(ReleaseError::InFile { path, .. }) => (1, 0, path.clone()),
        Err(_) => (1, 0, PathBuf::new()),
    });
    Ok(out)
}

fn read_stored(path: &Path) -> Result<StoredRelease, ReleaseError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let size = file.metadata().map_err(|e| io_err(path, e))?.len();
    let header = read_header(&mut BufReader::new(file))?;
    let manifest = header.manifest_unverified()?;
    Ok(StoredRelease {
        path: path.to_owned(),
        size,
        signers: header.signatures.iter().map(|s| s.key).collect(),
        manifest,
    })
}
