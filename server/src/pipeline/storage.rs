//! Paths on shared storage: a flow names files relative to it, and nothing it names may lead
//! outside, neither by `..`, nor by an absolute path, nor through a symbolic link. Refusals
//! are `StorageError`s.
//!
//! Checking a path and then opening it by name would leave a window in which a directory of
//! it is swapped for a link to elsewhere. So a path is never opened by name: `Dir::walk`
//! opens shared storage's root and each directory of the path inside the one before
//! (`openat` with `O_PATH | O_NOFOLLOW`, checked to be a directory on the descriptor, making
//! a missing one with `mkdirat` first when asked), and the file is opened inside the last
//! one, again with `O_NOFOLLOW`.
//! No symbolic link under the root is ever followed. New files are written under a
//! temporary name no earlier run used (`O_CREAT | O_EXCL`) and renamed in the same
//! directory (`Staged`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::pipeline::error::{PipelineError, StorageError};

/// Checks the text of a relative path (no file system access).
pub fn check_relative(path: &str) -> Result<(), StorageError> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(StorageError::Absolute {
            path: path.to_owned(),
        });
    }
    if path.contains('\0') {
        return Err(StorageError::NulByte);
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(StorageError::LeavesStorage {
                    path: path.to_owned(),
                });
            }
        }
    }
    if p.file_name().is_none() {
        return Err(StorageError::NoFileName {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The directory that holds a path on shared storage, opened by walking down from the root,
/// and the file's name in it.
pub struct Dir {
    fd: OwnedFd,
    name: OsString,
    /// The path as the flow names it, for messages.
    path: String,
}

/// Each directory is held by an `O_PATH` descriptor opened without following a link: what
/// it names is then checked on the descriptor itself (`fstat`), so a link swapped in between
/// cannot be mistaken for the directory, nor the other way round.
const PATH_FLAGS: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl Dir {
    /// Opens the directory of `path` under `base` one component at a time, never following
    /// a symbolic link; with `create`, a missing directory is made inside the one just
    /// opened (so never anywhere else).
    pub fn walk(base: &Path, path: &str, create: bool) -> Result<Dir, StorageError> {
        check_relative(path)?;
        let mut fd = rustix::fs::open(
            base,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StorageError::Unavailable {
            base: base.to_owned(),
            error: Arc::new(e.into()),
        })?;
        let p = Path::new(path);
        let name = p.file_name().expect("checked").to_owned();
        let mut walked = std::path::PathBuf::new();
        for c in p.parent().into_iter().flat_map(Path::components) {
            let Component::Normal(c) = c else { continue };
            walked.push(c);
            let opened = match rustix::fs::openat(&fd, c, PATH_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(directory_error(path, &walked, e)),
                    }
                    rustix::fs::openat(&fd, c, PATH_FLAGS, Mode::empty())
                }
                other => other,
            };
            let next = opened.map_err(|e| directory_error(path, &walked, e))?;
            let stat = rustix::fs::fstat(&next).map_err(|e| directory_error(path, &walked, e))?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => fd = next,
                FileType::Symlink => {
                    return Err(StorageError::Symlink {
                        path: path.to_owned(),
                        link: walked.display().to_string(),
                    });
                }
                _ => return Err(directory_error(path, &walked, Errno::NOTDIR)),
            }
        }
        Ok(Dir {
            fd,
            name,
            path: path.to_owned(),
        })
    }

    /// Opens the file for reading; a symbolic link is refused, and so is anything but a
    /// regular file (a FIFO would block the open and every read): it is opened without
    /// blocking, checked, and only then made blocking.
    pub fn open_read(&self) -> Result<File, PipelineError> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, &self.name, flags, Mode::empty()) {
            Ok(fd) => fd,
            // The directory is a descriptor: no link was followed to it, so the only link
            // `O_NOFOLLOW` can have met is the file itself.
            Err(Errno::LOOP) => return Err(self.symlink().into()),
            Err(e) => return Err(PipelineError::open_source(&self.path, e.into())),
        };
        let io = |e: Errno| PipelineError::open_source(&self.path, e.into());
        let kind = match FileType::from_raw_mode(rustix::fs::fstat(&fd).map_err(io)?.st_mode) {
            FileType::RegularFile => None,
            FileType::Directory => Some("a directory"),
            FileType::Fifo => Some("a FIFO"),
            FileType::Socket => Some("a socket"),
            FileType::CharacterDevice => Some("a character device"),
            FileType::BlockDevice => Some("a block device"),
            _ => Some("not a file"),
        };
        if let Some(kind) = kind {
            return Err(StorageError::NotAFile {
                path: self.path.clone(),
                kind,
            }
            .into());
        }
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(io)?;
        rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK).map_err(io)?;
        Ok(File::from(fd))
    }

    fn symlink(&self) -> StorageError {
        StorageError::Symlink {
            path: self.path.clone(),
            link: self.path.clone(),
        }
    }

    /// Creates a new file beside the path's, under a name no other run or attempt uses
    /// (`tag`, then random bytes; `O_EXCL`, so never an existing file or link), to be renamed
    /// to the path once complete.
    pub fn stage(self, tag: &str) -> std::io::Result<Staged> {
        let mut temp = OsString::from(".");
        temp.push(&self.name);
        temp.push(format!(".tmp-{tag}-{}", crate::random_hex::<8>()?));
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, &temp, flags, Mode::from_raw_mode(0o644))?;
        Ok(Staged {
            dir: self,
            temp,
            out: Some(BufWriter::with_capacity(1 << 20, File::from(fd))),
        })
    }
}

