//! Sentence-embedding intent classification (all-MiniLM-L6-v2, pure Rust), and its hybrid with
//! the rule classifier.
//!
//! [`RuleClassifier`] recognises what its cue phrases foresaw; a caller who says "my parcel never
//! showed up" or "when do you guys close up shop" needs a model of meaning. [`SentenceEncoder`]
//! runs the sentence-transformers model all-MiniLM-L6-v2 (BERT, 6 layers, 384 dimensions) with
//! `candle` on the CPU: WordPiece tokens, the transformer, mean pooling over the attention mask,
//! L2 normalisation, exactly as sentence-transformers does for this model, so the cosine
//! similarity of two sentences is the dot product of their embeddings.
//!
//! [`EmbeddingClassifier`] embeds every example sentence of every intent once, at construction,
//! and compares each caller turn with them:
//!
//! * an intent's score is its best example similarity plus a small bonus for a second close
//!   example: `score = best + SECOND_WEIGHT * max(0, second - (best - SECOND_WINDOW))`, so one
//!   near-duplicate example decides, and two agreeing examples break near ties;
//! * below [`SIMILARITY_FLOOR`] the answer is [`NONE_INTENT`] (off-topic speech: "the weather on
//!   Mars is cold");
//! * a secondary intent (hello, thanks, yes) only wins when no primary intent comes within
//!   [`SECONDARY_MARGIN`] of it: a request beats the social words around it, as in the rule
//!   classifier;
//! * the confidence is a logistic in the winning score and its margin to the runner-up intent,
//!   `σ(14 (best − 0.45)) · σ(25 (margin − 0.08))` (see [`calibrate`]): a close paraphrase
//!   (similarity 0.65) well ahead of the rest (margin 0.2) comes out at 0.9; a vague one
//!   (0.45) or a near tie (margin 0.05) at 0.5 or less.
//!
//! [`HybridClassifier`] combines it with the [`RuleClassifier`]; the first evidence line says
//! which side decided and why:
//!
//! 1. negation first: an embedding verdict for a `negatable` intent (cancellation, complaint)
//!    that the turn negates is set aside and the embedding's next intent takes its place, since
//!    sentence embeddings barely see "not". Negated means: a cue of that intent matches with a
//!    negation at most three words before it (the rule classifier's own test), and no cue of it
//!    matches without one; when no cue of it matches at all, any negation in the turn counts
//!    ("I don't want to end my membership"). "I don't want to cancel, just check my order"
//!    stays an order question;
//! 2. a strong rule verdict (≥ [`STRONG_RULE`], a specific cue phrase) decides: critical intents
//!    and explicit requests for a person rely on cue precision. The embedding agreeing raises
//!    the confidence (`1 − (1 − r)(1 − e)`), disagreeing lowers it by up to 10 %. Exception: a
//!    strong secondary verdict (a "hello") gives way to a request the embedding recognised
//!    (confidence ≥ 0.5);
//! 3. the embedding found no close example: the rules' verdict (possibly "none") stands;
//! 4. both name the same intent: `1 − (1 − r)(1 − e)`;
//! 5. no rule matched: the embedding's verdict;
//! 6. they disagree and no cue is strong: the more confident side, its confidence times
//!    `1 − other²/2`, so a real disagreement comes out uncertain.
//!
//! Inference runs synchronously in [`IntentClassifier::classify`], on the caller's thread (candle
//! may spread a matrix product over rayon's pool, sized by `RAYON_NUM_THREADS`, while the caller
//! waits). Measured on a 2-core AMD EPYC build machine, release profile, `RAYON_NUM_THREADS=1`:
//! a short turn (7 tokens) takes about 9 ms, a long one (30 tokens) 16 ms, the rules 0.05-0.2 ms
//! of that; loading the model takes about 0.12 s and embedding the examples 0.15 s, once per
//! process.
//!
//! Model files: `python3 models/provision.py` installs `models/minilm-l6-v2.safetensors` and
//! `models/minilm-l6-v2.tokenizer.json` (see `models/manifest.toml`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};
use thiserror::Error;
use tokenizers::{Tokenizer, TruncationParams};

use super::assets::DialogAssets;
use super::intent::IntentEscalation;
use super::intent::{
    IntentClassifier, IntentMatch, IntentsFile, MeaningTone, RuleClassifier, NONE_INTENT,
};
use super::normalize::{normalize, stem};
use super::pattern::{negation_before, Pattern, Synonyms, TokenStream, NEGATORS};
use super::tone_model::{self, ToneModel};

/// The command that installs the model files.
pub const PROVISION_COMMAND: &str = "python3 models/provision.py";
/// Where provisioning puts the model weights, relative to the repository root.
pub const DEFAULT_MODEL_PATH: &str = "models/minilm-l6-v2.safetensors";
/// Where provisioning puts the tokenizer, relative to the repository root.
pub const DEFAULT_TOKENIZER_PATH: &str = "models/minilm-l6-v2.tokenizer.json";

/// Longest input in tokens (sentence-transformers' `max_seq_length` for this model); a phone
/// turn is far shorter, longer text is truncated.
const MAX_TOKENS: usize = 256;
/// Attention heads: not recorded in the weights; all-MiniLM-L6-v2 (and L12) use 12.
const ATTENTION_HEADS: usize = 12;
/// How many examples are embedded in one forward pass at construction.
const BATCH: usize = 32;

/// Best example similarity below which the classifier answers [`NONE_INTENT`].
pub const SIMILARITY_FLOOR: f32 = 0.40;
/// A secondary intent wins only when no primary intent scores within this of it.
pub const SECONDARY_MARGIN: f32 = 0.10;
/// Weight of the second-best example of an intent (see the module docs).
const SECOND_WEIGHT: f32 = 0.25;
/// A second example counts only when it is within this of the best one.
const SECOND_WINDOW: f32 = 0.15;
/// Calibration: the best score at which the similarity factor is 0.5, and its slope.
const SIM_MID: f32 = 0.45;
const SIM_SLOPE: f32 = 14.0;
/// Calibration: the margin to the runner-up at which the margin factor is 0.5, and its slope.
const MARGIN_MID: f32 = 0.08;
const MARGIN_SLOPE: f32 = 25.0;

/// A rule verdict at least this confident decides in the [`HybridClassifier`].
pub const STRONG_RULE: f32 = 0.85;
/// How many words before a cue a negation is looked for (as in the rule classifier).
const NEGATION_SCOPE: usize = 3;

