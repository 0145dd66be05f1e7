//! The bodies of the `cargo fuzz` targets under `fuzz/`, as plain functions of the library.
//!
//! # Why here
//!
//! `cargo fuzz` needs a nightly compiler and libFuzzer, so it runs by hand (a few minutes per
//! target, `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>`), not in the test suite. A target that
//! only existed under `fuzz/` would not even be compiled by the suite, and would rot as the
//! APIs it calls change. So each target's body is a function here (one per parser of input
//! from outside: the network, or an upload), each `fuzz/fuzz_targets/<name>.rs` is one line
//! calling it, and the suite's [`replay`] test feeds the same functions with the committed
//! seeds (`fuzz/seeds/<name>/`, also the starting corpus of `cargo fuzz run`) plus a bounded
//! number of seeded mutations of them: the suite exercises the exact fuzz bodies, with inputs
//! that are the same on every run, so a failure reproduces. A crash `cargo fuzz` finds is
//! fixed and its input added to the seeds, where the suite keeps checking it.
//!
//! Each function must not panic on any input; the assertions inside are the properties the
//! fuzzer checks (what parses prints back to something that parses, frames are 20 ms in
//! [-1, 1], decoded audio is finite).

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::audio::wav::decode_wav;
use crate::media::codec::Codec;
use crate::media::jitter::JitterConfig;
use crate::media::receiver::MediaReceiver;
use crate::media::rtcp::parse_rtcp;
use crate::sip::auth::{AllowList, DigestAuthenticator, DigestConfig};
use crate::sip::endpoint::{EndpointConfig, Event, Peer, SipEndpoint, Transport};
use crate::sip::message::{SipMessage, StreamFramer};
use crate::sip::sdp;

/// A fuzz target: its name (the `fuzz/` binary and seed directory) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("sip_message", sip_message),
    ("sip_endpoint", sip_endpoint),
    ("sdp_offer", sdp_offer),
    ("rtp_receiver", rtp_receiver),
    ("digest_header", digest_header),
    ("rtcp", rtcp),
    ("wav_upload", wav_upload),
];

/// SIP message parsing and TCP framing on arbitrary bytes: never panics, and whatever parses
/// prints back to something that parses again.
pub fn sip_message(data: &[u8]) {
    if let Ok(msg) = SipMessage::parse(data) {
        let _ = msg.validate_request();
        let _ = (msg.cseq(), msg.via_branch(), msg.from_tag(), msg.to_tag());
        let printed = msg.to_bytes();
        assert!(SipMessage::parse(&printed).is_ok());
    }
    let mut framer = StreamFramer::new();
    for chunk in data.chunks(97) {
        framer.push(chunk);
        while let Ok(Some(_)) = framer.next_message() {}
    }
}

/// The whole user agent server fed arbitrary datagrams (separated by a NUL byte), accepting
/// every call so later messages hit dialogs: never panics, whatever the sequence.
pub fn sip_endpoint(data: &[u8]) {
    let t0 = Instant::now();
    let Ok(allow) = AllowList::parse(&[]) else {
        return;
    };
    let mut ep = SipEndpoint::new(EndpointConfig::default(), None, allow, t0);
    let peer = Peer {
        transport: Transport::Udp,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 5061)),
    };
    let ip = peer.addr.ip();
    for (i, datagram) in data.split(|&b| b == 0).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 300);
        ep.handle_bytes(peer, ip, datagram, now);
        while let Some(event) = ep.poll_event() {
            if let Event::IncomingCall(call) = event {
                let local = sdp::LocalMedia {
                    address: ip,
                    rtp_port: 20000,
                    session_id: 1,
                    session_version: 1,
                };
                ep.accept(call.handle, local, now);
            }
        }
        ep.handle_timeout(now);
        while ep.poll_transmit().is_some() {}
    }
}

/// SDP offers from the network: parsing and negotiation never panic.
pub fn sdp_offer(data: &[u8]) {
    if let Ok(offer) = sdp::parse_offer(data) {
        let _ = sdp::negotiate(&offer, &Codec::ALL);
    }
}

/// A call's whole receive path fed arbitrary datagrams (separated by a 0xFE byte, one 20 ms
/// tick after each): RTP/RTCP demultiplexing, the jitter buffer, decoding, concealment and DTMF
/// never panic, and every frame is 20 ms of samples in [-1, 1].
pub fn rtp_receiver(data: &[u8]) {
    let t0 = Instant::now();
    let Ok(mut rx) = MediaReceiver::new(Codec::Pcmu, Some(101), JitterConfig::default()) else {
        return;
    };
    for (i, datagram) in data.split(|&b| b == 0xFE).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 20);
        let _ = rx.push_datagram(datagram, now);
        if let Some(frame) = rx.poll_frame(now) {
            assert_eq!(frame.len(), 160);
            assert!(frame.iter().all(|s| (-1.0..=1.0).contains(s)));
        }
    }
}

