//! The EVM side of x402's `exact` scheme: a wallet (a secp256k1 key), its address, and the
//! EIP-712 signature of an EIP-3009 `TransferWithAuthorization` — the USDC transfer a
//! facilitator submits on the payer's behalf. Nothing here talks to a chain.

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

use super::PaymentError;

/// Keccak-256 of `bytes`.
pub fn keccak(bytes: &[u8]) -> [u8; 32] {
    Keccak256::digest(bytes).into()
}

/// An EVM address, 20 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// Parses `0x` + 40 hex digits (any case; the checksum is not required).
    pub fn parse(s: &str) -> Result<Self, PaymentError> {
        let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
        let bytes = hex::decode(hex).ok().filter(|b| b.len() == 20);
        let bytes = bytes.ok_or_else(|| PaymentError::Invalid(format!("`{s}` is not an EVM address (0x + 40 hex)")))?;
        let mut a = [0u8; 20];
        a.copy_from_slice(&bytes);
        Ok(Address(a))
    }

    /// The EIP-55 mixed-case form.
    pub fn checksummed(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak(lower.as_bytes());
        let mut out = String::from("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            out.push(if c.is_ascii_alphabetic() && nibble >= 8 { c.to_ascii_uppercase() } else { c });
        }
        out
    }

    fn word(&self) -> [u8; 32] {
        let mut w = [0u8; 32];
        w[12..].copy_from_slice(&self.0);
        w
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.checksummed())
    }
}

/// The chain id of an x402 network name.
pub fn chain_id(network: &str) -> Option<u64> {
    Some(match network {
        "base" => 8453,
        "base-sepolia" => 84532,
        "avalanche" => 43114,
        "avalanche-fuji" => 43113,
        "polygon" => 137,
        "polygon-amoy" => 80002,
        "sei" => 1329,
        "sei-testnet" => 1328,
        "iotex" => 4689,
        _ => return None,
    })
}

/// The EIP-712 domain of the token contract (`extra.name`, `extra.version` of the
/// requirements).
#[derive(Debug, Clone)]
pub struct TokenDomain {
    /// The token's EIP-712 name (`USDC` on Base Sepolia, `USD Coin` on Base).
    pub name: String,
    /// Its EIP-712 version (`2` for USDC).
    pub version: String,
    /// The chain.
    pub chain_id: u64,
    /// The token contract.
    pub contract: Address,
}

/// An EIP-3009 transfer authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The payer.
    pub from: Address,
    /// The payee.
    pub to: Address,
    /// Atomic units of the token.
    pub value: u128,
    /// Unix seconds after which it is valid.
    pub valid_after: u64,
    /// Unix seconds before which it is valid.
    pub valid_before: u64,
    /// 32 random bytes; the token contract accepts each once.
    pub nonce: [u8; 32],
}

fn uint_word(v: u128) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[16..].copy_from_slice(&v.to_be_bytes());
    w
}

impl Transfer {
    /// The EIP-712 digest the payer signs.
    pub fn digest(&self, domain: &TokenDomain) -> [u8; 32] {
        let domain_type = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
        let mut d = Vec::with_capacity(32 * 5);
        d.extend_from_slice(&domain_type);
        d.extend_from_slice(&keccak(domain.name.as_bytes()));
        d.extend_from_slice(&keccak(domain.version.as_bytes()));
        d.extend_from_slice(&uint_word(u128::from(domain.chain_id)));
        d.extend_from_slice(&domain.contract.word());
        let separator = keccak(&d);
        let ty = keccak(
            b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
        );
        let mut s = Vec::with_capacity(32 * 7);
        s.extend_from_slice(&ty);
        s.extend_from_slice(&self.from.word());
        s.extend_from_slice(&self.to.word());
        s.extend_from_slice(&uint_word(self.value));
        s.extend_from_slice(&uint_word(u128::from(self.valid_after)));
        s.extend_from_slice(&uint_word(u128::from(self.valid_before)));
        s.extend_from_slice(&self.nonce);
        let mut m = Vec::with_capacity(66);
        m.extend_from_slice(b"\x19\x01");
        m.extend_from_slice(&separator);
        m.extend_from_slice(&keccak(&s));
        keccak(&m)
    }
}

/// A payer's key. Its `Debug` never shows the key.
pub struct Wallet {
    key: SigningKey,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet").field("address", &self.address().to_string()).finish()
    }
}

