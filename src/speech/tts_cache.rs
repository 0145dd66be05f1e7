//! A cache in front of any [`SpeechSynthesizer`]: the prompts a support line says on every
//! call (the greeting, "anything else?", the transfer announcement) are synthesised once and
//! then cost nothing, which matters most when many calls start at once (each call's greeting
//! would otherwise queue on the inference pool). Bounded by entry count and total samples, so
//! replies with caller data in them cannot grow it without limit; when full, the least recently
//! used entry goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::tts::{Speech, SpeechSynthesizer, TtsError};

/// Cache limits.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_entries: usize,
    /// Total samples held (about 4 bytes each).
    pub max_samples: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        // 256 prompts, at most ~64 MB of audio.
        Self {
            max_entries: 256,
            max_samples: 16 * 1024 * 1024,
        }
    }
}

struct Entry {
    speech: Arc<Speech>,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    samples: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

/// The caching synthesizer.
pub struct CachedSynthesizer {
    inner: Arc<dyn SpeechSynthesizer>,
    limits: CacheLimits,
    state: Mutex<State>,
}

impl CachedSynthesizer {
    pub fn new(inner: Arc<dyn SpeechSynthesizer>, limits: CacheLimits) -> Self {
        Self {
            inner,
            limits,
            state: Mutex::new(State::default()),
        }
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.state
            .lock()
            .map(|s| (s.hits, s.misses))
            .unwrap_or((0, 0))
    }
}

impl SpeechSynthesizer for CachedSynthesizer {
    fn units(&self, text: &str) -> Vec<String> {
        self.inner.units(text)
    }

    fn synthesize(&self, text: &str) -> Result<Speech, TtsError> {
        let key = text.trim().to_string();
        if let Ok(mut state) = self.state.lock() {
            state.clock += 1;
            let clock = state.clock;
            if let Some(entry) = state.entries.get_mut(&key) {
                entry.last_used = clock;
                let speech = entry.speech.clone();
                state.hits += 1;
                return Ok(Speech {
                    audio: speech.audio.clone(),
                    elapsed: Duration::ZERO,
                });
            }
            state.misses += 1;
        }
        // Synthesise outside the lock: other calls' lookups never wait for a synthesis.
        let speech = self.inner.synthesize(text)?;
        let len = speech.audio.samples.len();
        if len <= self.limits.max_samples {
            if let Ok(mut state) = self.state.lock() {
                while !state.entries.is_empty()
                    && (state.entries.len() >= self.limits.max_entries
                        || state.samples + len > self.limits.max_samples)
                {
                    let oldest = state
                        .entries
                        .iter()
                        .min_by_key(|(_, e)| e.last_used)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        if let Some(e) = state.entries.remove(&k) {
                            state.samples -= e.speech.audio.samples.len();
                        }
                    }
                }
                let clock = state.clock;
                state.samples += len;
                state.entries.insert(
                    key,
                    Entry {
                        speech: Arc::new(Speech {
                            audio: speech.audio.clone(),
                            elapsed: speech.elapsed,
                        }),
                        last_used: clock,
                    },
                );
            }
        }
        Ok(speech)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::wav::MonoAudio;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    impl SpeechSynthesizer for Counting {
        fn synthesize(&self, text: &str) -> Result<Speech, TtsError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Speech {
                audio: MonoAudio {
                    samples: vec![0.1; text.len() * 10],
                    rate: 16_000,
                },
                elapsed: Duration::from_millis(5),
            })
        }
    }

    #[test]
    fn repeated_prompts_are_synthesised_once_and_the_cache_is_bounded() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = CachedSynthesizer::new(
            inner.clone(),
            CacheLimits {
                max_entries: 2,
                max_samples: 1000,
            },
        );
        let a = cache.synthesize("Hello, thanks for calling.").unwrap();
        let b = cache.synthesize("Hello, thanks for calling.").unwrap();
        assert_eq!(a.audio.samples, b.audio.samples);
        assert_eq!(b.elapsed, Duration::ZERO);
        assert_eq!(inner.0.load(Ordering::SeqCst), 1);
        cache.synthesize("two").unwrap();
        cache.synthesize("three").unwrap(); // evicts the least recently used
        assert_eq!(cache.state.lock().unwrap().entries.len(), 2);
        cache.synthesize("Hello, thanks for calling.").unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), 4);
        assert_eq!(cache.stats(), (1, 4));
    }
}