/// `Authorization` headers from the network: parsing and verification never panic.
pub fn digest_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut auth = DigestAuthenticator::with_secret(
        DigestConfig {
            realm: "voicebot".into(),
            users: vec![("trunk".into(), "secret".into())],
            nonce_ttl: Duration::from_secs(300),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
        },
        [7; 32],
    );
    let _ = auth.verify("INVITE", text, SystemTime::UNIX_EPOCH);
    let _ = auth.check(
        std::net::Ipv4Addr::LOCALHOST.into(),
        "INVITE",
        "sip:support@127.0.0.1",
        Some(text),
        SystemTime::UNIX_EPOCH,
    );
}

/// RTCP compound packets from the caller's RTP port (`media::rtcp::parse_rtcp`): a value or
/// an error, never a panic; a parsed report never holds more blocks than the bytes can carry.
pub fn rtcp(data: &[u8]) {
    if let Ok(summary) = parse_rtcp(data) {
        // A report block is 24 bytes.
        assert!(summary.reports.len() <= data.len() / 24);
    }
}

/// A tester's WAV upload (`POST /api/test/wav`, `voicebot simulate`): decoding arbitrary
/// bytes gives audio or a typed error, never a panic; decoded audio has samples, channels and
/// an accepted rate, and 8- to 24-bit samples lie in [-1, 1].
pub fn wav_upload(data: &[u8]) {
    if let Ok(wav) = decode_wav(Path::new("upload.wav"), Cursor::new(data)) {
        assert!((4_000..=192_000).contains(&wav.audio.rate));
        assert!(wav.channels > 0);
        assert!(!wav.audio.samples.is_empty());
        // 32-bit files may be IEEE float, which carry whatever values they hold; 8- to 24-bit
        // integers are scaled into range.
        if wav.bits < 32 {
            assert!(wav.audio.samples.iter().all(|s| (-1.0..=1.0).contains(s)));
        }
    }
}

/// Inputs derived from seeds by seeded mutation, the way a fuzzer's first steps would: bit
/// flips, interesting bytes and numbers, cut, duplicated or deleted ranges, splices of two
/// seeds. The same `seed` gives the same inputs.
pub struct Mutator {
    state: u64,
}

/// Numbers that break length arithmetic, as text (SIP, SDP, digest) and as bytes.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "255",
    "65535",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
];
const BYTES: &[u8] = &[
    0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, b'\r', b'\n', b' ', b':', b'"',
];

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// splitmix64: small, and the same on every platform.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    /// One mutated input from `seeds` (at least one).
    pub fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds
            .get(self.below(seeds.len()))
            .cloned()
            .unwrap_or_default();
        for _ in 0..=self.below(4) {
            let len = data.len();
            match self.below(8) {
                0 if len > 0 => {
                    let at = self.below(len);
                    data[at] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let at = self.below(len);
                    data[at] = BYTES[self.below(BYTES.len())];
                }
                2 => {
                    // A number where a number was (a length, a port, a count), or anywhere.
                    let digits: Vec<usize> =
                        (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
                    let number = NUMBERS[self.below(NUMBERS.len())].as_bytes();
                    if digits.is_empty() {
                        let at = self.below(len + 1);
                        data.splice(at..at, number.iter().copied());
                    } else {
                        let start = digits[self.below(digits.len())];
                        let end = (start..len)
                            .find(|&i| !data[i].is_ascii_digit())
                            .unwrap_or(len);
                        data.splice(start..end, number.iter().copied());
                    }
                }
                3 if len > 0 => {
                    let at = self.below(len);
                    let n = 1 + self.below((len - at).min(64));
                    data.drain(at..at + n);
                }
                4 if len > 0 => {
                    let at = self.below(len);
                    let n = 1 + self.below((len - at).min(64));
                    let copy: Vec<u8> = data[at..at + n].to_vec();
                    let to = self.below(len + 1);
                    data.splice(to..to, copy);
                }
                5 => data.truncate(self.below(len + 1)),
                6 => {
                    let other = seeds
                        .get(self.below(seeds.len()))
                        .cloned()
                        .unwrap_or_default();
                    let cut = self.below(len + 1);
                    let from = self.below(other.len() + 1);
                    data.truncate(cut);
                    data.extend_from_slice(&other[from..]);
                }
                _ => {
                    let at = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let random: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                    data.splice(at..at, random);
                }
            }
        }
        data
    }
}