/// Why the embedding model could not be loaded or run.
#[derive(Debug, Error)]
pub enum EmbeddingError {
    /// A model file does not exist.
    #[error("{}: model file not found; install it with `{PROVISION_COMMAND}`", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A model file exists but cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The weights are not a BERT sentence-embedding model in safetensors format.
    #[error(
        "{}: not a usable BERT model ({reason}); reinstall it with `{PROVISION_COMMAND}`",
        path.display()
    )]
    Model {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer file is not a Hugging Face `tokenizer.json`.
    #[error(
        "{}: not a usable tokenizer ({reason}); reinstall it with `{PROVISION_COMMAND}`",
        path.display()
    )]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Tokenising or running the model failed on some text.
    #[error("cannot embed {text:?}: {reason}")]
    Inference {
        /// The text.
        text: String,
        /// What went wrong.
        reason: String,
    },
}

/// all-MiniLM-L6-v2 (or another BERT sentence-transformers model with mean pooling): text in,
/// unit-length embedding out.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
}

impl fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

fn check_exists(path: &Path) -> Result<(), EmbeddingError> {
    if path.exists() {
        Ok(())
    } else {
        Err(EmbeddingError::Missing {
            path: path.to_path_buf(),
        })
    }
}

/// The BERT configuration read off the tensor shapes (the safetensors file carries no config).
fn infer_config(tensors: &HashMap<String, Tensor>) -> Result<Config, String> {
    let dims = |name: &str| -> Result<Vec<usize>, String> {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| format!("tensor `{name}` is missing"))
    };
    let matrix = |name: &str| -> Result<(usize, usize), String> {
        match dims(name)?.as_slice() {
            [rows, cols] => Ok((*rows, *cols)),
            other => Err(format!(
                "tensor `{name}` has shape {other:?}, expected a matrix"
            )),
        }
    };
    let (vocab_size, hidden_size) = matrix("embeddings.word_embeddings.weight")?;
    let (max_position_embeddings, _) = matrix("embeddings.position_embeddings.weight")?;
    let (type_vocab_size, _) = matrix("embeddings.token_type_embeddings.weight")?;
    let (intermediate_size, _) = matrix("encoder.layer.0.intermediate.dense.weight")?;
    let num_hidden_layers = (0..)
        .take_while(|i| {
            tensors.contains_key(&format!("encoder.layer.{i}.attention.self.query.weight"))
        })
        .count();
    if hidden_size % ATTENTION_HEADS != 0 {
        return Err(format!(
            "hidden size {hidden_size} is not divisible into {ATTENTION_HEADS} attention heads"
        ));
    }
    Ok(Config {
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads: ATTENTION_HEADS,
        intermediate_size,
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.0,
        max_position_embeddings,
        type_vocab_size,
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("bert".to_string()),
    })
}

impl SentenceEncoder {
    /// Loads the weights (`model.safetensors`) and the tokenizer (`tokenizer.json`).
    pub fn load(model: &Path, tokenizer: &Path) -> Result<Self, EmbeddingError> {
        check_exists(model)?;
        check_exists(tokenizer)?;
        let device = Device::Cpu;
        let bytes = std::fs::read(model).map_err(|source| EmbeddingError::Read {
            path: model.to_path_buf(),
            source,
        })?;
        let bad_model = |reason: String| EmbeddingError::Model {
            path: model.to_path_buf(),
            reason,
        };
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
            .map_err(|e| bad_model(e.to_string()))?;
        drop(bytes);
        // Some exports prefix every name with `bert.`.
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("bert.").map(str::to_string).unwrap_or(k), v))
            .collect();
        let config = infer_config(&tensors).map_err(bad_model)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let bert = BertModel::load(vb, &config).map_err(|e| bad_model(e.to_string()))?;

        let bad_tokenizer = |reason: String| EmbeddingError::Tokenizer {
            path: tokenizer.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(tokenizer).map_err(|source| EmbeddingError::Read {
            path: tokenizer.to_path_buf(),
            source,
        })?;
        let mut tok: Tokenizer = text.parse().map_err(|e| bad_tokenizer(format!("{e}")))?;
        // The file pads every input to 128 tokens; padding is done per batch here instead.
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: MAX_TOKENS.min(config.max_position_embeddings),
            ..Default::default()
        }))
        .map_err(|e| bad_tokenizer(format!("{e}")))?;
        if tok.get_vocab_size(true) > config.vocab_size {
            return Err(bad_tokenizer(format!(
                "its vocabulary ({} tokens) is larger than the model's ({})",
                tok.get_vocab_size(true),
                config.vocab_size
            )));
        }
        Ok(SentenceEncoder {
            model: bert,
            tokenizer: tok,
            device,
            dim: config.hidden_size,
        })
    }

    /// The embedding's length (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The unit-length embedding of one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EmbeddingError> {
        let mut out = self.embed_batch(&[text])?;
        out.pop().ok_or_else(|| EmbeddingError::Inference {
            text: text.to_string(),
            reason: "no output".into(),
        })
    }

    /// Unit-length embeddings of several texts in one forward pass (padded to the longest).
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let fail = |reason: String| EmbeddingError::Inference {
            text: texts.join(" | "),
            reason,
        };
        let mut encodings = Vec::with_capacity(texts.len());
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| fail(format!("tokenizer: {e}")))?;
            encodings.push(encoding);
        }
        let len = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; texts.len() * len];
        let mut mask = vec![0u32; texts.len() * len];
        for (row, enc) in encodings.iter().enumerate() {
            for (col, (&id, &m)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_attention_mask())
                .enumerate()
            {
                ids[row * len + col] = id;
                mask[row * len + col] = m;
            }
        }
        self.forward(texts.len(), len, ids, mask)
            .map_err(|e| fail(e.to_string()))
    }

    /// BERT, mean pooling over the attention mask, L2 normalisation.
    fn forward(
        &self,
        rows: usize,
        len: usize,
        ids: Vec<u32>,
        mask: Vec<u32>,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (rows, len, dim)
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, len, 1)
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?; // (rows, dim)
        let counts = weights.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

