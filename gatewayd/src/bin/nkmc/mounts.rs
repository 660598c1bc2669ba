//! The mounts nkmc started (state files under the data dir) and the kernel's mount table.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The source name mountd mounts with (`fuse.nkmc` or `fuse` with source `nkmc`).
const SOURCE: &str = "nkmc";

/// What nkmc remembers of a mount it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRecord {
    /// mountd's process id.
    pub pid: i32,
    /// The mount point.
    pub mountpoint: PathBuf,
}

fn record_path(dir: &Path, mountpoint: &Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    dir.join(format!("{name}.json"))
}

/// Records a started mount.
pub fn save(dir: &Path, rec: &MountRecord) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(record_path(dir, &rec.mountpoint), serde_json::to_vec(rec)?)?;
    Ok(())
}

/// Forgets a mount.
pub fn forget(dir: &Path, mountpoint: &Path) {
    let _ = std::fs::remove_file(record_path(dir, mountpoint));
}

/// The recorded mount at `mountpoint`, if any.
pub fn find(dir: &Path, mountpoint: &Path) -> Option<MountRecord> {
    let bytes = std::fs::read(record_path(dir, mountpoint)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every recorded mount.
pub fn all(dir: &Path) -> Vec<MountRecord> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// Whether a process runs.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// What is mounted at a mount point, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// The file system type (`fuse`, `fuse.nkmc`, `ext4`...).
    pub fstype: String,
    /// The mount source.
    pub source: String,
}

impl Mounted {
    /// Whether mountd mounted it.
    pub fn is_nkmc(&self) -> bool {
        self.fstype == "fuse.nkmc" || (self.fstype.starts_with("fuse") && self.source == SOURCE)
    }
}

/// The file system mounted at `mountpoint` (the topmost one), if any.
pub fn mounted(mountpoint: &Path) -> Option<Mounted> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    table.lines().rev().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let point = pre.split(' ').nth(4)?;
        if unescape(point) != want {
            return None;
        }
        let mut fields = post.split(' ');
        let fstype = fields.next()?.to_owned();
        let source = unescape(fields.next().unwrap_or_default());
        Some(Mounted { fstype, source })
    })
}

/// Whether an nkmc mount is at `mountpoint`.
pub fn is_nkmc_mount(mountpoint: &Path) -> bool {
    mounted(mountpoint).is_some_and(|m| m.is_nkmc())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// A mount whose daemon died: the kernel answers ENOTCONN.
pub fn is_stale(mountpoint: &Path) -> bool {
    matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Detaches whatever is mounted at `mountpoint` (lazy unmount).
pub fn detach(mountpoint: &Path) -> anyhow::Result<()> {
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| anyhow::anyhow!("cannot unmount {}: {e}", mountpoint.display()))
}
