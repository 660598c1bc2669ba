//! Credentials held in memory once decrypted: a request to an upstream needs its key, and
//! reading the row and opening its ciphertext on every request is work the answer never
//! changes between two writes of the keys table. Every write through the vault (store,
//! remove, re-encryption at rotation or under a new `NKMC_ENCRYPTION_KEY`) forgets them all;
//! a lookup that raced a write is not kept. Secrets are zeroized when forgotten or evicted
//! ([`super::Secret`]). Absence is held too (an agent without a key of its own).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::Credential;

/// Most (scope, owner, domain) answers held; when full, everything is forgotten.
pub const CAPACITY: usize = 1024;

/// The key of an answer: scope, owner (empty for the pool), domain.
type Slot = (&'static str, String, String);

/// The held answers of one vault.
#[derive(Default)]
pub struct Held {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    answers: HashMap<Slot, Option<Credential>>,
    /// Bumped by every write: an answer computed under an older generation is stale.
    generation: u64,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("answers", &self.len()).finish()
    }
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The held answer for the slot, if any (`Some(None)`: known to have no key); and the
    /// generation to pass to [`Held::keep`] when it is computed.
    pub fn get(&self, scope: &'static str, owner: &str, domain: &str) -> (Option<Option<Credential>>, u64) {
        let inner = self.lock();
        let slot = (scope, owner.to_owned(), domain.to_owned());
        (inner.answers.get(&slot).cloned(), inner.generation)
    }

    /// Keeps an answer computed at `generation`, unless a write happened since.
    pub fn keep(&self, scope: &'static str, owner: &str, domain: &str, generation: u64, answer: Option<Credential>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.answers.len() >= CAPACITY {
            inner.answers.clear();
        }
        inner.answers.insert((scope, owner.to_owned(), domain.to_owned()), answer);
    }

    /// Forgets every answer (their secrets are zeroized as they drop).
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.answers.clear();
    }

    /// How many answers are held.
    pub fn len(&self) -> usize {
        self.lock().answers.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
