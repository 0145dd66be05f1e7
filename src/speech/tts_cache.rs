//! A cache in front of any [`SpeechSynthesizer`]: the prompts a support line says on every
//! call (the greeting, "anything else?", the transfer announcement) are synthesised once and
//! then cost nothing, which matters most when many calls start at once (each call's greeting
//! would otherwise queue on the inference pool).
//!
//! - **Keyed by voice and text.** An entry is one unit of text in one [`VoiceStyle`], so two
//!   flows with different voices never share audio, and an edited prompt is a new entry.
//! - **Fixed prompts are kept.** [`CachedSynthesizer::keep`] synthesises a flow set's fixed
//!   prompts ahead of the first call (at start and after each flow change) and keeps them
//!   until the next `keep`, so replies with caller data in them never push them out.
//! - **Bounded.** By entry count and total samples; when full, the least recently used entry
//!   that is not kept goes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tts::{Speech, SpeechSynthesizer, TtsError};
use super::voice::VoiceStyle;

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
    /// Kept by the latest [`CachedSynthesizer::keep`]: never evicted.
    kept: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    samples: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

impl State {
    /// Makes room for `len` more samples in one more entry by evicting the least recently
    /// used entries that are not kept; false when the kept entries alone leave no room. Kept
    /// entries count against the samples limit only: the entry limit is the LRU's.
    fn make_room(&mut self, limits: &CacheLimits, len: usize) -> bool {
        loop {
            let unkept = self.entries.values().filter(|e| !e.kept).count();
            if unkept < limits.max_entries && self.samples + len <= limits.max_samples {
                return true;
            }
            let oldest = self
                .entries
                .iter()
                .filter(|(_, e)| !e.kept)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(k) = oldest else {
                return false;
            };
            if let Some(e) = self.entries.remove(&k) {
                self.samples -= e.speech.audio.samples.len();
            }
        }
    }
}

/// What [`CachedSynthesizer::keep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepReport {
    /// Units synthesised now.
    pub synthesized: usize,
    /// Units that were cached already.
    pub cached: usize,
    /// Units that could not be synthesised (logged) or did not fit in the limits.
    pub failed: usize,
    /// Stopped early because a newer `keep` started.
    pub superseded: bool,
    pub elapsed: Duration,
}

/// The caching synthesizer.
pub struct CachedSynthesizer {
    inner: Arc<dyn SpeechSynthesizer>,
    limits: CacheLimits,
    state: Mutex<State>,
    /// Bumped by each [`CachedSynthesizer::keep`]; an older one still running stops.
    keep_generation: AtomicU64,
}

fn key(text: &str, style: &VoiceStyle) -> String {
    format!("{}\u{1f}{}", style.exact_key(), text.trim())
}

impl CachedSynthesizer {
    pub fn new(inner: Arc<dyn SpeechSynthesizer>, limits: CacheLimits) -> Self {
        Self {
            inner,
            limits,
            state: Mutex::new(State::default()),
            keep_generation: AtomicU64::new(0),
        }
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        self.state
            .lock()
            .map(|s| (s.hits, s.misses))
            .unwrap_or((0, 0))
    }

    /// (units held, of which kept) now.
    pub fn occupancy(&self) -> (usize, usize) {
        self.state
            .lock()
            .map(|s| {
                (
                    s.entries.len(),
                    s.entries.values().filter(|e| e.kept).count(),
                )
            })
            .unwrap_or((0, 0))
    }

    /// `text` in `style` if it is cached (a hit, counted as such); never synthesises, so a
    /// caller can take a ready unit without queueing for the inference pool.
    pub fn cached(&self, text: &str, style: &VoiceStyle) -> Option<Speech> {
        let key = key(text, style);
        let mut state = self.state.lock().ok()?;
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(&key)?;
        entry.last_used = clock;
        let audio = entry.speech.audio.clone();
        state.hits += 1;
        Some(Speech {
            audio,
            elapsed: Duration::ZERO,
        })
    }

