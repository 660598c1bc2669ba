//! The inode table: numbers the kernel holds, mapped to canonical virtual paths, with
//! lookup counts so `forget` releases them.

use std::collections::HashMap;

use agentfs::wire::EntryKind;

/// The root's inode number (FUSE's fixed value).
pub const ROOT: u64 = 1;

/// What mountd knows of a node without asking gatewayd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// The canonical path, e.g. `/api.openai.com/models`.
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes once a read has told it.
    pub size: Option<u64>,
    lookups: u64,
    /// The kernel may believe a size mountd did not tell (a write through the mount set
    /// it, or a reader's handle answered `getattr` with its older body's size); with no
    /// `size` and not this, the kernel was told 0.
    size_untold: bool,
}

/// Inode numbers ↔ paths.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Inode>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let root =
            Inode { path: "/".into(), kind: EntryKind::Dir, mode: 0o755, size: None, lookups: 1, size_untold: false };
        Inodes {
            by_ino: HashMap::from([(ROOT, root)]),
            by_path: HashMap::from([("/".into(), ROOT)]),
            next: super::control::FIRST_FREE_INO,
        }
    }
}

impl Inode {
    /// A node that is not in the table (the control files).
    pub fn fixed(path: String, kind: EntryKind, mode: u32, size: Option<u64>) -> Self {
        Inode { path, kind, mode, size, lookups: 1, size_untold: false }
    }
}

impl Inodes {
    /// The inode of `ino`.
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// Records a lookup of `path`: the same path keeps its number while the kernel holds it.
    /// A size from gatewayd replaces one learnt earlier; an unknown one keeps it.
    pub fn remember(&mut self, path: String, kind: EntryKind, mode: u32, size: Option<u64>) -> (u64, Inode) {
        if let Some(&ino) = self.by_path.get(&path) {
            if let Some(node) = self.by_ino.get_mut(&ino) {
                node.lookups += 1;
                if node.kind != kind {
                    node.size = None;
                }
                node.kind = kind;
                node.mode = mode;
                if size.is_some() {
                    node.size = size;
                    node.size_untold = false;
                }
                return (ino, node.clone());
            }
        }
        let ino = self.next;
        self.next += 1;
        let node = Inode { path: path.clone(), kind, mode, size, lookups: 1, size_untold: false };
        self.by_path.insert(path, ino);
        self.by_ino.insert(ino, node.clone());
        (ino, node)
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let gone = match self.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.by_ino.remove(&ino) {
                self.by_path.remove(&node.path);
            }
        }
    }

    /// Records the size learnt from a read; returns the size known before.
    pub fn set_size(&mut self, ino: u64, size: u64) -> Option<u64> {
        self.by_ino.get_mut(&ino).and_then(|node| {
            node.size_untold = false;
            node.size.replace(size)
        })
    }

    /// The size the kernel was last told of `ino` (attributes carry 0 for an unknown size);
    /// `None` when it may believe one mountd did not tell (after a write), or `ino` is unknown.
    pub fn told(&self, ino: u64) -> Option<u64> {
        let node = self.by_ino.get(&ino)?;
        if node.size_untold {
            return None;
        }
        Some(node.size.unwrap_or(0))
    }

    /// Records that the kernel may have been told another size of `ino` than the table's
    /// (a reader's handle holds an older body): until a read or lookup tells it again,
    /// [`Inodes::told`] does not vouch for it.
    pub fn doubt_size(&mut self, ino: u64) {
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.size_untold = true;
        }
    }

    /// Forgets the size of `ino`: the kernel may believe another (a write through the mount
    /// set it), so the next read must tell it again.
    pub fn unset_size(&mut self, ino: u64) {
        if let Some(node) = self.by_ino.get_mut(&ino) {
            node.size = None;
        }
        self.doubt_size(ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_until_forgotten() {
        let mut t = Inodes::default();
        let (a, _) = t.remember("/x".into(), EntryKind::Dir, 0o755, None);
        let (b, _) = t.remember("/x".into(), EntryKind::Dir, 0o755, None);
        assert_eq!(a, b);
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        let (c, _) = t.remember("/x".into(), EntryKind::Dir, 0o755, None);
        assert_ne!(a, c);
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn a_doubted_size_is_not_vouched_for_until_told_again() {
        let mut t = Inodes::default();
        let (f, _) = t.remember("/s/f".into(), EntryKind::File, 0o444, Some(10));
        assert_eq!(t.told(f), Some(10));
        t.doubt_size(f);
        assert_eq!(t.told(f), None, "a reader's handle told the kernel another size");
        t.set_size(f, 12);
        assert_eq!(t.told(f), Some(12));
        t.unset_size(f);
        assert_eq!(t.told(f), None, "written through the mount");
    }
}