/// Cosine similarity of two unit vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The embedding classifier's confidence from the winning intent's score and its margin to
/// the runner-up intent: `σ(14 (best − 0.45)) · σ(25 (margin − 0.08))`, rounded to 3 decimals.
/// The similarity factor says how close the nearest example is (0.45 is a loose paraphrase,
/// 0.65 a close one), the margin factor how clearly it beats the other intents.
///
/// | best | margin | confidence |
/// | --- | --- | --- |
/// | 0.75 | 0.30 | 0.98 |
/// | 0.65 | 0.20 | 0.90 |
/// | 0.60 | 0.15 | 0.76 |
/// | 0.55 | 0.10 | 0.50 |
/// | 0.45 | 0.20 | 0.48 |
/// | 0.70 | 0.05 | 0.31 |
/// | 0.60 | 0.00 | 0.11 |
pub fn calibrate(best: f32, margin: f32) -> f32 {
    let c = sigmoid(SIM_SLOPE * (best - SIM_MID)) * sigmoid(MARGIN_SLOPE * (margin - MARGIN_MID));
    (c.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

/// One intent with its embedded examples.
struct EmbeddedIntent {
    name: String,
    secondary: bool,
    examples: Vec<(String, Vec<f32>)>,
}

/// One intent's score on one utterance.
#[derive(Debug, Clone)]
struct IntentScore {
    index: usize,
    score: f32,
    best_example: usize,
    best_sim: f32,
}

/// Intent classification by similarity to the intents' example sentences in
/// all-MiniLM-L6-v2's embedding space (see the module docs).
pub struct EmbeddingClassifier {
    encoder: Arc<SentenceEncoder>,
    intents: Vec<EmbeddedIntent>,
    /// The `[tone] upset` examples, embedded (the explanation of a tone score names the
    /// closest).
    upset: Vec<(String, Vec<f32>)>,
    /// The tone direction learnt from the upset examples against calm speech.
    tone_model: Option<ToneModel>,
}

impl fmt::Debug for EmbeddingClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddingClassifier")
            .field(
                "intents",
                &self.intents.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .field(
                "examples",
                &self.intents.iter().map(|i| i.examples.len()).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

impl EmbeddingClassifier {
    /// Loads the model and embeds every example of every intent (once).
    pub fn load(
        intents: &IntentsFile,
        model: &Path,
        tokenizer: &Path,
    ) -> Result<Self, EmbeddingError> {
        Self::new(intents, Arc::new(SentenceEncoder::load(model, tokenizer)?))
    }

    /// Embeds every example of every intent with `encoder` (which several classifiers, e.g. one
    /// per flow, may share). Examples are normalised like caller text ([`normalize`]) first, so
    /// both sides look alike.
    pub fn new(
        intents: &IntentsFile,
        encoder: Arc<SentenceEncoder>,
    ) -> Result<Self, EmbeddingError> {
        // Intent examples carry their intent's index; `[tone] upset` examples come next, with
        // the index one past the intents, and `[tone] calm` ones last.
        let upset_index = intents.intents.len();
        let calm_index = upset_index + 1;
        let texts: Vec<(usize, String, String)> = intents
            .intents
            .iter()
            .enumerate()
            .flat_map(|(i, def)| {
                def.examples
                    .iter()
                    .map(move |e| (i, e.clone(), normalize(e)))
            })
            .chain(
                intents
                    .tone
                    .upset
                    .iter()
                    .map(|e| (upset_index, e.clone(), normalize(e))),
            )
            .chain(
                intents
                    .tone
                    .calm
                    .iter()
                    .map(|e| (calm_index, e.clone(), normalize(e))),
            )
            .collect();
        let mut embedded = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            let batch: Vec<&str> = chunk.iter().map(|(_, _, n)| n.as_str()).collect();
            embedded.extend(encoder.embed_batch(&batch)?);
        }
        let mut out: Vec<EmbeddedIntent> = intents
            .intents
            .iter()
            .map(|def| EmbeddedIntent {
                name: def.name.clone(),
                secondary: def.secondary,
                examples: Vec::new(),
            })
            .collect();
        let mut upset = Vec::with_capacity(intents.tone.upset.len());
        let mut calm_extra = Vec::with_capacity(intents.tone.calm.len());
        for ((i, text, _), vector) in texts.into_iter().zip(embedded) {
            match out.get_mut(i) {
                Some(intent) => intent.examples.push((text, vector)),
                None if i == upset_index => upset.push((text, vector)),
                None => calm_extra.push(vector),
            }
        }
        // Calm speech: the requests of intents that do not hand over (a complaint or a
        // cancellation may be said in anger), and the `[tone] calm` sentences.
        let calm: Vec<&[f32]> = intents
            .intents
            .iter()
            .zip(&out)
            .filter(|(def, _)| def.escalate == IntentEscalation::No)
            .flat_map(|(_, e)| e.examples.iter().map(|(_, v)| v.as_slice()))
            .chain(calm_extra.iter().map(Vec::as_slice))
            .collect();
        // Misrecognised calm speech is calm too: word salad made of calm sentences teaches the
        // model that "unlike a routine request" is not "upset".
        let calm_texts: Vec<String> = intents
            .intents
            .iter()
            .filter(|def| def.escalate == IntentEscalation::No)
            .flat_map(|def| def.examples.iter())
            .chain(intents.tone.calm.iter())
            .map(|e| normalize(e))
            .collect();
        let salad = tone_model::word_salad(&calm_texts);
        let mut salad_vectors = Vec::with_capacity(salad.len());
        for chunk in salad.chunks(BATCH) {
            let batch: Vec<&str> = chunk.iter().map(String::as_str).collect();
            salad_vectors.extend(encoder.embed_batch(&batch)?);
        }
        let calm: Vec<&[f32]> = calm
            .into_iter()
            .chain(salad_vectors.iter().map(Vec::as_slice))
            .collect();
        let upset_vectors: Vec<&[f32]> = upset.iter().map(|(_, v)| v.as_slice()).collect();
        let tone_model = ToneModel::train(&upset_vectors, &calm);
        Ok(EmbeddingClassifier {
            encoder,
            intents: out,
            upset,
            tone_model,
        })
    }

    /// The sentence encoder.
    pub fn encoder(&self) -> &SentenceEncoder {
        &self.encoder
    }

    /// Every intent's score for an embedded utterance, best first.
    fn scores(&self, query: &[f32]) -> Vec<IntentScore> {
        let mut scores: Vec<IntentScore> = self
            .intents
            .iter()
            .enumerate()
            .map(|(index, intent)| {
                let mut sims: Vec<(usize, f32)> = intent
                    .examples
                    .iter()
                    .enumerate()
                    .map(|(k, (_, v))| (k, dot(query, v)))
                    .collect();
                sims.sort_by(|a, b| b.1.total_cmp(&a.1));
                let (best_example, best_sim) = sims.first().copied().unwrap_or((0, 0.0));
                let second = sims.get(1).map_or(0.0, |s| s.1);
                let bonus = SECOND_WEIGHT * (second - (best_sim - SECOND_WINDOW)).max(0.0);
                IntentScore {
                    index,
                    score: best_sim + bonus,
                    best_example,
                    best_sim,
                }
            })
            .collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score));
        scores
    }

    fn is_secondary(&self, s: &IntentScore) -> bool {
        self.intents.get(s.index).is_some_and(|i| i.secondary)
    }

    fn name(&self, s: &IntentScore) -> &str {
        self.intents
            .get(s.index)
            .map(|i| i.name.as_str())
            .unwrap_or(NONE_INTENT)
    }

    /// Classifies an utterance, or says why it could not be embedded.
    pub fn try_classify(&self, normalized_text: &str) -> Result<IntentMatch, EmbeddingError> {
        if normalized_text.trim().is_empty() {
            return Ok(IntentMatch::none());
        }
        let query = self.encoder.embed(normalized_text)?;
        let scores = self.scores(&query);
        let mut verdict = self.decide(&scores);
        verdict.tone = self.tone(&query, &scores)?;
        Ok(verdict)
    }

    /// How upset a turn sounds by its meaning (see [`super::tone_model`]): the tone model's
    /// probability, explained by the closest upset example. None without a tone model.
    fn tone(
        &self,
        query: &[f32],
        scores: &[IntentScore],
    ) -> Result<Option<MeaningTone>, EmbeddingError> {
        let Some(model) = &self.tone_model else {
            return Ok(None);
        };
        let score = model.probability(query);
        let Some((example, similarity)) = self
            .upset
            .iter()
            .map(|(text, v)| (text, dot(query, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return Ok(None);
        };
        let calm_similarity = scores.iter().map(|s| s.best_sim).fold(0.0f32, f32::max);
        let round = |x: f32| (x * 1000.0).round() / 1000.0;
        Ok(Some(MeaningTone {
            score: round(score.min(0.999)),
            example: example.clone(),
            similarity: round(similarity),
            calm_similarity: round(calm_similarity),
        }))
    }

    fn decide(&self, scores: &[IntentScore]) -> IntentMatch {
        let Some(first) = scores.first() else {
            return IntentMatch::none();
        };
        // A request beats the social words around it: a secondary intent wins only when no
        // primary one comes close.
        let mut best = first;
        let mut demoted = None;
        if self.is_secondary(first) {
            if let Some(primary) = scores.iter().find(|s| !self.is_secondary(s)) {
                if primary.score >= first.score - SECONDARY_MARGIN
                    && primary.score >= SIMILARITY_FLOOR
                {
                    best = primary;
                    demoted = Some(first);
                }
            }
        }
        let example = |s: &IntentScore| {
            self.intents
                .get(s.index)
                .and_then(|i| i.examples.get(s.best_example))
                .map(|(text, _)| text.as_str())
                .unwrap_or_default()
        };
        if best.score < SIMILARITY_FLOOR {
            let mut none = IntentMatch::none();
            none.evidence.push(format!(
                "nearest example \"{}\" ({}) {:.2} is below {SIMILARITY_FLOOR:.2}",
                example(best),
                self.name(best),
                best.best_sim
            ));
            return none;
        }
        // The runner-up: the best other intent; a secondary one only counts while it competes.
        let runner = scores
            .iter()
            .find(|s| s.index != best.index && (demoted.is_none() || !self.is_secondary(s)));
        let margin = runner.map_or(best.score, |r| (best.score - r.score).max(0.0));
        let confidence = calibrate(best.score, margin);
        let mut evidence = vec![format!(
            "nearest example \"{}\" ({:.2})",
            example(best),
            best.best_sim
        )];
        if best.score > best.best_sim + 0.005 {
            evidence.push(format!(
                "second example agrees: intent score {:.2}",
                best.score
            ));
        }
        if let Some(d) = demoted {
            evidence.push(format!(
                "secondary {} {:.2} gives way to the request",
                self.name(d),
                d.score
            ));
        }
        if let Some(r) = runner {
            evidence.push(format!(
                "runner-up {} {:.2} (\"{}\")",
                self.name(r),
                r.score,
                example(r)
            ));
        }
        evidence.push(format!(
            "embedding confidence {confidence:.2} from similarity {:.2}, margin {margin:.2}",
            best.score
        ));
        IntentMatch {
            intent: self.name(best).to_string(),
            confidence,
            evidence,
            tone: None,
        }
    }
}

impl IntentClassifier for EmbeddingClassifier {
    fn classify(&self, normalized_text: &str) -> IntentMatch {
        match self.try_classify(normalized_text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "embedding classifier failed");
                let mut none = IntentMatch::none();
                none.evidence.push(format!("embedding failed: {e}"));
                none
            }
        }
    }
}

/// A `negatable` intent's cue phrases, to check whether an embedding verdict for it is negated.
struct NegatableIntent {
    name: String,
    cues: Vec<Pattern>,
}

/// Rules and embedding together (see the module docs): a strong cue decides, otherwise the
/// embedding, with negation of critical intents checked by the rules' cue phrases.
pub struct HybridClassifier {
    rules: RuleClassifier,
    embedding: EmbeddingClassifier,
    synonyms: Synonyms,
    negatable: Vec<NegatableIntent>,
    secondary: Vec<String>,
}

impl fmt::Debug for HybridClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridClassifier")
            .field("embedding", &self.embedding)
            .finish_non_exhaustive()
    }
}

