//! The voicebot's dialog: from one transcribed caller turn to the bot's answer.
//!
//! The speech pipeline hands over a transcript and its ASR confidence; the dialog decides what
//! the caller wants and what happens next. It is pure (no IO beyond loading its configuration
//! text, no clock, no randomness) so that every decision can be replayed and explained, and
//! the pieces are separate so each can be tested and replaced on its own:
//!
//! * [`normalize`]: one canonical spelling of the transcript (digits, casing, contractions);
//! * [`pattern`]: phrase patterns over stemmed words shared by the other modules;
//! * [`intent`]: intent definitions and the [`IntentClassifier`] trait with its rule-based
//!   implementation;
//! * [`embedding`]: sentence-embedding classification (all-MiniLM-L6-v2) and its hybrid with the
//!   rules;
//! * [`lookup`]: answers from a flow's data (the demo order-status source);
//! * [`slots`]: order number, name and e-mail extraction;
//! * [`emotion`]: the caller's tone in words and voice, and its trend over the call;
//! * [`tone_model`]: how upset a turn sounds by its meaning (a linear model over embeddings);
//! * [`escalation`]: when and why to hand the call to a person;
//! * [`confirm`]: the closed question for a doubtful request for a person, and its yes or no;
//! * [`prompts`]: the bot's sentences, validated against the intents;
//! * [`assets`]: intents plus prompts, loaded once and shared by all calls;
//! * [`bot`]: the per-call dialog state.

pub mod assets;
pub mod bot;
pub mod confirm;
pub mod embedding;
pub mod emotion;
pub mod escalation;
pub mod intent;
pub mod llm;
pub mod lookup;
pub mod normalize;
pub mod pattern;
pub mod prompts;
pub mod slots;
pub mod tone_model;

pub use assets::DialogAssets;
pub use bot::{Bot, BotTurn, CallerTurn};
pub use embedding::{load_hybrid, EmbeddingClassifier, EmbeddingError, HybridClassifier};
pub use escalation::{Escalation, EscalationConfig, EscalationPolicy, EscalationReason};
pub use intent::{IntentClassifier, IntentMatch, MeaningTone, RuleClassifier, NONE_INTENT};
