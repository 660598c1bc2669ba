//! The master key given in the environment: `NKMC_ENCRYPTION_KEY` (and, to move rows from
//! a previous key, `NKMC_ENCRYPTION_KEY_OLD`).
//!
//! The value is 32 bytes written either as 64 hexadecimal digits (`openssl rand -hex 32`) or
//! as standard padded base64, 44 characters (`openssl rand -base64 32`). Anything else is
//! refused with a message that says how to make one; the value itself is never echoed.

use zeroize::Zeroizing;

use super::blob::KEY_LEN;
use super::VaultError;

/// The variable that holds the master key.
pub const VAR: &str = "NKMC_ENCRYPTION_KEY";
/// The variable that holds the previous master key while rows move to a new one.
pub const OLD_VAR: &str = "NKMC_ENCRYPTION_KEY_OLD";

/// Reads `var` from the environment: `None` when unset or empty.
pub fn from_env(var: &str) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>, VaultError> {
    let Some(value) = std::env::var_os(var) else { return Ok(None) };
    let value = Zeroizing::new(value.into_string().map_err(|_| invalid(var, "is not valid text"))?);
    if value.trim().is_empty() {
        return Ok(None);
    }
    parse(var, value.trim()).map(Some)
}

fn invalid(var: &str, why: &str) -> VaultError {
    VaultError::EnvKey(format!(
        "{var} {why}; it must be 32 bytes as 64 hex digits (`openssl rand -hex 32`) or as base64 \
         (`openssl rand -base64 32`)"
    ))
}

/// Decodes a key written as 64 hex digits or 44 characters of padded base64.
pub fn parse(var: &str, text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            key[i] = (hex_digit(pair[0]) << 4) | hex_digit(pair[1]);
        }
        return Ok(key);
    }
    let decoded = decode_base64(text).ok_or_else(|| invalid(var, "is neither 64 hex digits nor base64"))?;
    if decoded.len() != KEY_LEN {
        return Err(invalid(var, &format!("decodes to {} bytes", decoded.len())));
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Strict standard base64 with padding (RFC 4648 §4).
fn decode_base64(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() & 3 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() / 4 * 3));
    let last = bytes.len() / 4 - 1;
    for (i, quad) in bytes.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i != last) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // Bits beyond the last full byte must be zero (one encoding per value).
        if three[3 - pad..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_give_the_same_key() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let b64 = "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=";
        assert_eq!(*parse(VAR, hex).unwrap(), *parse(VAR, b64).unwrap());
        assert_eq!(parse(VAR, hex).unwrap()[31], 0xff);
    }

    #[test]
    fn anything_else_is_refused_without_echoing_it() {
        for bad in [
            "short",
            "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8",      // unpadded
            "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v9=",     // non-zero trailing bits
            "ABEiM0RVZneImaq7zN3u_wARIjNEVWZ3iJmqu8zd7v8=",     // URL-safe alphabet
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 36 bytes
            "g0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ] {
            let err = parse(VAR, bad).unwrap_err().to_string();
            assert!(err.contains("openssl rand -hex 32") && !err.contains(bad), "{bad}: {err}");
        }
    }
}