/// Which side's verdict the hybrid took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decider {
    Rules,
    Embedding,
}

impl HybridClassifier {
    /// Combines a rule classifier and an embedding classifier built from the same intents.
    pub fn new(
        intents: &IntentsFile,
        rules: RuleClassifier,
        embedding: EmbeddingClassifier,
    ) -> Self {
        let synonyms = Synonyms::new(&intents.synonyms).unwrap_or_default();
        let negatable = intents
            .intents
            .iter()
            .filter(|i| i.negatable)
            .map(|i| NegatableIntent {
                name: i.name.clone(),
                cues: i
                    .cues
                    .keys()
                    .filter_map(|c| Pattern::compile(c, Some(&synonyms)).ok())
                    .filter(|p| !NEGATORS.iter().any(|n| p.has_word(n)))
                    .collect(),
            })
            .collect();
        let secondary = intents
            .intents
            .iter()
            .filter(|i| i.secondary)
            .map(|i| i.name.clone())
            .collect();
        HybridClassifier {
            rules,
            embedding,
            synonyms,
            negatable,
            secondary,
        }
    }

    /// The embedding side.
    pub fn embedding(&self) -> &EmbeddingClassifier {
        &self.embedding
    }

    /// The rule side.
    pub fn rules(&self) -> &RuleClassifier {
        &self.rules
    }

