//! SDES key exchange (RFC 4568): the `a=crypto` lines of an `RTP/SAVP` offer and of our answer.
//!
//! Trunks and PBXs that encrypt media put their master key in the SDP (the signalling is
//! trusted, or runs over TLS). This module reads each offered `a=crypto` line into an
//! [`OfferedCrypto`], says why a line is unusable (a suite we lack, an MKI, several keys, a
//! session parameter), picks the first usable one in the offerer's order and writes our
//! answer's line with the same tag and a fresh key. Key bytes are never part of an error
//! message or a `Debug` output.
//!
//! Grammar (RFC 4568 section 9.1): `<tag> <crypto-suite> <key-params> [<session-params>]`,
//! key-params `inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]`, several key-params
//! joined by `;`. The gateway takes one key without MKI (the SRTP library does not do MKI);
//! a lifetime (`2^20` or a number) is accepted but not enforced: the gateway never starts a
//! rekey itself, the far end's re-INVITE does.

use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use base64::Engine as _;

use crate::media::srtp::{MasterKey, SrtpSuite};

/// The largest lifetime RFC 3711 allows for SRTP (2^48 packets).
const MAX_LIFETIME_LOG2: u32 = 48;

/// One `a=crypto` line of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedCrypto {
    /// The line's tag (1-9 digits), echoed in the answer.
    pub tag: u32,
    /// The suite name as written.
    pub suite_name: String,
    /// The suite and key, or why this line cannot be used (never containing the key).
    pub usable: Result<(SrtpSuite, MasterKey), String>,
}

/// Reads one `a=crypto` value (the text after `a=crypto:`); `Err` when it has no tag and
/// suite, the minimum for the line to be named in a refusal.
pub fn parse_crypto(value: &str) -> Result<OfferedCrypto, String> {
    let mut fields = value.split_ascii_whitespace();
    let tag = fields
        .next()
        .filter(|t| (1..=9).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u32>().ok())
        .ok_or_else(|| "the tag is not 1-9 digits".to_owned())?;
    let suite_name = fields
        .next()
        .ok_or_else(|| format!("tag {tag}: no crypto suite"))?
        .to_owned();
    let key_params = fields.next();
    let session_params: Vec<&str> = fields.collect();
    let usable = usable(&suite_name, key_params, &session_params);
    Ok(OfferedCrypto {
        tag,
        suite_name,
        usable,
    })
}

fn usable(
    suite_name: &str,
    key_params: Option<&str>,
    session_params: &[&str],
) -> Result<(SrtpSuite, MasterKey), String> {
    let suite = SrtpSuite::from_name(suite_name)
        .ok_or_else(|| format!("suite {suite_name} is not supported"))?;
    let key_params = key_params.ok_or("no key parameters")?;
    if key_params.contains(';') {
        return Err("several keys (only one inline key is supported)".into());
    }
    if let Some(param) = session_params.first() {
        // RFC 4568 6.3: a session parameter the answerer does not understand rules the line
        // out; the gateway implements none (KDR, UNENCRYPTED_SRTP, FEC_ORDER...).
        let name = param.split('=').next().unwrap_or(param);
        return Err(format!("session parameter {name} is not supported"));
    }
    let (method, info) = key_params
        .split_once(':')
        .ok_or("key parameters are not method:info")?;
    if !method.eq_ignore_ascii_case("inline") {
        return Err(format!(
            "key method {method} is not supported (only inline)"
        ));
    }
    let mut parts = info.split('|');
    let key_salt = parts.next().unwrap_or_default();
    for part in parts {
        if part.contains(':') {
            return Err("an MKI is not supported".into());
        }
        check_lifetime(part)?;
    }
    let bytes = STANDARD_PAD_INDIFFERENT
        .decode(key_salt)
        .map_err(|_| "the key is not valid base64".to_owned())?;
    let key = MasterKey::from_bytes(&bytes).ok_or_else(|| {
        format!(
            "the key and salt are {} bytes, {suite} needs {}",
            bytes.len(),
            MasterKey::LEN
        )
    })?;
    Ok((suite, key))
}

/// A lifetime is `2^N` or a decimal packet count, at most 2^48.
fn check_lifetime(text: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "lifetime {text:?} is not 2^N or a number up to 2^48"
        ))
    };
    if let Some(exp) = text.strip_prefix("2^") {
        match exp.parse::<u32>() {
            Ok(n) if n <= MAX_LIFETIME_LOG2 => Ok(()),
            _ => bad(),
        }
    } else {
        match text.parse::<u64>() {
            Ok(n) if n > 0 && n <= 1u64 << MAX_LIFETIME_LOG2 => Ok(()),
            _ => bad(),
        }
    }
}