/// The seeds of `target` under `dir` (`fuzz/seeds/<target>/`), sorted by file name.
pub fn seeds(dir: &Path, target: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join(target))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path())?,
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `target` on its seeds and on `mutations` mutated inputs (seeded by the target's
/// name); returns how many inputs ran. On a panic, the input that caused it is written to
/// `failures` (when given) and the panic is raised again with the file named.
pub fn replay(
    (name, body): Target,
    seed_dir: &Path,
    mutations: usize,
    failures: Option<&Path>,
) -> std::io::Result<usize> {
    let named = seeds(seed_dir, name)?;
    let corpus: Vec<Vec<u8>> = named.iter().map(|(_, data)| data.clone()).collect();
    let seed = name.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut mutator = Mutator::new(seed);
    let inputs = named
        .into_iter()
        .map(|(file, data)| (format!("seed {file}"), data))
        .chain((0..mutations).map(|i| (format!("mutation {i}"), mutator.mutate(&corpus))));
    let mut ran = 0;
    for (label, data) in inputs {
        let outcome = std::panic::catch_unwind(|| body(&data));
        if let Err(panic) = outcome {
            let saved = failures.and_then(|dir| {
                let path = dir.join(format!("{name}-crash-{ran}"));
                std::fs::create_dir_all(dir).ok()?;
                std::fs::write(&path, &data).ok()?;
                Some(path)
            });
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("?");
            panic!(
                "fuzz target {name} panicked on {label} ({} bytes{}): {reason}",
                data.len(),
                saved
                    .map(|p| format!(", saved as {}", p.display()))
                    .unwrap_or_default()
            );
        }
        ran += 1;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mutations per target in the suite; `VOICEBOT_FUZZ_MUTATIONS` overrides (longer runs,
    /// with `VOICEBOT_FUZZ_TARGETS=rtcp,wav_upload` to pick targets).
    fn mutations() -> usize {
        std::env::var("VOICEBOT_FUZZ_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    }

    fn seed_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
    }

    /// The targets to replay: all, or those named in `VOICEBOT_FUZZ_TARGETS` (comma-separated).
    fn selected() -> Vec<Target> {
        let only = std::env::var("VOICEBOT_FUZZ_TARGETS").unwrap_or_default();
        let names: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        for name in &names {
            assert!(
                TARGETS.iter().any(|(t, _)| t == name),
                "VOICEBOT_FUZZ_TARGETS: no target `{name}`"
            );
        }
        TARGETS
            .iter()
            .filter(|(t, _)| names.is_empty() || names.contains(t))
            .copied()
            .collect()
    }

    #[test]
    fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
        let failures = std::env::temp_dir().join("voicebot-fuzz-failures");
        let n = mutations();
        for target in &selected() {
            let started = Instant::now();
            let seeds = seeds(&seed_dir(), target.0)
                .unwrap_or_else(|e| panic!("fuzz/seeds/{}: {e}", target.0));
            assert!(!seeds.is_empty(), "fuzz/seeds/{} holds no seed", target.0);
            let ran = replay(*target, &seed_dir(), n, Some(&failures)).expect("seeds");
            assert_eq!(ran, seeds.len() + n);
            eprintln!(
                "fuzz replay {}: {} seeds + {n} mutations in {:?}",
                target.0,
                seeds.len(),
                started.elapsed()
            );
        }
    }

    #[test]
    fn every_target_has_a_fuzz_binary_calling_its_body() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("manifest");
        for (name, _) in TARGETS {
            let file = root.join(format!("fuzz/fuzz_targets/{name}.rs"));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                text.contains(&format!("voicebot_gateway::fuzzing::{name}(")),
                "{} does not call fuzzing::{name}",
                file.display()
            );
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "fuzz/Cargo.toml has no [[bin]] {name}"
            );
        }
    }

    #[test]
    fn mutations_are_reproducible_and_varied() {
        let seeds = vec![b"Content-Length: 12\r\n".to_vec(), b"abc".to_vec()];
        let run = |seed| {
            let mut m = Mutator::new(seed);
            (0..200).map(|_| m.mutate(&seeds)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let distinct: std::collections::HashSet<Vec<u8>> = run(3).into_iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
        assert!(run(4)
            .iter()
            .any(|d| d.windows(20).any(|w| w == b"18446744073709551615")));
        // An empty corpus still gives inputs.
        let mut m = Mutator::new(5);
        for _ in 0..50 {
            let _ = m.mutate(&[]);
        }
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input_saved() {
        fn picky(data: &[u8]) {
            assert!(!data.starts_with(b"boom"), "picky");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("seeds/picky")).unwrap();
        std::fs::write(dir.path().join("seeds/picky/ok"), b"fine").unwrap();
        assert_eq!(
            replay(("picky", picky), &dir.path().join("seeds"), 10, None).unwrap(),
            11
        );
        std::fs::write(dir.path().join("seeds/picky/bad"), b"boom!").unwrap();
        let failures = dir.path().join("failures");
        let err = std::panic::catch_unwind(|| {
            replay(
                ("picky", picky),
                &dir.path().join("seeds"),
                0,
                Some(&failures),
            )
        })
        .expect_err("the panic is raised again");
        let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("seed bad"), "{message}");
        assert!(message.contains("picky"), "{message}");
        let saved = std::fs::read_dir(&failures).unwrap().count();
        assert_eq!(saved, 1);
    }
}