    fn is_secondary(&self, intent: &str) -> bool {
        self.secondary.iter().any(|s| s == intent)
    }

    /// Why an embedding verdict for `intent` must not stand, if it must not: the intent is
    /// `negatable` and the turn negates it. A cue of the intent preceded by a negation within
    /// three words is negated ("I don't want to cancel"); a cue without one confirms the intent.
    /// With no cue to check the negation's scope, any negation in the turn sets the verdict
    /// aside (the embedding cannot tell "I want to end my membership" from its negation).
    fn negated(&self, intent: &str, normalized_text: &str) -> Option<String> {
        let def = self.negatable.iter().find(|n| n.name == intent)?;
        let stream = TokenStream::new(normalized_text, Some(&self.synonyms));
        let stems = stream.stems();
        let mut negated_cue = None;
        for pattern in &def.cues {
            for m in pattern.find_all(&stems, true) {
                match negation_before(&stems, m.start, NEGATION_SCOPE, &[]) {
                    Some(neg) => {
                        negated_cue.get_or_insert_with(|| {
                            format!(
                                "\"{}\" is negated by \"{neg}\"",
                                stream.quote(m.start, m.end)
                            )
                        });
                    }
                    None => return None,
                }
            }
        }
        if negated_cue.is_some() {
            return negated_cue;
        }
        // "I don't want your service anymore", "I no longer need it": a negation that ends
        // something is the intent itself, not its denial.
        let (anymore, more, longer) = (stem("anymore"), stem("more"), stem("longer"));
        let ceases = stems.iter().enumerate().any(|(i, s)| {
            let after = |word: &str| i > 0 && stems.get(i - 1).is_some_and(|p| *p == word);
            *s == anymore || (*s == longer && after("no")) || (*s == more && after("any"))
        });
        if ceases {
            return None;
        }
        stems
            .iter()
            .find(|s| NEGATORS.contains(s))
            .map(|neg| format!("the turn contains the negation \"{neg}\" and no cue of {intent}"))
    }

    /// Classifies an utterance, or says why the embedding side failed (the rules still ran).
    pub fn try_classify(&self, normalized_text: &str) -> Result<IntentMatch, EmbeddingError> {
        let rule = self.rules.classify(normalized_text);
        if normalized_text.trim().is_empty() {
            return Ok(rule);
        }
        let query = self.embedding.encoder.embed(normalized_text)?;
        let scores = self.embedding.scores(&query);
        let embed = self.embedding.decide(&scores);
        let mut verdict = self.combine(normalized_text, rule, embed, &scores);
        verdict.tone = self.embedding.tone(&query, &scores)?;
        Ok(verdict)
    }

    /// The hybrid verdict from both sides' (see the module docs for the policy).
    fn combine(
        &self,
        text: &str,
        rule: IntentMatch,
        embed: IntentMatch,
        scores: &[IntentScore],
    ) -> IntentMatch {
        // An embedding verdict for a negated critical intent is set aside: the embedding's best
        // other intent takes its place (unless that one is negated too).
        let mut embed = embed;
        let mut veto = None;
        if !embed.is_none() {
            if let Some(why) = self.negated(&embed.intent, text) {
                veto = Some(format!(
                    "embedding verdict {} {:.2} set aside: {why}",
                    embed.intent, embed.confidence
                ));
                let rest: Vec<IntentScore> = scores
                    .iter()
                    .filter(|s| self.embedding.name(s) != embed.intent)
                    .cloned()
                    .collect();
                embed = self.embedding.decide(&rest);
                if !embed.is_none() && self.negated(&embed.intent, text).is_some() {
                    embed = IntentMatch::none();
                }
            }
        }
        let (decider, intent, confidence, why) =
            Self::policy(&rule, &embed, |i| self.is_secondary(i));
        let mut evidence = vec![why];
        evidence.extend(veto);
        let (first, second) = match decider {
            Decider::Rules => (("rules", &rule), ("embedding", &embed)),
            Decider::Embedding => (("embedding", &embed), ("rules", &rule)),
        };
        evidence.extend(first.1.evidence.iter().map(|e| format!("{}: {e}", first.0)));
        evidence.push(format!(
            "{}: {} {:.2}",
            second.0, second.1.intent, second.1.confidence
        ));
        evidence.extend(
            second
                .1
                .evidence
                .first()
                .map(|e| format!("{}: {e}", second.0)),
        );
        IntentMatch {
            intent,
            confidence: round3(confidence),
            evidence,
            tone: None,
        }
    }

    /// Who decides, the intent, the confidence and why, from the two verdicts.
    fn policy(
        rule: &IntentMatch,
        embed: &IntentMatch,
        is_secondary: impl Fn(&str) -> bool,
    ) -> (Decider, String, f32, String) {
        let rule_strong = !rule.is_none() && rule.confidence >= STRONG_RULE;
        // A request beats the social words around it: a strong hello does not hide a request
        // the embedding recognised.
        let social_over_request = rule_strong
            && is_secondary(&rule.intent)
            && !embed.is_none()
            && !is_secondary(&embed.intent)
            && embed.confidence >= 0.5;
        if rule_strong && !social_over_request {
            let strong = format!(
                "rules decided (strong cue, {:.2} >= {STRONG_RULE:.2})",
                rule.confidence
            );
            return if embed.intent == rule.intent {
                (
                    Decider::Rules,
                    rule.intent.clone(),
                    agree(rule.confidence, embed.confidence),
                    format!("{strong}; the embedding agrees ({:.2})", embed.confidence),
                )
            } else if embed.is_none() {
                (
                    Decider::Rules,
                    rule.intent.clone(),
                    rule.confidence,
                    format!("{strong}; the embedding found no close example"),
                )
            } else {
                (
                    Decider::Rules,
                    rule.intent.clone(),
                    rule.confidence * (1.0 - 0.1 * embed.confidence),
                    format!(
                        "{strong} over the embedding's {} {:.2}",
                        embed.intent, embed.confidence
                    ),
                )
            };
        }
        if embed.is_none() {
            let why = if rule.is_none() {
                "neither rules nor embedding recognised an intent".to_string()
            } else {
                format!(
                    "rules decided ({:.2}); the embedding found no close example",
                    rule.confidence
                )
            };
            return (Decider::Rules, rule.intent.clone(), rule.confidence, why);
        }
        if embed.intent == rule.intent {
            return (
                Decider::Embedding,
                embed.intent.clone(),
                agree(rule.confidence, embed.confidence),
                format!(
                    "rules ({:.2}) and embedding ({:.2}) agree",
                    rule.confidence, embed.confidence
                ),
            );
        }
        if rule.is_none() || social_over_request {
            let why = if rule.is_none() {
                format!(
                    "embedding decided ({:.2}); no rule matched",
                    embed.confidence
                )
            } else {
                format!(
                    "embedding decided ({:.2}): a request beats the rules' {} {:.2}",
                    embed.confidence, rule.intent, rule.confidence
                )
            };
            return (
                Decider::Embedding,
                embed.intent.clone(),
                embed.confidence,
                why,
            );
        }
        // They disagree and no cue is strong: the more confident side wins, made uncertain by
        // the other: `winner · (1 − loser² / 2)`.
        let (decider, winner, loser) = if embed.confidence >= rule.confidence {
            (Decider::Embedding, embed, rule)
        } else {
            (Decider::Rules, rule, embed)
        };
        let (won, lost) = match decider {
            Decider::Rules => ("rules", "embedding's"),
            Decider::Embedding => ("embedding", "rules'"),
        };
        (
            decider,
            winner.intent.clone(),
            winner.confidence * (1.0 - 0.5 * loser.confidence * loser.confidence),
            format!(
                "{won} decided ({:.2}) over the {lost} {} {:.2}",
                winner.confidence, loser.intent, loser.confidence
            ),
        )
    }
}