impl Wallet {
    /// From the private key as hex (`0x` optional).
    pub fn from_hex(hex_key: &str) -> Result<Self, PaymentError> {
        let hex_key = hex_key.trim();
        let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
        let bytes = Zeroizing::new(
            hex::decode(hex_key)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| PaymentError::Invalid("a wallet key is 32 bytes as 64 hex digits".into()))?,
        );
        let key = SigningKey::from_slice(&bytes)
            .map_err(|_| PaymentError::Invalid("the wallet key is not a valid secp256k1 key".into()))?;
        Ok(Wallet { key })
    }

    /// A new key from the system's randomness, as hex (to store in the vault).
    pub fn generate_hex() -> Zeroizing<String> {
        let key = SigningKey::random(&mut aes_gcm::aead::OsRng);
        Zeroizing::new(hex::encode(key.to_bytes()))
    }

    /// The wallet's address.
    pub fn address(&self) -> Address {
        address_of(self.key.verifying_key())
    }

    /// The 65-byte signature (r, s, v = 27 + recovery id) of `digest`, as `0x` hex.
    pub fn sign(&self, digest: &[u8; 32]) -> Result<String, PaymentError> {
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(digest)
            .map_err(|_| PaymentError::Invalid("the wallet could not sign".into()))?;
        let mut out = sig.to_bytes().to_vec();
        out.push(27 + recid.to_byte());
        Ok(format!("0x{}", hex::encode(out)))
    }
}

fn address_of(key: &VerifyingKey) -> Address {
    let point = key.to_encoded_point(false);
    let hash = keccak(&point.as_bytes()[1..]);
    let mut a = [0u8; 20];
    a.copy_from_slice(&hash[12..]);
    Address(a)
}

/// The address that signed `digest` with `signature` (`0x` + 130 hex), if it is a valid
/// signature at all.
pub fn signer(digest: &[u8; 32], signature: &str) -> Option<Address> {
    let bytes = hex::decode(signature.strip_prefix("0x")?).ok()?;
    if bytes.len() != 65 {
        return None;
    }
    let sig = Signature::from_slice(&bytes[..64]).ok()?;
    let recid = RecoveryId::from_byte(bytes[64].checked_sub(27)?)?;
    VerifyingKey::recover_from_prehash(digest, &sig, recid).ok().map(|k| address_of(&k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector was produced with eth-account 0.14 (`Account.sign_message` of the
    /// EIP-712 typed data), the library x402's Python client signs with.
    #[test]
    fn signs_a_usdc_transfer_authorization_as_eth_account_does() {
        let wallet = Wallet::from_hex(&"11".repeat(32)).unwrap();
        assert_eq!(wallet.address().to_string(), "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A");
        let domain = TokenDomain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: chain_id("base-sepolia").unwrap(),
            contract: Address::parse("0x036CbD53842c5426634e7929541eC2318f3dCF7e").unwrap(),
        };
        let t = Transfer {
            from: wallet.address(),
            to: Address::parse("0x209693Bc6afc0C5328bA36FaF03C514EF312287C").unwrap(),
            value: 10_000,
            valid_after: 1_700_000_000,
            valid_before: 1_700_000_600,
            nonce: [0x22; 32],
        };
        let digest = t.digest(&domain);
        assert_eq!(hex::encode(digest), "e507f081b81f80eba36c7423bd372f5f8730167486e5cb6dfd4063d932c016d0");
        let sig = wallet.sign(&digest).unwrap();
        assert_eq!(
            sig,
            "0xd40903012350f28d4349e7ea2994cf9b0ffa2200273b03e50e134a7b1dbdecf34bb5f1ac669acb6f7502bdce1ccb4db5565cafc3fb59372fe834e784aafb937a1c"
        );
        assert_eq!(signer(&digest, &sig), Some(wallet.address()));
        let mut other = digest;
        other[0] ^= 1;
        assert_ne!(signer(&other, &sig), Some(wallet.address()));
        assert_eq!(signer(&digest, "0x1234"), None);
    }

    #[test]
    fn addresses_parse_strictly_and_print_with_their_checksum() {
        let a = Address::parse("0x036cbd53842c5426634e7929541ec2318f3dcf7e").unwrap();
        assert_eq!(a.to_string(), "0x036CbD53842c5426634e7929541eC2318f3dCF7e");
        for bad in
            ["0x12", "0xZZ6cbd53842c5426634e7929541ec2318f3dcf7e", "", "0x+36cbd53842c5426634e7929541ec2318f3dcf7e"]
        {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert!(Wallet::from_hex("00").is_err());
        assert!(Wallet::from_hex(&"00".repeat(32)).is_err(), "zero is not a key");
        let shown = format!("{:?}", Wallet::from_hex(&"11".repeat(32)).unwrap());
        assert!(!shown.contains(&"11".repeat(8)), "{shown}");
    }
}
