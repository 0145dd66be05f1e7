//! A stranger sprays RTP at the gateway's whole RTP port range while a real caller (PJSIP's
//! pjsua2, `tests/pjsua/caller.py`) calls: loud PCMU audio and RFC 4733 event `0` (the digit
//! that asks for a human) from 127.0.0.7, starting before the call and going on until it ends.
//! The gateway must latch onto the caller only (`[media] latching`, `media::latch`): the
//! stranger receives no RTP, no digit is taken (no hand-over), the dropped datagrams are
//! counted in the call's RTP figures (so the spray did hit the call's port), and the caller
//! hears the bot's greeting.
//!
//! pjsua2 lives in a virtual environment made by scripts/deps.sh; without it the test says so
//! and passes, unless VOICEBOT_REQUIRE_PEERS is set.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call_over, pjsua_python, Gateway};

/// The gateway's RTP range in this test: five pairs, all sprayed.
const RTP_LO: u16 = 44700;
const RTP_HI: u16 = 44709;

/// An RTP packet: version 2, no CSRC, no extension.
fn rtp(pt: u8, marker: bool, seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, (u8::from(marker) << 7) | pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// What the stranger saw.
#[derive(Default)]
struct Spray {
    rounds: AtomicU64,
    sent: AtomicU64,
    /// Datagrams the gateway sent to the stranger.
    received: AtomicU64,
    stop: AtomicBool,
}

/// Sprays every port of the range every 10 ms from `socket`: a loud mu-law frame, and a new
/// telephone-event `0` (start packet) on the usual dynamic payload types; reads whatever comes
/// back.
fn spray(socket: UdpSocket, state: Arc<Spray>) {
    socket.set_nonblocking(true).expect("non-blocking");
    let loud = [0x80u8; 160]; // mu-law near full scale
    let ssrc = 0x5747_4552;
    let mut buf = [0u8; 2048];
    let mut round: u32 = 0;
    while !state.stop.load(Ordering::Relaxed) {
        let seq = round as u16;
        let ts = round.wrapping_mul(160);
        // Event 0, volume 10, duration 160: a new key press every round (new timestamp).
        let event = [0u8, 10, 0, 160];
        let dtmf_pt = [101u8, 96, 100, 120, 126][round as usize % 5];
        for port in RTP_LO..=RTP_HI {
            let to = ("127.0.0.1", port);
            for packet in [
                rtp(0, false, seq, ts, ssrc, &loud),
                rtp(dtmf_pt, true, seq, ts, ssrc, &event),
            ] {
                if socket.send_to(&packet, to).is_ok() {
                    state.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            // ICMP port-unreachable surfaces as an error, not a datagram; this is real RTP.
            if state.received.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("the stranger received a datagram from {from}");
            }
        }
        state.rounds.fetch_add(1, Ordering::Relaxed);
        round = round.wrapping_add(1);
        // The spray's own pace (a packet per port per 10 ms), not a wait for an event.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 20 ms frames of `samples` (at `rate`) louder than -30 dBFS.
fn loud_frames(samples: &[f32], rate: u32) -> usize {
    let n = (rate / 50) as usize;
    samples
        .chunks(n.max(1))
        .filter(|f| (f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32).sqrt() > 0.0316)
        .count()
}

#[test]
fn a_strangers_rtp_spray_at_call_start_neither_hears_the_bot_nor_injects_digits() {
    let Some(python) = pjsua_python() else {
        return;
    };
    let mut gw = Gateway::start(&format!("{RTP_LO}-{RTP_HI}"), &[]);
    let dir = tempfile::tempdir().unwrap();

    let stranger = UdpSocket::bind("127.0.0.7:0").expect("bind 127.0.0.7 (loopback /8)");
    let state = Arc::new(Spray::default());
    let sprayer = {
        let state = Arc::clone(&state);
        std::thread::spawn(move || spray(stranger, state))
    };
    // The spray is under way before the INVITE.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.rounds.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "the sprayer did not start");
        std::thread::sleep(Duration::from_millis(5));
    }

    // The caller listens to the greeting and hangs up after it.
    let record = dir.path().join("bot.wav");
    let summary = call_over(&python, gw.port, "udp", &record, &[], &[]);
    state.stop.store(true, Ordering::Relaxed);
    sprayer.join().expect("sprayer");
    assert_eq!(summary["connected"], true, "{summary}");
    assert!(summary.get("error").is_none(), "{summary}");

    let records = gw.records(1, Duration::from_secs(40));
    assert_eq!(records.len(), 1, "one call record");
    let r = &records[0];
    let rtp = &r["rtp"];
    let sent = state.sent.load(Ordering::Relaxed);
    let dropped = rtp["packets_from_strangers"].as_u64().unwrap_or(0);
    eprintln!(
        "stranger sent {sent} datagrams; the call dropped {dropped}; figures {rtp}; {}",
        r["remote_rtp"]
    );
    // The spray reached the call's port (else this test would prove nothing) ...
    assert!(dropped > 100, "the spray hit the call's port: {rtp}");
    // ... and the stranger heard nothing and pressed nothing.
    assert_eq!(
        state.received.load(Ordering::Relaxed),
        0,
        "the gateway sent RTP to the stranger"
    );
    assert!(
        !r["remote_rtp"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.7"),
        "the call latched onto the stranger: {}",
        r["remote_rtp"]
    );
    assert_eq!(r["dtmf"], serde_json::json!([]), "no digit taken: {r}");
    assert_ne!(r["outcome"], "escalated", "no hand-over: {r}");
    assert!(r.get("escalation").is_none_or(|e| e.is_null()), "{r}");
    // The caller's own stream was heard, and the caller heard the bot.
    assert!(rtp["packets_received"].as_u64().unwrap_or(0) > 50, "{rtp}");
    let wav = voicebot_gateway::audio::wav::read_wav(&record).expect("the caller's recording");
    let loud = loud_frames(&wav.audio.samples, wav.audio.rate);
    assert!(
        loud >= 50,
        "the caller heard at least a second of the bot's greeting: {loud} loud frames"
    );
    assert!(gw.alive());
}