/// Two independent verdicts for the same intent: `1 − (1 − a)(1 − b)`.
fn agree(a: f32, b: f32) -> f32 {
    1.0 - (1.0 - a.clamp(0.0, 1.0)) * (1.0 - b.clamp(0.0, 1.0))
}

fn round3(x: f32) -> f32 {
    (x.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

impl IntentClassifier for HybridClassifier {
    fn classify(&self, normalized_text: &str) -> IntentMatch {
        match self.try_classify(normalized_text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "embedding classifier failed; using the rules alone");
                let mut m = self.rules.classify(normalized_text);
                m.evidence.push(format!("embedding failed: {e}"));
                m
            }
        }
    }
}

/// Builds the hybrid classifier for `assets`' intents from the model files, e.g.
/// `assets.with_classifier(Box::new(load_hybrid(&assets, model, tokenizer)?))`.
pub fn load_hybrid(
    assets: &DialogAssets,
    model: &Path,
    tokenizer: &Path,
) -> Result<HybridClassifier, EmbeddingError> {
    let encoder = Arc::new(SentenceEncoder::load(model, tokenizer)?);
    hybrid_with_encoder(assets, encoder)
}

/// Like [`load_hybrid`] with an encoder loaded once and shared (several flows, one model in
/// memory): `SentenceEncoder::load` once, then this per [`DialogAssets`].
pub fn hybrid_with_encoder(
    assets: &DialogAssets,
    encoder: Arc<SentenceEncoder>,
) -> Result<HybridClassifier, EmbeddingError> {
    let intents = assets.intents();
    let embedding = EmbeddingClassifier::new(intents, encoder)?;
    Ok(HybridClassifier::new(
        intents,
        RuleClassifier::new(intents),
        embedding,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    fn repo_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// The provisioned model files; a clear failure when they are missing.
    fn model_files() -> (PathBuf, PathBuf) {
        let files = (
            repo_path(DEFAULT_MODEL_PATH),
            repo_path(DEFAULT_TOKENIZER_PATH),
        );
        for path in [&files.0, &files.1] {
            assert!(
                path.is_file(),
                "{} is missing: run `{PROVISION_COMMAND}` first (the embedding tests need the \
                 provisioned all-MiniLM-L6-v2 model)",
                path.display()
            );
        }
        files
    }

    fn assets() -> DialogAssets {
        DialogAssets::embedded().expect("embedded intents are valid")
    }

    /// Loaded once for all tests (about half a second).
    fn hybrid() -> &'static HybridClassifier {
        static HYBRID: OnceLock<HybridClassifier> = OnceLock::new();
        HYBRID.get_or_init(|| {
            let (model, tokenizer) = model_files();
            load_hybrid(&assets(), &model, &tokenizer).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    fn embedding(text: &str) -> IntentMatch {
        hybrid().embedding().classify(&normalize(text))
    }

    fn classify(text: &str) -> IntentMatch {
        hybrid().classify(&normalize(text))
    }

    /// Paraphrases of the intents in sip-config/intents.toml that are none of its examples and
    /// mostly share no cue phrase with it: the embedding alone must get them right.
    const PARAPHRASES: &[(&str, &str)] = &[
        ("My parcel never showed up.", "order_status"),
        ("The delivery is late.", "order_status"),
        ("Has my stuff been sent out yet?", "order_status"),
        ("The courier hasn't come.", "order_status"),
        ("My purchase still hasn't turned up.", "order_status"),
        (
            "I'm waiting on something I bought from you.",
            "order_status",
        ),
        ("It says dispatched but nothing came.", "order_status"),
        ("Nothing has been delivered to me yet.", "order_status"),
        ("I'm locked out.", "password_reset"),
        ("My login isn't working.", "password_reset"),
        ("The site keeps rejecting my credentials.", "password_reset"),
        ("I need to recover my account.", "password_reset"),
        (
            "My account is blocked after too many attempts.",
            "password_reset",
        ),
        ("When do you guys close?", "opening_hours"),
        ("What time do you shut tonight?", "opening_hours"),
        ("Are you around on the weekend?", "opening_hours"),
        ("What days are you available?", "opening_hours"),
        ("Are you working on Sunday mornings?", "opening_hours"),
        ("I want a real person.", "human_request"),
        ("Can I speak with an actual employee?", "human_request"),
        ("Stop the robot, get me a human.", "human_request"),
        ("I'd prefer to deal with a human.", "human_request"),
        (
            "Your service is terrible and I want to report it.",
            "complaint",
        ),
        (
            "I'm really unhappy and want to lodge a grievance.",
            "complaint",
        ),
        ("I'll be taking you to court.", "complaint"),
        ("I want to end my membership.", "cancellation"),
        ("Get me out of this contract.", "cancellation"),
        ("I want to quit my subscription.", "cancellation"),
        ("Hiya!", "greeting"),
        ("Good evening.", "greeting"),
        ("Much obliged.", "thanks"),
        ("I'm done, bye.", "goodbye"),
        ("Yup, that's correct.", "affirm"),
    ];

    /// Turns the hybrid must get right where the embedding alone does not (a cue decides).
    const CUE_DECIDED: &[(&str, &str)] = &[
        ("Put me through to somebody.", "human_request"),
        ("Cheers mate.", "thanks"),
        ("See you later.", "goodbye"),
    ];

    /// Clearly off-topic speech.
    const OFF_TOPIC: &[&str] = &[
        "The weather on Mars is cold.",
        "What's the capital of France?",
        "Blue elephants.",
        "I like turtles.",
        "My cat is called Felix.",
        "The football match was great last night.",
        "How tall is Mount Everest?",
        "I'm cooking pasta tonight.",
    ];

    fn failures(cases: &[(&str, &str)], classify: impl Fn(&str) -> IntentMatch) -> Vec<String> {
        cases
            .iter()
            .filter_map(|(text, expected)| {
                let m = classify(text);
                (m.intent != *expected).then(|| {
                    format!(
                        "{text:?}: expected {expected}, got {} {:.2} {:?}",
                        m.intent, m.confidence, m.evidence
                    )
                })
            })
            .collect()
    }

    #[test]
    fn embeddings_match_sentence_transformers() {
        let encoder = hybrid().embedding().encoder();
        assert_eq!(encoder.dim(), 384);
        let v = encoder
            .embed("This is an example sentence")
            .expect("embeds");
        // sentence-transformers' all-MiniLM-L6-v2 (PyTorch): the first five dimensions.
        let reference = [0.067_657, 0.063_496, 0.048_713, 0.079_305, 0.037_448];
        for (k, (got, want)) in v.iter().zip(reference).enumerate() {
            assert!((got - want).abs() < 1e-3, "dimension {k}: {got} vs {want}");
        }
        let norm = dot(&v, &v).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
    }

    #[test]
    fn padded_batches_embed_like_single_sentences() {
        let encoder = hybrid().embedding().encoder();
        let texts = [
            "hi",
            "my parcel never showed up and I have been waiting for three weeks now",
        ];
        let batch = encoder.embed_batch(&texts).expect("batch");
        assert_eq!(batch.len(), 2);
        for (text, b) in texts.iter().zip(&batch) {
            let single = encoder.embed(text).expect("single");
            let sim = dot(&single, b);
            assert!(sim > 0.9999, "{text:?}: batch vs single similarity {sim}");
        }
        assert!(
            dot(&batch[0], &batch[1]) < 0.9,
            "different texts look alike"
        );
    }

    #[test]
    fn embedding_generalises_to_paraphrases() {
        assert!(PARAPHRASES.len() >= 30);
        let bad = failures(PARAPHRASES, embedding);
        assert!(
            bad.is_empty(),
            "{} of {} paraphrases misclassified by the embedding:\n{}",
            bad.len(),
            PARAPHRASES.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn paraphrases_are_beyond_the_rules() {
        let intents = assets();
        let examples: BTreeSet<String> = intents
            .intents()
            .intents
            .iter()
            .flat_map(|i| &i.examples)
            .map(|e| normalize(e))
            .collect();
        for (text, _) in PARAPHRASES {
            assert!(
                !examples.contains(&normalize(text)),
                "{text:?} is an example"
            );
        }
        // The rules alone miss most of them (no intent, a wrong one, or too unsure to act on).
        let missed: Vec<&str> = PARAPHRASES
            .iter()
            .filter(|(text, expected)| {
                let m = hybrid().rules().classify(&normalize(text));
                m.intent != *expected || m.confidence < 0.5
            })
            .map(|(text, _)| *text)
            .collect();
        assert!(
            missed.len() >= 15,
            "only {} paraphrases need the embedding: {missed:?}",
            missed.len()
        );
    }

    #[test]
    fn hybrid_classifies_paraphrases_and_cue_phrases() {
        let mut bad = failures(PARAPHRASES, classify);
        bad.extend(failures(CUE_DECIDED, classify));
        assert!(bad.is_empty(), "misclassified:\n{}", bad.join("\n"));
        for (text, _) in CUE_DECIDED {
            let m = classify(text);
            assert!(
                m.evidence[0].starts_with("rules decided") || m.evidence[0].starts_with("rules ("),
                "{text:?}: {m:?}"
            );
        }
    }

    #[test]
    fn negation_keeps_critical_intents_out() {
        // The embedding alone hears "cancel my order" in this turn...
        let text = "I don't want to cancel, just check my order";
        assert_eq!(embedding(text).intent, "cancellation");
        // ... the hybrid does not.
        let m = classify(text);
        assert_eq!(m.intent, "order_status", "{m:?}");
        assert!(
            m.evidence
                .iter()
                .any(|e| e.contains("set aside") && e.contains("\"cancel\" is negated by \"not\"")),
            "{m:?}"
        );
        let cases = [
            (
                "I don't want to cancel my order, I just want to know where it is.",
                "order_status",
            ),
            (
                "I don't want a refund or to cancel, where's my parcel?",
                "order_status",
            ),
            (
                "I'm not complaining, I just want to know when you open.",
                "opening_hours",
            ),
            (
                "I'm not going to sue you, I just need my password reset.",
                "password_reset",
            ),
        ];
        let bad = failures(&cases, classify);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        for text in [
            "I don't want to cancel anything.",
            "No, I don't want to end my membership.",
        ] {
            assert_eq!(
                embedding(text).intent,
                "cancellation",
                "the embedding alone should be fooled by {text:?}"
            );
            let m = classify(text);
            assert!(
                m.intent != "cancellation" && m.confidence < 0.5,
                "{text:?}: {m:?}"
            );
        }
        // Without a negation the same meaning stands.
        assert_eq!(
            classify("I want to end my membership").intent,
            "cancellation"
        );
        // A negation that means "stop" is the intent itself, not its denial.
        for text in [
            "I don't need your broadband any more.",
            "We no longer need the membership.",
        ] {
            let m = classify(text);
            assert_eq!(m.intent, "cancellation", "{text:?}: {m:?}");
        }
    }

    #[test]
    fn tone_by_meaning_needs_no_listed_word() {
        // None of these words is in the lexicon; the meaning is upset.
        for text in [
            "Every single time I call you lot I get passed around and nothing gets done.",
            "I've rung you four times this week and still nobody has sorted it out.",
        ] {
            let m = classify(text);
            let tone = m.tone.as_ref().expect("the embedding scores tone");
            assert!(tone.score >= 0.6, "{text:?}: {tone:?}");
        }
        // Calm requests, including ones about the same topics, stay calm.
        for text in [
            "Could you tell me when my parcel will arrive?",
            "I'd like to reset my password please.",
            "What time do you open on Saturday?",
            "Thanks, that's all I needed.",
        ] {
            let m = classify(text);
            let tone = m.tone.as_ref().expect("the embedding scores tone");
            assert!(tone.score < 0.3, "{text:?}: {tone:?}");
        }
    }

    #[test]
    fn a_request_for_a_person_outranks_its_topic() {
        let m = classify("Could I talk to somebody about my delivery?");
        assert_eq!(m.intent, "human_request", "{m:?}");
        // ... and can be negated.
        let m = classify("I don't need an agent, where is my delivery?");
        assert_eq!(m.intent, "order_status", "{m:?}");
    }

    #[test]
    fn off_topic_speech_is_none() {
        for text in OFF_TOPIC {
            let e = embedding(text);
            assert!(e.is_none(), "{text:?}: {e:?}");
            assert_eq!(e.confidence, 0.0);
            assert!(e.evidence[0].contains("is below"), "{e:?}");
            let h = classify(text);
            assert!(h.is_none(), "{text:?}: {h:?}");
        }
        // Loosely related chatter is at most a guess the bot will not act on.
        let m = classify("Can you sing me a song?");
        assert!(m.is_none() || m.confidence < 0.5, "{m:?}");
        assert!(classify("").is_none());
        assert!(embedding("").is_none());
    }

    #[test]
    fn confidence_is_calibrated() {
        let clear = [
            "My parcel never showed up.",
            "I'm locked out.",
            "When do you guys close?",
            "I want to end my membership.",
            "Your service is terrible and I want to report it.",
            "I need to recover my account.",
        ];
        let ambiguous = [
            "Where is my order and I can't log in?",
            "I have a question about something.",
            "I'd like to stop being a customer.",
            "This is unacceptable, I want to escalate this.",
        ];
        let mut lowest_clear = 1.0f32;
        for text in clear {
            let (e, h) = (embedding(text), classify(text));
            assert!(e.confidence > 0.8, "embedding, {text:?}: {e:?}");
            assert!(h.confidence > 0.8, "hybrid, {text:?}: {h:?}");
            lowest_clear = lowest_clear.min(h.confidence);
        }
        for text in ambiguous {
            let h = classify(text);
            assert!(
                h.confidence < 0.6 && h.confidence < lowest_clear - 0.3,
                "{text:?} should be uncertain: {h:?}"
            );
        }
        // The mapping itself: monotone in similarity and margin, in [0, 1].
        assert!(calibrate(0.75, 0.30) > 0.95);
        assert!(calibrate(0.60, 0.15) > 0.75);
        assert!(calibrate(0.60, 0.0) < 0.2);
        assert!(calibrate(0.40, 0.30) < 0.4);
        for k in 0..20 {
            let x = k as f32 / 20.0;
            assert!(calibrate(x + 0.05, 0.2) >= calibrate(x, 0.2));
            assert!(calibrate(0.6, x + 0.05) >= calibrate(0.6, x));
            assert!((0.0..=1.0).contains(&calibrate(x, x)));
        }
    }

    #[test]
    fn evidence_explains_the_decision() {
        let e = embedding("My parcel never showed up.");
        assert!(
            e.evidence[0].starts_with("nearest example \"my package hasn't arrived\" (0."),
            "{e:?}"
        );
        assert!(
            e.evidence.iter().any(|l| l.starts_with("runner-up ")),
            "{e:?}"
        );
        let h = classify("My parcel never showed up.");
        assert!(h.evidence[0].contains("agree"), "{h:?}");
        assert!(
            h.evidence
                .iter()
                .any(|l| l.starts_with("embedding: nearest example")),
            "{h:?}"
        );
        let h = classify("The site keeps rejecting my credentials.");
        assert_eq!(h.intent, "password_reset");
        assert!(h.evidence[0].starts_with("embedding decided"), "{h:?}");
        // A hello does not hide the request the embedding recognised.
        let h = classify("Hey there, has my stuff been sent out yet?");
        assert_eq!(h.intent, "order_status", "{h:?}");
    }

    #[test]
    fn missing_or_broken_files_are_typed_errors() {
        let (model, tokenizer) = model_files();
        let nowhere = repo_path("models/no-such-model.safetensors");
        let err = SentenceEncoder::load(&nowhere, &tokenizer).unwrap_err();
        assert!(matches!(err, EmbeddingError::Missing { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("no-such-model.safetensors") && text.contains(PROVISION_COMMAND),
            "{text}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a model").expect("write");
        let err = SentenceEncoder::load(&junk, &tokenizer).unwrap_err();
        assert!(matches!(err, EmbeddingError::Model { .. }), "{err:?}");
        let err = SentenceEncoder::load(&model, &junk).unwrap_err();
        assert!(matches!(err, EmbeddingError::Tokenizer { .. }), "{err:?}");
        assert!(err.to_string().contains(PROVISION_COMMAND));
    }

    #[test]
    fn plugs_into_the_dialog_assets() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<HybridClassifier>();
        send_sync::<EmbeddingClassifier>();
        let (model, tokenizer) = model_files();
        let started = Instant::now();
        let base = assets();
        let hybrid = load_hybrid(&base, &model, &tokenizer).expect("loads");
        let load = started.elapsed();
        let with_hybrid = base.with_classifier(Box::new(hybrid));
        let m = with_hybrid
            .classifier()
            .classify(&normalize("My parcel never showed up."));
        assert_eq!(m.intent, "order_status", "{m:?}");
        eprintln!("model load + example embedding: {load:?}");
        assert!(load < Duration::from_secs(30), "loading took {load:?}");
        // One encoder shared by the classifiers of several flows.
        let encoder = Arc::new(SentenceEncoder::load(&model, &tokenizer).expect("loads"));
        let flows: Vec<DialogAssets> = (0..2)
            .map(|_| {
                let base = assets();
                let hybrid = hybrid_with_encoder(&base, Arc::clone(&encoder)).expect("builds");
                base.with_classifier(Box::new(hybrid))
            })
            .collect();
        assert_eq!(Arc::strong_count(&encoder), 3);
        for flow in &flows {
            let m = flow.classifier().classify(&normalize("I'm locked out."));
            assert_eq!(m.intent, "password_reset", "{m:?}");
        }
    }

    #[test]
    fn a_turn_takes_milliseconds() {
        let h = hybrid();
        let text = normalize("Hi, um, my parcel never showed up and I'm getting worried.");
        let _ = h.classify(&text);
        let mut times: Vec<Duration> = (0..15)
            .map(|_| {
                let started = Instant::now();
                let m = h.classify(&text);
                let took = started.elapsed();
                assert_eq!(m.intent, "order_status");
                took
            })
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        eprintln!("hybrid classification of one turn: median {median:?}");
        assert!(median < Duration::from_millis(250), "median {median:?}");
    }
}