/// The first usable line in the offerer's order (RFC 4568 section 7.1.2); else the reasons
/// every line was refused, for the 488's Warning.
pub fn choose(offered: &[OfferedCrypto]) -> Result<(u32, SrtpSuite, MasterKey), String> {
    if let Some((c, (suite, key))) = offered
        .iter()
        .find_map(|c| c.usable.as_ref().ok().map(|u| (c, u)))
    {
        return Ok((c.tag, *suite, key.clone()));
    }
    if offered.is_empty() {
        return Err("RTP/SAVP without an a=crypto line (DTLS-SRTP is not supported)".into());
    }
    Err(offered
        .iter()
        .map(|c| match &c.usable {
            Err(why) => format!("a=crypto tag {}: {why}", c.tag),
            Ok(_) => format!("a=crypto tag {}", c.tag),
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// Our `a=crypto` value: the chosen tag and suite with our key, no lifetime or MKI.
pub fn crypto_value(tag: u32, suite: SrtpSuite, key: &MasterKey) -> String {
    format!(
        "{tag} {} inline:{}",
        suite.name(),
        STANDARD.encode(key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn key30() -> String {
        b64(&(0..30).collect::<Vec<u8>>())
    }

    #[test]
    fn plain_inline_key() {
        let c = parse_crypto(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{}", key30())).unwrap();
        assert_eq!(c.tag, 1);
        let (suite, key) = c.usable.unwrap();
        assert_eq!(suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(key.as_bytes(), (0..30).collect::<Vec<u8>>().as_slice());
    }

    #[test]
    fn lifetime_is_accepted_and_mki_is_refused() {
        let k = key30();
        let with_lifetime =
            parse_crypto(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{k}|2^20")).unwrap();
        assert_eq!(
            with_lifetime.usable.unwrap().0,
            SrtpSuite::AesCm128HmacSha1_32
        );
        let decimal = parse_crypto(&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{k}|1048576"));
        assert!(decimal.unwrap().usable.is_ok());

        let with_mki =
            parse_crypto(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^20|1:32")).unwrap();
        let why = with_mki.usable.unwrap_err();
        assert!(why.contains("MKI"), "{why}");
        assert!(!why.contains(&k), "no key in the reason");

        let mki_only = parse_crypto(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|1:4")).unwrap();
        assert!(mki_only.usable.is_err());
        let bad_lifetime = parse_crypto(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^99"));
        assert!(bad_lifetime
            .unwrap()
            .usable
            .unwrap_err()
            .contains("lifetime"));
    }

    #[test]
    fn unusable_lines_say_why() {
        let k = key30();
        let cases = [
            (format!("1 AEAD_AES_256_GCM inline:{k}"), "not supported"),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k};inline:{k}"),
                "several keys",
            ),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k} KDR=1"), "KDR"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 uri:{k}"), "only inline"),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64".to_owned(),
                "base64",
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{}", b64(&[1; 16])),
                "16 bytes",
            ),
            ("1 AES_CM_128_HMAC_SHA1_80".to_owned(), "no key"),
        ];
        for (line, reason) in cases {
            let why = parse_crypto(&line).unwrap().usable.unwrap_err();
            assert!(why.contains(reason), "{line}: {why}");
        }
        assert!(parse_crypto("x AES_CM_128_HMAC_SHA1_80").is_err());
        assert!(parse_crypto("1234567890 AES_CM_128_HMAC_SHA1_80").is_err());
        assert!(parse_crypto("").is_err());
        assert!(parse_crypto("1").is_err());
    }

    #[test]
    fn choose_takes_the_first_usable_line_in_offer_order() {
        let k = key30();
        let offered: Vec<OfferedCrypto> = [
            format!("1 AEAD_AES_128_GCM inline:{k}"),
            format!("2 AES_CM_128_HMAC_SHA1_32 inline:{k}"),
            format!("3 AES_CM_128_HMAC_SHA1_80 inline:{k}"),
        ]
        .iter()
        .map(|l| parse_crypto(l).unwrap())
        .collect();
        let (tag, suite, _) = choose(&offered).unwrap();
        assert_eq!((tag, suite), (2, SrtpSuite::AesCm128HmacSha1_32));

        let why = choose(&offered[..1]).unwrap_err();
        assert!(
            why.contains("tag 1") && why.contains("AEAD_AES_128_GCM"),
            "{why}"
        );
        assert!(choose(&[]).unwrap_err().contains("without an a=crypto"));
    }

    #[test]
    fn our_line_round_trips() {
        let key = MasterKey::random();
        let value = crypto_value(7, SrtpSuite::AesCm128HmacSha1_80, &key);
        assert!(value.starts_with("7 AES_CM_128_HMAC_SHA1_80 inline:"));
        let back = parse_crypto(&value).unwrap();
        assert_eq!(back.tag, 7);
        assert_eq!(back.usable.unwrap().1, key);
    }
}
