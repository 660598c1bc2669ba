//! Per-token lending: a peer buys tokens in advance (a top-up of `[payments] prepaid_tokens`
//! at the rule's price per thousand, paid with x402 like any call), and each call it makes
//! uses up the tokens the upstream reports (`usage.total_tokens` in the answer, the field
//! OpenAI-style APIs give, found anywhere in the body, streamed or not). A call starts only
//! with credit left (a call may take the credit below zero once; the next one needs a
//! top-up): that is the cap per request.

use rusqlite::{params, Connection, OptionalExtension};

use super::amount;
use super::PaymentError;

/// The credit, in tokens, of `peer` for `domain` (0 when it never bought any).
pub fn tokens(conn: &Connection, peer: &str, domain: &str) -> Result<i64, rusqlite::Error> {
    Ok(conn
        .query_row("SELECT tokens FROM credit WHERE peer = ?1 AND domain = ?2", params![peer, domain], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Adds `delta` tokens (negative: uses them) to `peer`'s credit for `domain`.
pub fn add(conn: &Connection, peer: &str, domain: &str, delta: i64) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO credit (peer, domain, tokens) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer, domain) DO UPDATE SET tokens = tokens + ?3",
        params![peer, domain, delta],
    )?;
    Ok(())
}

/// The price of a top-up of `tokens` at `per_thousand` (a decimal of the asset's unit), in
/// atomic units, rounded up.
pub fn top_up_price(per_thousand: &str, tokens: u64, decimals: u32) -> Result<u128, PaymentError> {
    let unit = amount::to_atomic(per_thousand, decimals)?;
    Ok(unit.saturating_mul(u128::from(tokens)).div_ceil(1000))
}

/// Finds the last `"total_tokens": N` in a body that arrives in pieces.
#[derive(Debug, Default)]
pub struct TokenMeter {
    tail: Vec<u8>,
    last: Option<u64>,
}

const KEY: &[u8] = b"\"total_tokens\"";
/// Enough of a piece's end to hold a key, spaces and a number cut by the next piece.
const KEEP: usize = 64;

impl TokenMeter {
    /// Looks at the next piece of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.tail.extend_from_slice(chunk);
        let mut at = 0;
        let mut complete_to = 0;
        while let Some(i) = memchr::memmem::find(&self.tail[at..], KEY) {
            let start = at + i;
            let mut j = start + KEY.len();
            while self.tail.get(j).is_some_and(u8::is_ascii_whitespace) {
                j += 1;
            }
            if self.tail.get(j) != Some(&b':') {
                if j >= self.tail.len() {
                    break; // cut short: look again with the next piece
                }
                at = start + 1;
                continue;
            }
            j += 1;
            while self.tail.get(j).is_some_and(u8::is_ascii_whitespace) {
                j += 1;
            }
            let digits = self.tail[j..].iter().take_while(|b| b.is_ascii_digit()).count();
            if j + digits >= self.tail.len() {
                break; // the number may go on in the next piece
            }
            if digits > 0 {
                let n = std::str::from_utf8(&self.tail[j..j + digits]).ok().and_then(|s| s.parse().ok());
                self.last = n.or(self.last);
            }
            at = j + digits;
            complete_to = at;
        }
        let keep_from = self.tail.len().saturating_sub(KEEP).max(complete_to);
        self.tail.drain(..keep_from.min(self.tail.len()));
    }

    /// The body ended: the tokens it reported (0 when it reported none).
    pub fn finish(mut self) -> u64 {
        self.push(b" ");
        self.last.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_whatever_the_pieces_and_the_last_report_wins() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        for step in [1, 2, 5, 13, body.len()] {
            let mut m = TokenMeter::default();
            body.chunks(step).for_each(|c| m.push(c));
            assert_eq!(m.finish(), 42, "pieces of {step}");
        }
        let sse = b"data: {\"usage\":{\"total_tokens\" : 7}}\n\ndata: {\"usage\":{\"total_tokens\":1234}}\n\n";
        let mut m = TokenMeter::default();
        sse.chunks(3).for_each(|c| m.push(c));
        assert_eq!(m.finish(), 1234);
        let mut m = TokenMeter::default();
        m.push(br#"{"total_tokens":"many","x":"total_tokens"}"#);
        assert_eq!(m.finish(), 0);
        let mut big = TokenMeter::default();
        for _ in 0..10_000 {
            big.push(&[b'x'; 1000]);
        }
        assert!(big.tail.len() <= KEEP + 1000);
    }

    #[test]
    fn a_top_up_costs_its_tokens_at_the_price_per_thousand_rounded_up() {
        assert_eq!(top_up_price("0.002", 10_000, 6).unwrap(), 20_000);
        assert_eq!(top_up_price("0.000001", 1, 6).unwrap(), 1);
        assert!(top_up_price("-1", 1, 6).is_err());
    }
}