    /// Synthesises the `units` (each in its style) not cached yet, in order, and keeps all of
    /// them until the next `keep`; what an earlier `keep` kept and this one does not name
    /// becomes an ordinary entry again. Blocking (run it on its own thread); a newer `keep`
    /// stops this one between units.
    pub fn keep(&self, units: &[(String, VoiceStyle)]) -> KeepReport {
        let started = Instant::now();
        let generation = self.keep_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let wanted: HashSet<String> = units.iter().map(|(t, s)| key(t, s)).collect();
        if let Ok(mut state) = self.state.lock() {
            for (k, e) in state.entries.iter_mut() {
                e.kept = wanted.contains(k);
            }
        }
        let mut report = KeepReport::default();
        for (text, style) in units {
            if self.keep_generation.load(Ordering::SeqCst) != generation {
                report.superseded = true;
                break;
            }
            let k = key(text, style);
            if let Ok(state) = self.state.lock() {
                if state.entries.contains_key(&k) {
                    report.cached += 1;
                    continue;
                }
            }
            match self.inner.synthesize_in(text, style) {
                Ok(speech) => {
                    if self.insert(k, &speech, true) {
                        report.synthesized += 1;
                    } else {
                        tracing::warn!(text = %text, "the prompt cache is full of kept prompts; this one is synthesised at each use");
                        report.failed += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, text = %text, "cannot synthesise a fixed prompt ahead of calls");
                    report.failed += 1;
                }
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    /// Inserts (or re-marks) an entry; false when it does not fit.
    fn insert(&self, key: String, speech: &Speech, kept: bool) -> bool {
        let len = speech.audio.samples.len();
        if len > self.limits.max_samples {
            return false;
        }
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if let Some(e) = state.entries.get_mut(&key) {
            // Synthesised meanwhile by a call (or the other way round): one copy.
            e.kept |= kept;
            return true;
        }
        if !state.make_room(&self.limits, len) {
            return false;
        }
        state.clock += 1;
        let clock = state.clock;
        state.samples += len;
        state.entries.insert(
            key,
            Entry {
                speech: Arc::new(speech.clone()),
                last_used: clock,
                kept,
            },
        );
        true
    }
}

impl SpeechSynthesizer for CachedSynthesizer {
    fn engine_for(&self, style: &VoiceStyle) -> &'static str {
        self.inner.engine_for(style)
    }

    fn units(&self, text: &str) -> Vec<String> {
        self.inner.units(text)
    }

    fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError> {
        if let Some(speech) = self.cached(text, style) {
            return Ok(speech);
        }
        if let Ok(mut state) = self.state.lock() {
            state.misses += 1;
        }
        // Synthesise outside the lock: other calls' lookups never wait for a synthesis.
        let speech = self.inner.synthesize_in(text, style)?;
        self.insert(key(text, style), &speech, false);
        Ok(speech)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::wav::MonoAudio;
    use crate::speech::voice::TtsEngine;
    use std::sync::atomic::AtomicUsize;

    struct Counting(AtomicUsize);

    impl SpeechSynthesizer for Counting {
        fn synthesize_in(&self, text: &str, style: &VoiceStyle) -> Result<Speech, TtsError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if text.contains("fail") {
                return Err(TtsError::Failed {
                    program: "test".into(),
                    reason: "asked to".into(),
                });
            }
            Ok(Speech {
                audio: MonoAudio {
                    samples: vec![style.speed; text.len() * 10],
                    rate: 16_000,
                },
                elapsed: Duration::from_millis(5),
            })
        }
    }

    fn cache(max_entries: usize, max_samples: usize) -> (Arc<Counting>, CachedSynthesizer) {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = CachedSynthesizer::new(
            inner.clone(),
            CacheLimits {
                max_entries,
                max_samples,
            },
        );
        (inner, cache)
    }

    #[test]
    fn repeated_prompts_are_synthesised_once_and_the_cache_is_bounded() {
        let (inner, cache) = cache(2, 1000);
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

    #[test]
    fn each_voice_style_has_its_own_entry() {
        let (inner, cache) = cache(16, 10_000);
        let brisk = VoiceStyle {
            engine: Some(TtsEngine::Espeak),
            speed: 1.5,
            gain_db: 0.0,
        };
        let a = cache.synthesize("Hello.").unwrap();
        let b = cache.synthesize_in("Hello.", &brisk).unwrap();
        assert_ne!(a.audio.samples, b.audio.samples);
        cache.synthesize_in("Hello.", &brisk).unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn kept_prompts_survive_any_number_of_other_replies_until_the_next_keep() {
        let (inner, cache) = cache(3, 10_000);
        let style = VoiceStyle::default();
        let fixed = vec![
            ("Hello, thanks for calling.".to_string(), style),
            ("Please hold.".to_string(), style),
            ("this will fail".to_string(), style),
        ];
        let report = cache.keep(&fixed);
        assert_eq!(
            (report.synthesized, report.cached, report.failed),
            (2, 0, 1)
        );
        assert!(!report.superseded);
        for i in 0..10 {
            cache
                .synthesize(&format!("Order {i} has shipped."))
                .unwrap();
        }
        let before = inner.0.load(Ordering::SeqCst);
        let hit = cache.synthesize("Please hold.").unwrap();
        assert_eq!(hit.elapsed, Duration::ZERO);
        assert_eq!(cache.occupancy(), (5, 2), "2 kept and the 3 latest replies");
        assert_eq!(inner.0.load(Ordering::SeqCst), before);
        // A keep of the same prompts synthesises nothing; one naming others lets them go.
        assert_eq!(cache.keep(&fixed[..2]).cached, 2);
        let report = cache.keep(&[("Goodbye.".to_string(), style)]);
        assert_eq!(report.synthesized, 1);
        for i in 0..10 {
            cache.synthesize(&format!("Order {i} is late.")).unwrap();
        }
        let state = cache.state.lock().unwrap();
        assert!(state.entries.contains_key(&key("Goodbye.", &style)));
        assert!(!state.entries.contains_key(&key("Please hold.", &style)));
    }

    #[test]
    fn kept_prompts_beyond_the_samples_limit_are_not_cached_and_say_so() {
        // 40 samples per 4-character unit: room for two.
        let (_, cache) = cache(1, 100);
        let style = VoiceStyle::default();
        let fixed: Vec<_> = ["one.", "two.", "six."]
            .iter()
            .map(|t| (t.to_string(), style))
            .collect();
        let report = cache.keep(&fixed);
        assert_eq!((report.synthesized, report.failed), (2, 1));
        // A reply still works when only kept entries are left; it is just not cached.
        assert!(cache.synthesize("four.").is_ok());
        assert_eq!(cache.state.lock().unwrap().entries.len(), 2);
    }

    /// Signals each synthesis on `started` and waits for a word on `go`.
    struct Gated {
        started: Mutex<std::sync::mpsc::Sender<()>>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl SpeechSynthesizer for Gated {
        fn synthesize_in(&self, _: &str, _: &VoiceStyle) -> Result<Speech, TtsError> {
            let _ = self.started.lock().unwrap().send(());
            let _ = self.go.lock().unwrap().recv();
            Ok(Speech {
                audio: MonoAudio {
                    samples: vec![0.0; 10],
                    rate: 16_000,
                },
                elapsed: Duration::ZERO,
            })
        }
    }

    #[test]
    fn a_newer_keep_stops_an_older_one_between_units() {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let cache = Arc::new(CachedSynthesizer::new(
            Arc::new(Gated {
                started: Mutex::new(started_tx),
                go: Mutex::new(go_rx),
            }),
            CacheLimits::default(),
        ));
        let style = VoiceStyle::default();
        let old: Vec<_> = ["a.", "b.", "c."]
            .iter()
            .map(|t| (t.to_string(), style))
            .collect();
        let older = {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || cache.keep(&old))
        };
        started_rx.recv().unwrap(); // the older keep is synthesising "a."
        let newer = {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || cache.keep(&[("d.".to_string(), style)]))
        };
        // The newer keep has started (so the older one's generation is stale) and waits for
        // the gate, which the older one holds while synthesising "a.".
        started_rx.recv().unwrap();
        go_tx.send(()).unwrap(); // "a." done: the older keep stops before "b."
        go_tx.send(()).unwrap(); // "d." done
        let older = older.join().unwrap();
        assert!(older.superseded);
        assert_eq!(older.synthesized, 1);
        let newer = newer.join().unwrap();
        assert_eq!((newer.synthesized, newer.superseded), (1, false));
    }

    #[test]
    fn kept_prompts_do_not_use_up_the_entry_limit_of_other_replies() {
        let (inner, cache) = cache(2, 10_000);
        let style = VoiceStyle::default();
        let fixed: Vec<_> = ["one.", "two.", "three.", "four."]
            .iter()
            .map(|t| (t.to_string(), style))
            .collect();
        assert_eq!(cache.keep(&fixed).synthesized, 4);
        cache.synthesize("Order 1 shipped.").unwrap();
        cache.synthesize("Order 2 shipped.").unwrap();
        let before = inner.0.load(Ordering::SeqCst);
        cache.synthesize("Order 2 shipped.").unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), before, "still cached");
        assert_eq!(cache.state.lock().unwrap().entries.len(), 6);
    }
}
