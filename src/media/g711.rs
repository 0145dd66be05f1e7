//! G.711 (ITU-T) mu-law and A-law: the two codecs every SIP phone, PBX and trunk speaks.
//! Written out rather than pulled in: the algorithm is a few lines per direction, fixed since
//! 1972, and tested here against its reference values.

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// Position (1..=7) of the highest set bit among bits 8..=14, 0 when none.
fn segment(value: i32) -> i32 {
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && value & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    exponent
}

/// Encodes one linear sample as mu-law, bit-exact with ITU-T G.191's `ulaw_compress`.
pub fn encode_ulaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample);
    let sign = if pcm < 0 {
        // One's complement, as the reference does: plain negation puts 127 negative inputs
        // that sit on a decision threshold into the neighbouring code.
        pcm = !pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(ULAW_CLIP) + ULAW_BIAS;
    let exponent = segment(pcm);
    let mantissa = (pcm >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decodes one mu-law byte.
pub fn decode_ulaw(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes one linear sample as A-law.
pub fn encode_alaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample);
    let sign = if pcm >= 0 {
        0x80
    } else {
        pcm = -pcm - 1;
        0
    };
    let (exponent, mantissa) = if pcm >= 256 {
        let e = segment(pcm);
        (e, (pcm >> (e + 3)) & 0x0F)
    } else {
        (0, pcm >> 4)
    };
    ((sign | (exponent << 4) | mantissa) as u8) ^ 0x55
}

/// Decodes one A-law byte.
pub fn decode_alaw(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let exponent = i32::from((a >> 4) & 0x07);
    let mantissa = i32::from(a & 0x0F);
    let mut magnitude = (mantissa << 4) + 8;
    if exponent != 0 {
        magnitude = (magnitude + 0x100) << (exponent - 1);
    }
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// A sample in [-1, 1] as a 16-bit linear sample (clamped).
pub fn to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// A 16-bit linear sample in [-1, 1].
pub fn to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32768.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        assert_eq!(encode_ulaw(0), 0xFF);
        assert_eq!(encode_alaw(0), 0xD5);
        assert_eq!(encode_ulaw(i16::MAX), 0x80);
        assert_eq!(encode_ulaw(i16::MIN), 0x00);
        assert_eq!(encode_alaw(i16::MAX), 0xAA);
        assert_eq!(encode_alaw(i16::MIN), 0x2A);
        assert_eq!(decode_ulaw(0xFF), 0);
        assert_eq!(decode_ulaw(0x80), 32124);
        assert_eq!(decode_ulaw(0x00), -32124);
        assert_eq!(decode_alaw(0xD5), 8);
        assert_eq!(decode_alaw(0xAA), 32256);
        assert_eq!(decode_alaw(0x2A), -32256);
    }

    #[test]
    fn every_code_round_trips() {
        for byte in 0..=255u8 {
            // 0x7F and 0xFF are both zero in mu-law (negative and positive zero).
            let u = encode_ulaw(decode_ulaw(byte));
            assert!(
                u == byte || decode_ulaw(byte) == 0,
                "mu-law {byte:#04x} -> {u:#04x}"
            );
            assert_eq!(encode_alaw(decode_alaw(byte)), byte, "A-law {byte:#04x}");
        }
    }

    /// ITU-T G.191 (Software Tools Library) `ulaw_compress`, as the reference formulates it:
    /// 14-bit magnitude (one's complement for negative samples) plus 33, segment from the
    /// leading one, complemented nibbles.
    fn reference_ulaw(x: i16) -> u8 {
        let x = i32::from(x);
        let absno = (if x < 0 { (!x) >> 2 } else { x >> 2 } + 33).min(0x1FFF);
        let mut i = absno >> 6;
        let mut segno = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        let high = 8 - segno;
        let low = 0x0F - ((absno >> segno) & 0x0F);
        let code = (high << 4) | low;
        (if x >= 0 { code | 0x80 } else { code }) as u8
    }

    /// G.191 `alaw_compress`: 12-bit magnitude (one's complement for negative samples).
    fn reference_alaw(x: i16) -> u8 {
        let x = i32::from(x);
        let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 };
        if ix > 15 {
            let mut iexp = 1;
            while ix > 16 + 15 {
                ix >>= 1;
                iexp += 1;
            }
            ix = ix - 16 + (iexp << 4);
        }
        if x >= 0 {
            ix |= 0x80;
        }
        (ix ^ 0x55) as u8
    }

    #[test]
    fn encoders_match_the_itu_reference_for_every_input() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(encode_ulaw(x), reference_ulaw(x), "mu-law {x}");
            assert_eq!(encode_alaw(x), reference_alaw(x), "A-law {x}");
        }
        // Negative thresholds where plain negation (instead of one's complement) is off by one.
        assert_eq!(encode_ulaw(-31612), 0x01);
        assert_eq!(encode_ulaw(-1), 0x7F);
    }

    #[test]
    fn quantisation_error_is_within_the_segment_step() {
        for s in (-32000i32..32000).step_by(37) {
            let s = s as i16;
            let err_u = (i32::from(decode_ulaw(encode_ulaw(s))) - i32::from(s)).abs();
            let err_a = (i32::from(decode_alaw(encode_alaw(s))) - i32::from(s)).abs();
            let step = (i32::from(s).abs() / 16).max(16);
            assert!(err_u <= step, "mu-law {s}: error {err_u}");
            assert!(err_a <= step, "A-law {s}: error {err_a}");
        }
    }
}