impl Dir {
    /// The temporary files staged for this path's name in its directory, each with the tag
    /// it was staged under.
    pub fn temporaries(&self) -> std::io::Result<Vec<(OsString, String)>> {
        use std::os::unix::ffi::OsStrExt;
        let mut prefix = b".".to_vec();
        prefix.extend_from_slice(self.name.as_bytes());
        prefix.extend_from_slice(b".tmp-");
        let mut found = Vec::new();
        // `self.fd` is an `O_PATH` descriptor: listing needs one opened for reading.
        let readable = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for entry in rustix::fs::Dir::read_from(&readable)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            let Some(rest) = name.strip_prefix(prefix.as_slice()) else {
                continue;
            };
            // `<tag>-<random hex>`
            let Some(cut) = rest.iter().rposition(|&b| b == b'-') else {
                continue;
            };
            found.push((
                OsStr::from_bytes(name).to_owned(),
                String::from_utf8_lossy(&rest[..cut]).into_owned(),
            ));
        }
        Ok(found)
    }

    /// Removes a file of this directory (not following a link).
    pub fn remove(&self, name: &OsStr) -> std::io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }
}

fn directory_error(path: &str, walked: &Path, e: Errno) -> StorageError {
    StorageError::Directory {
        path: path.to_owned(),
        directory: walked.display().to_string(),
        error: Arc::new(e.into()),
    }
}

/// A file being written under its temporary name in its path's directory. `rename` puts it
/// in place; dropped before that, the temporary file is removed.
pub struct Staged {
    dir: Dir,
    temp: OsString,
    out: Option<BufWriter<File>>,
}

impl Staged {
    /// The directory it is staged in.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    pub fn out(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("open until renamed")
    }

    /// Writes out what is buffered and syncs it to disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        let out = self.out();
        out.flush()?;
        out.get_ref().sync_all()
    }

    /// Renames the (synced) file to its path, in the directory it was made in.
    pub fn rename(mut self) -> std::io::Result<()> {
        self.sync()?;
        rustix::fs::renameat(&self.dir.fd, &self.temp, &self.dir.fd, &self.dir.name)?;
        self.out = None;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = rustix::fs::unlinkat(&self.dir.fd, &self.temp, AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("in")).expect("mkdir");
        std::fs::write(dir.path().join("in/a.csv"), "a\n").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("symlink");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("in/pw")).expect("symlink");
        let walk = |p: &str| Dir::walk(dir.path(), p, false);
        assert!(walk("in/a.csv").expect("inside").open_read().is_ok());
        for (bad, why) in [
            ("/etc/passwd", "is absolute"),
            ("../x", "leaves shared storage"),
            ("in/../../x", "leaves shared storage"),
            ("", "names no file"),
        ] {
            let e = walk(bad).err().expect(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            walk("out/x.csv").err().expect("link").to_string(),
            "`out/x.csv` goes through the symbolic link `out`: no link is followed on shared storage"
        );
        assert_eq!(
            walk("in/pw")
                .expect("dir")
                .open_read()
                .expect_err("link")
                .to_string(),
            "`in/pw` goes through the symbolic link `in/pw`: no link is followed on shared storage"
        );
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("in/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        assert_eq!(
            walk("in/fifo")
                .expect("dir")
                .open_read()
                .expect_err("a FIFO")
                .to_string(),
            "`in/fifo` is not a regular file (it is a FIFO): refused"
        );
        // Creating directories stops at the link: nothing is made outside.
        assert_eq!(
            Dir::walk(dir.path(), "out/new/x.csv", true)
                .err()
                .expect("a link")
                .to_string(),
            "`out/new/x.csv` goes through the symbolic link `out`: no link is followed on shared storage"
        );
        assert_eq!(std::fs::read_dir(outside.path()).expect("ls").count(), 0);
    }

    #[test]
    fn staged_files_appear_only_when_renamed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Dir::walk(dir.path(), "a/b/out.csv", true)
            .expect("walk")
            .stage("run1-1")
            .expect("stage");
        s.out().write_all(b"x\n").expect("write");
        s.rename().expect("rename");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b/out.csv")).expect("read"),
            "x\n"
        );
        let s = Dir::walk(dir.path(), "a/b/out.csv", true)
            .expect("walk")
            .stage("run1-1")
            .expect("a second stage of the same tag gets its own name");
        drop(s);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("out.csv")],
            "no temporary file left"
        );
        let s = Dir::walk(dir.path(), "a/b/out.csv", false)
            .expect("walk")
            .stage("run7-2")
            .expect("stage");
        let temps = s.dir().temporaries().expect("list");
        assert_eq!(temps.len(), 1, "{temps:?}");
        assert_eq!(temps[0].1, "run7-2");
    }
}
