//! A secret in memory: prints `<redacted>`, is zeroized on drop, has no `Serialize`.

use std::fmt;

use zeroize::Zeroizing;

/// A credential or key material.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    /// The secret itself. Every call site is a place where a secret leaves the vault.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The wrapped `Zeroizing<String>` wipes the bytes when the last copy is dropped.
impl zeroize::ZeroizeOnDrop for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}

    #[test]
    fn is_zeroized_on_drop() {
        zeroized_on_drop::<Secret>();
        zeroized_on_drop::<Zeroizing<String>>();
    }

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("CANARY_debug".into());
        assert_eq!(format!("{s:?} {s} {:?}", Some(&s)), "<redacted> <redacted> Some(<redacted>)");
    }
}
