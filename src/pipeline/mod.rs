//! The per-call media pipeline, the same for a WAV file and a live call:
//!
//! ```text
//! CallInput (20 ms frames, any rate) -> [listen: resample -> VAD/endpointing (-> partial ASR)]
//!     --utterances, partials (bounded)--> [respond: ASR -> intent/dialog -> TTS]  (inference on the pool)
//!     --CallOutput (bounded)--> speaker (WAV timeline in simulation, paced RTP on a call)
//! ```
//!
//! Each stage is a task joined to the next by a bounded channel, so a slow stage holds back the
//! one before it instead of buffering without limit. Blocking inference never runs on the async
//! runtime: it goes to the shared [`InferencePool`]. Media time comes from the frames' own
//! timestamps, never from the wall clock, so a file fed faster than real time is endpointed
//! exactly as the same audio on a call; wall-clock time is used only to measure processing.
//!
//! While the caller talks, the listen stage decodes the growing utterance now and then on the
//! pool ([`PartialSchedule`] decides when, within a compute budget per call, and only when no
//! other job is waiting for a worker): the partial hypotheses go out as [`CallOutput::Partial`]
//! for the live views. The final transcript is still decoded once, on the whole utterance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::audio::frames::AudioFrame;
use crate::audio::resample::{resample_all, ResampleError, StreamResampler};
use crate::audio::wav::MonoAudio;
use crate::audio::{FRAME_MS, SPEECH_RATE};
use crate::config::GatewayConfig;
use crate::dialog::BotTurn;
use crate::flows::{Flow, FlowStore};
use crate::report::{CallReport, HeardLine, TurnInput, TurnReport, TurnTimings};
use crate::speech::asr::stream::{PartialOutcome, PartialSchedule};
use crate::speech::asr::vocabulary::Vocabulary;
use crate::speech::asr::{AsrError, Expectation, Pass, SpeechRecognizer, Transcript};
use crate::speech::pool::{InferencePool, PoolError, Priority};
use crate::speech::prosody;
use crate::speech::tts::{SpeechSynthesizer, TtsError};
use crate::speech::tts_cache::CachedSynthesizer;
use crate::speech::turn_end::{self, TurnEndModel, TurnEndNote};
use crate::speech::vad::{Endpointer, Utterance, VadEvent};
use crate::speech::voice::VoiceStyle;

mod no_input;
mod respond;
use no_input::NoInputWatch;
use respond::respond_stage;

/// Utterances with less voiced time than this, heard with less than the flow's `min_asr_confidence`, are
/// treated as line noise rather than a caller turn.
const NOISE_MAX_DURATION: Duration = Duration::from_millis(400);

/// How often a partial pass the pool was too busy for is tried again without new audio.
const PARTIAL_RETRY: Duration = Duration::from_millis(100);

/// Capacity of the channels between stages.
const STAGE_QUEUE: usize = 8;

/// What a call feeds into the pipeline.
#[derive(Debug, Clone)]
pub enum CallInput {
    /// Caller audio.
    Audio(AudioFrame),
    /// A DTMF digit (RFC 4733 on a live call).
    Dtmf { digit: char, at: Duration },
    /// The caller's audio ended (hang-up or end of file).
    End,
    /// The agent hung up and the bot has the caller again: it says so and the dialog goes on
    /// (only after a hand-over, on a call run with `transcribe_after_handover`).
    Resume,
}

/// Why the bot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechKind {
    Greeting,
    Reply,
}

/// A decision of the bot that the call (not the pipeline) carries out.
#[derive(Debug, Clone, PartialEq)]
pub enum BotDecision {
    /// Hand the caller over to a person (the announcement is already spoken).
    HandOver(crate::dialog::Escalation),
    /// The bot said goodbye: end the call once it is heard.
    Finish,
}

/// What the pipeline hands to the speaker stage.
#[derive(Debug, Clone)]
pub enum CallOutput {
    /// Bot speech at 16 kHz, ready at media time `ready_at` (the decision time plus the measured
    /// processing time).
    ///
    /// A reply is synthesised in units (sentences) and sent as soon as each is ready: the first
    /// carries the whole reply's `text`, the others have `continues` set and more audio of it.
    Speak {
        kind: SpeechKind,
        text: String,
        audio: MonoAudio,
        ready_at: Duration,
        continues: bool,
    },
    /// What the call must act on after a turn: hand the caller over, or end the call. Sent
    /// right after the turn's report (which only records it).
    Decision(BotDecision),
    /// A finished caller turn (its report).
    Turn(Box<TurnReport>),
    /// Something the caller said after the hand-over, transcribed for the agent's screen.
    Heard(HeardLine),
    /// A partial hypothesis of what the caller is saying (replaced by the next one, and by
    /// the turn's final transcript).
    Partial(PartialLine),
    /// The caller talked over the bot: with barge-in on, the bot's speech stopped at media
    /// time `at` (see [`barge_in_point`]). A live call's media layer stops playback itself,
    /// from the caller's audio; a simulated call cuts its timeline here.
    SpeechCut { at: Duration },
}

/// Where barge-in stops the bot's speech for an utterance: once the caller has spoken
/// `[media] barge_in_min_speech_ms` (the utterance's start is its pre-roll before the voice),
/// when barge-in is on and the utterance is loud enough (its loudest 20 ms above
/// `barge_in_floor_dbfs`), as the media layer's detector decides on a live call. The bot's
/// speech and the no-input clock count from this point, not from where the speech would have
/// ended.
pub(crate) fn barge_in_point(
    media: &crate::config::media::MediaConfig,
    vad: &crate::speech::vad::VadConfig,
    u: &Utterance,
) -> Option<Duration> {
    if !media.barge_in {
        return None;
    }
    let frame = (SPEECH_RATE as usize * FRAME_MS as usize) / 1000;
    let loudest = u
        .samples
        .chunks(frame.max(1))
        .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
        .fold(0.0f32, f32::max);
    let level_dbfs = 20.0 * loudest.max(1e-9).log10();
    (level_dbfs >= media.barge_in_floor_dbfs).then(|| {
        u.start
            + Duration::from_millis(vad.pre_roll_ms)
            + Duration::from_millis(u64::from(media.barge_in_min_speech_ms))
    })
}

/// A partial hypothesis while the caller talks.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartialLine {
    /// The text so far.
    pub text: String,
    /// Media time the utterance started.
    #[serde(serialize_with = "crate::serde_util::ser_ms")]
    pub start: Duration,
    /// Media time of the last audio the hypothesis heard.
    #[serde(serialize_with = "crate::serde_util::ser_ms")]
    pub heard_until: Duration,
}

/// Why a call's pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Resample(#[from] ResampleError),
    #[error(transparent)]
    Asr(#[from] AsrError),
    #[error(transparent)]
    Tts(#[from] TtsError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("pipeline stage stopped unexpectedly: {0}")]
    Stage(String),
}

/// The shared, loaded engines every call uses.
#[derive(Clone)]
pub struct Engines {
    pub config: Arc<GatewayConfig>,
    pub asr: Arc<dyn SpeechRecognizer>,
    /// The voice behind the prompt cache (which keeps each flow's fixed prompts ready).
    pub tts: Arc<CachedSynthesizer>,
    pub flows: Arc<FlowStore>,
    pub pool: InferencePool,
    /// Smart Turn, when configured and loaded: ends turns at short pauses.
    pub turn_end: Option<Arc<TurnEndModel>>,
}

/// What the listen stage passes on.
enum Heard {
    Utterance(Box<HeardTurn>),
    Partial(PartialLine),
    Dtmf {
        digit: char,
        at: Duration,
    },
    Resume,
    /// The caller said nothing for the flow's `no_input_s` after the bot's speech ended.
    NoInput {
        at: Duration,
    },
    End {
        at: Duration,
    },
}

/// A finished utterance, with what was learnt about it at its last pause.
struct HeardTurn {
    utterance: Utterance,
    /// Recognised at the pause, on exactly this audio.
    early: Option<Early>,
    /// How its end was decided (with a turn-end judge).
    turn_end: Option<TurnEndNote>,
}

/// A turn recognised at a pause, before its end was confirmed.
struct Early {
    /// The pause it was made in, and how many samples it heard.
    seq: u64,
    len: usize,
    transcript: Result<Transcript, String>,
    voice: prosody::Prosody,
}

/// What a check at a pause came back with.
struct PauseCheck {
    seq: u64,
    /// The silence the check was made at.
    silence: Duration,
    score: Option<f32>,
    early: Option<Early>,
}

/// What the bot waits for, shared by one call's stages: the respond stage sets it after each
/// of the dialog's decisions, the listen stage's recognitions (at a pause, partials) and the
/// respond stage's own read it, so a caller answering "what is your order number?" is heard
/// expecting digits ([`Expectation::Digits`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Expecting(Arc<std::sync::atomic::AtomicBool>);

impl Expecting {
    pub(crate) fn get(&self) -> Expectation {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Expectation::Digits
        } else {
            Expectation::Anything
        }
    }

    pub(crate) fn set_digits(&self, digits: bool) {
        self.0.store(digits, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The end of turn for one call's listen stage: at each pause it scores the turn-end model
/// (and, at the first pause of a stretch of silence, recognises the turn so far), on the pool
/// as turn work, and says when the turn is complete. One check runs at a time.
struct TurnJudge {
    model: Arc<TurnEndModel>,
    asr: Arc<dyn SpeechRecognizer>,
    expecting: Expecting,
    pool: InferencePool,
    threshold: f32,
    short_pause: Duration,
    speculative: bool,
    done_tx: mpsc::Sender<PauseCheck>,
    done_rx: mpsc::Receiver<PauseCheck>,
    /// The check running: its pause, the media time it started at, and when.
    pending: Option<(u64, Duration, Instant)>,
    early: Option<Early>,
    /// The last score, and its pause.
    score: Option<(u64, f32)>,
}

impl TurnJudge {
    /// None without a turn-end model (turns then end on silence alone).
    fn new(engines: &Engines, expecting: &Expecting) -> Option<Self> {
        let config = &engines.config.turn;
        let model = engines.turn_end.clone()?;
        let (done_tx, done_rx) = mpsc::channel(2);
        Some(TurnJudge {
            model,
            asr: engines.asr.clone(),
            expecting: expecting.clone(),
            pool: engines.pool.clone(),
            threshold: config.threshold,
            short_pause: Duration::from_millis(config.short_pause_ms),
            speculative: config.speculative,
            done_tx,
            done_rx,
            pending: None,
            early: None,
            score: None,
        })
    }

    /// Whether `item` must wait for the running check: it lies beyond the media time at which
    /// the check's answer is known (the pause plus the check's cost so far). On a live call
    /// that is a frame not yet arrived, so nothing waits; a file fed faster than real time
    /// waits, and so meets the same decision at the same media time as a call would.
    fn holds(&self, item: &CallInput) -> bool {
        let Some((_, at, started)) = self.pending else {
            return false;
        };
        match item {
            CallInput::Audio(frame) => frame.at >= at + started.elapsed(),
            _ => true,
        }
    }

    /// The caller has been silent a while in pause `seq` (media time `at`): starts a check
    /// unless one runs.
    fn paused(&mut self, seq: u64, silence: Duration, at: Duration, endpointer: &Endpointer) {
        if self.pending.is_some() {
            return;
        }
        let Some(audio) = endpointer.pause_audio() else {
            return;
        };
        let recognise = self.speculative && self.early.as_ref().is_none_or(|e| e.seq != seq);
        self.pending = Some((seq, at, Instant::now()));
        let samples = audio.to_vec();
        let threshold = self.threshold;
        let expect = self.expecting.get();
        let (model, asr, pool, done) = (
            self.model.clone(),
            self.asr.clone(),
            self.pool.clone(),
            self.done_tx.clone(),
        );
        tokio::spawn(async move {
            let job = move || {
                let score = match model.score(&samples) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(error = %e, "turn-end model failed; the turn ends on silence");
                        None
                    }
                };
                // Only a turn that sounds complete is recognised here: a pause mid-sentence
                // (common in speech) costs the model's score, not a decode.
                let sounds_done = score.is_some_and(|p| p >= threshold);
                let early = (recognise && sounds_done).then(|| Early {
                    seq,
                    len: samples.len(),
                    transcript: asr
                        .transcribe_expecting(&samples, expect)
                        .map_err(|e| e.to_string()),
                    voice: prosody::analyze(&samples),
                });
                PauseCheck {
                    seq,
                    silence,
                    score,
                    early,
                }
            };
            let check = pool.run(job).await.unwrap_or(PauseCheck {
                seq,
                silence,
                score: None,
                early: None,
            });
            let _ = done.send(check).await;
        });
    }

    /// A check came back: the pause at which the turn is complete, if it is.
    fn done(&mut self, check: PauseCheck) -> Option<u64> {
        self.pending = None;
        if let Some(early) = check.early {
            self.early = Some(early);
        }
        if let Some(p) = check.score {
            self.score = Some((check.seq, p));
        }
        let text = self
            .early
            .as_ref()
            .filter(|e| e.seq == check.seq)
            .and_then(|e| e.transcript.as_ref().ok())
            .map(|t| t.text.as_str());
        let complete = turn_end::turn_is_complete(
            check.score,
            self.threshold,
            text,
            check.silence,
            self.short_pause,
        );
        tracing::debug!(
            pause = check.seq,
            score = check.score,
            text = text.unwrap_or(""),
            complete,
            "turn-end check"
        );
        complete.then_some(check.seq)
    }

    /// What goes with a finished utterance: the early transcript when it heard exactly this
    /// audio, and how the end was decided.
    fn finish(&mut self, u: &Utterance) -> (Option<Early>, TurnEndNote) {
        let early = self
            .early
            .take()
            .filter(|e| Some(e.seq) == u.pause && e.len == u.samples.len());
        let score = self
            .score
            .take()
            .filter(|(seq, _)| Some(*seq) == u.pause)
            .map(|(_, p)| p);
        let note = TurnEndNote {
            score,
            silence_ms: u.decided_at.saturating_sub(u.end).as_millis() as u64,
            early_transcript: early.is_some(),
        };
        (early, note)
    }
}

/// The next check to come back; never, without a judge.
async fn next_check(judge: &mut Option<TurnJudge>) -> Option<PauseCheck> {
    match judge {
        Some(j) => j.done_rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How a call's pipeline behaves once the bot has handed the call over, and how the call
/// stops the bot's speech.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Keep transcribing the caller after the hand-over (live calls: the transcript goes on
    /// to the agent's screen) instead of stopping there (a WAV run ends its report there).
    pub transcribe_after_handover: bool,
    /// Barge-in: the call cancels the reply being spoken, and the pipeline synthesises no
    /// more of it.
    pub speech_cancel: SpeechCancel,
}

/// A barge-in signal shared by a call's task and its pipeline: each [`cancel`] ends the
/// reply being spoken (the pipeline checks before synthesising each next unit).
///
/// [`cancel`]: SpeechCancel::cancel
#[derive(Debug, Clone, Default)]
pub struct SpeechCancel(Arc<std::sync::atomic::AtomicU64>);

impl SpeechCancel {
    /// Cancels the reply being spoken.
    pub fn cancel(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The number of cancels so far: a reply started at one value is cancelled once it moves.
    pub fn generation(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs one call with `flow`: consumes `input` until [`CallInput::End`] (or the sender is
/// dropped), sends bot speech and turn reports to `output`, and returns the call's report. The
/// call keeps this flow to its end, whatever reloads happen meanwhile.
pub async fn run_call(
    engines: Engines,
    flow: Arc<Flow>,
    input: mpsc::Receiver<CallInput>,
    output: mpsc::Sender<CallOutput>,
) -> Result<CallReport, PipelineError> {
    run_call_with(engines, flow, input, output, CallOptions::default()).await
}

/// [`run_call`] with options.
pub async fn run_call_with(
    engines: Engines,
    flow: Arc<Flow>,
    input: mpsc::Receiver<CallInput>,
    output: mpsc::Sender<CallOutput>,
    options: CallOptions,
) -> Result<CallReport, PipelineError> {
    let (heard_tx, heard_rx) = mpsc::channel(STAGE_QUEUE);
    let expecting = Expecting::default();
    let partials = Partials::new(&engines, &expecting);
    let judge = TurnJudge::new(&engines, &expecting);
    let (armer, watch) = no_input::clock(flow.escalation.no_input_timeout()).unzip();
    let listen = tokio::spawn(listen_stage(
        engines.config.clone(),
        input,
        heard_tx,
        Listeners {
            partials,
            judge,
            no_input: watch,
        },
    ));
    let respond = respond_stage(engines, flow, heard_rx, output, options, armer, expecting).await;
    // The listen stage ends when its input ends or when respond stops listening.
    let listened = listen
        .await
        .map_err(|e| PipelineError::Stage(format!("listen stage: {e}")))?;
    let report = respond?;
    listened?;
    Ok(report)
}

/// Partial recognition for one call's listen stage: the engine, the pool, the schedule, and
/// the channel on which passes come back.
struct Partials {
    asr: Arc<dyn SpeechRecognizer>,
    expecting: Expecting,
    pool: InferencePool,
    schedule: PartialSchedule,
    done_tx: mpsc::Sender<PartialDone>,
    done_rx: mpsc::Receiver<PartialDone>,
    /// Media time the current utterance started.
    start: Duration,
}

/// A partial pass that came back.
struct PartialDone {
    ticket: u64,
    audio: Duration,
    heard_until: Duration,
    cost: Duration,
    text: String,
}

impl Partials {
    /// None when `[asr] partial_interval_ms` is 0.
    fn new(engines: &Engines, expecting: &Expecting) -> Option<Self> {
        let asr = &engines.config.asr;
        let schedule = PartialSchedule::new(
            Duration::from_millis(asr.partial_interval_ms),
            asr.partial_budget,
        );
        if !schedule.enabled() {
            return None;
        }
        let (done_tx, done_rx) = mpsc::channel(2);
        Some(Partials {
            asr: engines.asr.clone(),
            expecting: expecting.clone(),
            pool: engines.pool.clone(),
            schedule,
            done_tx,
            done_rx,
            start: Duration::ZERO,
        })
    }

    /// Starts a pass over the utterance so far when one is due and the pool has no queue
    /// (not during a pause: the turn judge recognises it then, at final quality).
    fn poll(&mut self, endpointer: &Endpointer) {
        if endpointer.pause_audio().is_some() {
            return;
        }
        let Some(audio) = endpointer.current_audio() else {
            return;
        };
        let length = samples_duration(audio.len());
        if !self.pool.is_idle_queue() {
            return; // finals and replies first
        }
        let Some(ticket) = self.schedule.due(length) else {
            return;
        };
        let samples = audio.to_vec();
        let heard_until = endpointer.now();
        let expect = self.expecting.get();
        let (asr, pool, done) = (self.asr.clone(), self.pool.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let job = move || {
                let started = Instant::now();
                let result = asr.decode_expecting(&samples, Pass::Partial, expect);
                (result, started.elapsed())
            };
            let (text, cost) = match pool.run_as(Priority::Background, job).await {
                Ok((Ok(t), cost)) => (t.text, cost),
                Ok((Err(e), cost)) => {
                    tracing::debug!(error = %e, "partial recognition failed");
                    (String::new(), cost)
                }
                Err(_) => (String::new(), Duration::ZERO),
            };
            let _ = done
                .send(PartialDone {
                    ticket,
                    audio: length,
                    heard_until,
                    cost,
                    text,
                })
                .await;
        });
    }

    /// A pass came back: the line to pass on, if it says something new.
    fn done(&mut self, d: PartialDone) -> Option<PartialLine> {
        match self.schedule.done(d.ticket, d.audio, d.cost, &d.text) {
            PartialOutcome::New(text) => Some(PartialLine {
                text,
                start: self.start,
                heard_until: d.heard_until,
            }),
            PartialOutcome::Unchanged | PartialOutcome::Stale => None,
        }
    }
}

/// The next partial pass to come back; never, without partials.
async fn next_partial(partials: &mut Option<Partials>) -> Option<PartialDone> {
    match partials {
        Some(p) => p.done_rx.recv().await,
        None => std::future::pending().await,
    }
}

fn samples_duration(samples: usize) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / u64::from(SPEECH_RATE))
}

/// Resampling and endpointing: pure computation, cheap enough for the runtime. Partial
/// recognition passes are started from here and run on the pool.
/// What the listen stage runs beside the endpointer, each optional.
struct Listeners {
    partials: Option<Partials>,
    judge: Option<TurnJudge>,
    no_input: Option<NoInputWatch>,
}

/// Whether `item` must wait: for a turn-end check, or for the bot's answer before a silence
/// can be judged.
fn must_wait(judge: &Option<TurnJudge>, no_input: &Option<NoInputWatch>, item: &CallInput) -> bool {
    judge.as_ref().is_some_and(|j| j.holds(item))
        || no_input.as_ref().is_some_and(|w| w.holds(item))
}

/// The respond stage's next no-input arm; never, without no-input handling.
async fn next_arm(watch: &mut Option<NoInputWatch>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn listen_stage(
    config: Arc<GatewayConfig>,
    mut input: mpsc::Receiver<CallInput>,
    heard: mpsc::Sender<Heard>,
    listeners: Listeners,
) -> Result<(), PipelineError> {
    let Listeners {
        mut partials,
        mut judge,
        mut no_input,
    } = listeners;
    let mut endpointer = Endpointer::new(config.vad.clone());
    let mut resampler: Option<(u32, StreamResampler)> = None;
    let mut speech = Vec::with_capacity(SPEECH_RATE as usize / 25);
    let mut events = Vec::new();
    let mut last_end = Duration::ZERO;
    // Input that waits for a turn-end check or a no-input arm (see `Listeners::hold`).
    let mut held: Option<CallInput> = None;
    let mut retry = tokio::time::interval(PARTIAL_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            biased;
            Some(check) = next_check(&mut judge) => {
                if let Some(seq) = judge.as_mut().and_then(|j| j.done(check)) {
                    if endpointer.end_turn(seq, &mut events) {
                        tracing::debug!(pause = seq, "the caller is done: turn ends at the pause");
                    }
                }
                held.take()
            }
            _ = next_arm(&mut no_input), if held.is_some() => held.take(),
            Some(done) = next_partial(&mut partials) => {
                if let Some(line) = partials.as_mut().and_then(|p| p.done(done)) {
                    // Partials are disposable: a full queue drops one rather than wait.
                    let _ = heard.try_send(Heard::Partial(line));
                }
                continue;
            }
            // A pass skipped because the pool was busy is tried again even when no new audio
            // comes (a file fed at once, a caller whose packets stopped).
            _ = retry.tick(), if partials.is_some() && endpointer.is_speaking() => {
                if let Some(p) = partials.as_mut() {
                    p.poll(&endpointer);
                }
                continue;
            }
            item = input.recv(), if held.is_none() => Some(item.unwrap_or(CallInput::End)),
        };
        // Input that must wait is kept; the events already out (an utterance ended at a
        // pause) go on now, as what is waited for may depend on them.
        let item = match item {
            Some(it) if must_wait(&judge, &no_input, &it) => {
                held = Some(it);
                None
            }
            other => other,
        };
        let is_end = matches!(item, Some(CallInput::End));
        match item {
            None => {}
            Some(item) => match item {
                CallInput::Audio(frame) => {
                    last_end = frame.at
                        + Duration::from_micros(
                            frame.samples.len() as u64 * 1_000_000 / u64::from(frame.rate.max(1)),
                        );
                    let rs = match &mut resampler {
                        Some((rate, rs)) if *rate == frame.rate => rs,
                        _ => {
                            // A codec change mid-call (re-INVITE) restarts the converter.
                            if let Some((_, mut old)) = resampler.take() {
                                old.finish(&mut speech)?;
                            }
                            &mut resampler
                                .insert((
                                    frame.rate,
                                    StreamResampler::new(frame.rate, SPEECH_RATE)?,
                                ))
                                .1
                        }
                    };
                    rs.push(&frame.samples, &mut speech)?;
                    endpointer.push(&speech, &mut events);
                    speech.clear();
                }
                CallInput::Dtmf { digit, at } => {
                    if heard.send(Heard::Dtmf { digit, at }).await.is_err() {
                        return Ok(());
                    }
                }
                CallInput::Resume => {
                    if heard.send(Heard::Resume).await.is_err() {
                        return Ok(());
                    }
                }
                CallInput::End => {
                    if let Some((_, rs)) = resampler.as_mut() {
                        rs.finish(&mut speech)?;
                        endpointer.push(&speech, &mut events);
                    }
                    endpointer.finish(&mut events);
                }
            },
        }
        for event in events.drain(..) {
            match event {
                VadEvent::SpeechStarted { at } => {
                    tracing::debug!(at_ms = at.as_millis() as u64, "caller started speaking");
                    if let Some(p) = partials.as_mut() {
                        p.schedule.start();
                        p.start = endpointer.now().saturating_sub(samples_duration(
                            endpointer.current_audio().map_or(0, <[f32]>::len),
                        ));
                    }
                }
                VadEvent::Paused { seq, silence, at } => {
                    if let Some(j) = judge.as_mut() {
                        j.paused(seq, silence, at, &endpointer);
                    }
                }
                VadEvent::Utterance(u) => {
                    if let Some(p) = partials.as_mut() {
                        p.schedule.end();
                    }
                    tracing::debug!(
                        start_ms = u.start.as_millis() as u64,
                        end_ms = u.end.as_millis() as u64,
                        reason = ?u.reason,
                        "end of utterance"
                    );
                    let (early, turn_end) = match judge.as_mut() {
                        Some(j) => {
                            let (early, note) = j.finish(&u);
                            (early, Some(note))
                        }
                        None => (None, None),
                    };
                    if let Some(w) = no_input.as_mut() {
                        w.sent_utterance(u.end);
                    }
                    let turn = HeardTurn {
                        utterance: u,
                        early,
                        turn_end,
                    };
                    if heard.send(Heard::Utterance(Box::new(turn))).await.is_err() {
                        return Ok(()); // the respond stage is done with this call
                    }
                }
            }
        }
        let now = endpointer.now();
        if no_input
            .as_mut()
            .is_some_and(|w| w.due(now, endpointer.is_speaking()))
        {
            tracing::debug!(at_ms = now.as_millis() as u64, "no input from the caller");
            if heard.send(Heard::NoInput { at: now }).await.is_err() {
                return Ok(());
            }
        }
        if is_end {
            if let Some(p) = &partials {
                let stats = p.schedule.stats();
                tracing::debug!(
                    passes = stats.passes,
                    skipped_for_budget = stats.skipped_for_budget,
                    compute_ms = stats.compute.as_millis() as u64,
                    "partial recognition"
                );
            }
            let _ = heard.send(Heard::End { at: last_end }).await;
            return Ok(());
        }
        if let Some(p) = partials.as_mut() {
            p.poll(&endpointer);
        }
    }
}

/// Recognises a caller turn on the pool, with the voice's prosody measured in the same job
/// (plain DSP, a few ms), and corrects it to the flow's vocabulary. A failed recognition must
/// not drop the call: the turn counts as not understood (confidence 0, `fault` says why), so
/// the dialog asks again or escalates.
///
/// A turn recognised at its last pause (`early`, on exactly this audio) is not decoded again.
async fn recognise(
    engines: &Engines,
    vocabulary: Option<&Vocabulary>,
    u: &Utterance,
    (early, expect): (Option<Early>, Expectation),
    fault: &mut Option<String>,
) -> (Transcript, Option<prosody::Prosody>) {
    let (transcript, voice) = match early {
        Some(early) => match early.transcript {
            Ok(t) => (t, Some(early.voice)),
            Err(e) => (failed_transcript(fault, e), Some(early.voice)),
        },
        None => {
            let samples = u.samples.clone();
            let asr = engines.asr.clone();
            let job = move || {
                (
                    asr.transcribe_expecting(&samples, expect),
                    prosody::analyze(&samples),
                )
            };
            match engines.pool.run(job).await {
                Ok((Ok(t), voice)) => (t, Some(voice)),
                Ok((Err(e), voice)) => (failed_transcript(fault, e.to_string()), Some(voice)),
                Err(e) => (failed_transcript(fault, e.to_string()), None),
            }
        }
    };
    let transcript = match vocabulary {
        Some(v) => corrected(v, transcript),
        None => transcript,
    };
    tracing::info!(
        text = %transcript.text,
        confidence = transcript.confidence,
        asr_ms = transcript.elapsed.as_millis() as u64,
        "caller said"
    );
    (transcript, voice)
}

/// The words of a flow that recognition may be corrected towards: its intents' examples and
/// synonyms and its escalation phrases.
pub fn flow_vocabulary(flow: &Flow) -> Vocabulary {
    let intents = flow.dialog.intents();
    let e = &flow.escalation;
    let phrases = intents
        .intents
        .iter()
        .flat_map(|i| i.examples.iter())
        .chain(
            intents
                .synonyms
                .iter()
                .flat_map(|(k, v)| std::iter::once(k).chain(v)),
        )
        .chain(e.critical_keywords.iter())
        .chain(e.negative_words.iter())
        .chain(e.strong_negative_words.iter())
        .map(String::as_str);
    Vocabulary::from_phrases(phrases)
}

/// `transcript` with doubtful words corrected towards `vocabulary` (logged when it changes).
fn corrected(vocabulary: &Vocabulary, mut transcript: Transcript) -> Transcript {
    let (text, changes) = vocabulary.correct(&transcript.words);
    if !changes.is_empty() {
        tracing::info!(heard = %transcript.text, corrected = %text, changes = ?changes, "doubtful words corrected to the flow's vocabulary");
        transcript.text = text;
    }
    transcript
}

/// Consumes what is left of the listen stage's output after the bot stopped, keeping the end
/// time of the caller's audio.
/// Transcribes one utterance outside the dialog (after the hand-over, or the agent's side);
/// None for silence or a failure (logged).
async fn transcribe_line(engines: &Engines, u: &Utterance, who: &'static str) -> Option<HeardLine> {
    let samples = u.samples.clone();
    let asr = engines.asr.clone();
    match engines.pool.run(move || asr.transcribe(&samples)).await {
        Ok(Ok(t)) if !t.text.trim().is_empty() => {
            tracing::info!(speaker = who, text = %t.text, confidence = t.confidence, "heard (transcript only)");
            Some(HeardLine {
                start: u.start,
                end: u.end,
                text: t.text.trim().to_string(),
                confidence: t.confidence,
            })
        }
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::warn!(speaker = who, error = %e, "cannot transcribe");
            None
        }
        Err(e) => {
            tracing::warn!(speaker = who, error = %e, "cannot transcribe");
            None
        }
    }
}

/// Transcribes a stream of audio with no dialog: the agent's side of a bridged call, for the
/// live transcript on the agent's screen. Each line goes to `output` as it is heard; all of
/// them are returned when `input` ends.
pub async fn run_transcriber(
    engines: Engines,
    input: mpsc::Receiver<CallInput>,
    output: mpsc::Sender<HeardLine>,
) -> Result<Vec<HeardLine>, PipelineError> {
    let (heard_tx, mut heard_rx) = mpsc::channel(STAGE_QUEUE);
    let listen = tokio::spawn(listen_stage(
        engines.config.clone(),
        input,
        heard_tx,
        Listeners {
            partials: None,
            judge: None,
            no_input: None,
        },
    ));
    let mut lines = Vec::new();
    while let Some(item) = heard_rx.recv().await {
        match item {
            Heard::Utterance(turn) => {
                if let Some(line) = transcribe_line(&engines, &turn.utterance, "agent").await {
                    let _ = output.send(line.clone()).await;
                    lines.push(line);
                }
            }
            Heard::End { .. } => break,
            Heard::Dtmf { .. } | Heard::Resume | Heard::Partial(_) | Heard::NoInput { .. } => {}
        }
    }
    drop(heard_rx);
    listen
        .await
        .map_err(|e| PipelineError::Stage(format!("listen stage: {e}")))??;
    Ok(lines)
}

async fn heard_drain(heard: &mut mpsc::Receiver<Heard>, caller_audio: &mut Duration) {
    while let Some(item) = heard.recv().await {
        if let Heard::End { at } = item {
            *caller_audio = at;
        }
    }
}

fn failed_transcript(fault: &mut Option<String>, error: String) -> Transcript {
    tracing::error!(%error, "speech recognition failed; treating the turn as not understood");
    *fault = Some(format!("speech recognition failed: {error}"));
    Transcript::default()
}

/// Speaks for the respond stage: a text is cut into the voice's units and each is sent as soon
/// as it is synthesised, so playout starts after the first unit, not the whole text; a
/// barge-in ([`SpeechCancel`]) stops the units not yet synthesised.
struct Speaker<'a> {
    engines: &'a Engines,
    /// The flow's voice.
    style: VoiceStyle,
    output: &'a mpsc::Sender<CallOutput>,
    cancel: &'a SpeechCancel,
    /// The units of the text being spoken still to synthesise, and the cancel generation it
    /// started at.
    pending: std::collections::VecDeque<String>,
    generation: u64,
    /// Media time the speech sent so far ends (units play one after the other, each no
    /// earlier than it is ready).
    ends_at: Duration,
}

impl<'a> Speaker<'a> {
    fn new(
        engines: &'a Engines,
        style: VoiceStyle,
        output: &'a mpsc::Sender<CallOutput>,
        cancel: &'a SpeechCancel,
    ) -> Self {
        Speaker {
            engines,
            style,
            output,
            cancel,
            pending: Default::default(),
            generation: 0,
            ends_at: Duration::ZERO,
        }
    }

    /// Cuts `text` into units and synthesises the first; the rest waits for [`rest`]. `None`
    /// when there is nothing to say.
    ///
    /// [`rest`]: Speaker::rest
    async fn first(&mut self, text: &str) -> Result<Option<MonoAudio>, PipelineError> {
        self.generation = self.cancel.generation();
        self.pending = self.engines.tts.units(text).into();
        match self.pending.pop_front() {
            Some(unit) => {
                let mut audio = synthesize(self.engines, &unit, self.style, Priority::Turn).await?;
                // The caller waits through any silence before the first word.
                crate::audio::trim_leading_silence(&mut audio.samples, audio.rate);
                Ok(Some(audio))
            }
            None => Ok(None),
        }
    }

    async fn send(
        &mut self,
        kind: SpeechKind,
        text: &str,
        audio: MonoAudio,
        ready_at: Duration,
        continues: bool,
    ) {
        self.ends_at = self.ends_at.max(ready_at) + samples_duration(audio.samples.len());
        let _ = self
            .output
            .send(CallOutput::Speak {
                kind,
                text: text.to_string(),
                audio,
                ready_at,
                continues,
            })
            .await;
    }

    /// The caller's voice stopped the bot's speech at `at` (media time): the speech ends
    /// there if it was still going, and the cut is sent on.
    async fn cut(&mut self, at: Duration) {
        if at >= self.ends_at {
            return;
        }
        tracing::debug!(
            at_ms = at.as_millis() as u64,
            would_end_ms = self.ends_at.as_millis() as u64,
            "barge-in: the bot's speech stops where the caller spoke over it"
        );
        self.ends_at = at;
        let _ = self.output.send(CallOutput::SpeechCut { at }).await;
    }

    /// Synthesises and sends the units left, unless the caller barged in meanwhile.
    async fn rest(
        &mut self,
        kind: SpeechKind,
        text: &str,
        ready_at: Duration,
    ) -> Result<(), PipelineError> {
        while let Some(unit) = self.pending.pop_front() {
            if self.cancel.generation() != self.generation {
                tracing::info!(
                    units = self.pending.len() + 1,
                    "barge-in: the rest of the reply is not synthesised"
                );
                self.pending.clear();
                break;
            }
            // The caller is already hearing the first unit: the others wait behind turn work.
            let audio = synthesize(self.engines, &unit, self.style, Priority::Background).await?;
            self.send(kind, text, audio, ready_at, true).await;
        }
        Ok(())
    }

    /// Says all of `text`, the first unit ready at `ready_at()` (asked once it is synthesised).
    async fn say(
        &mut self,
        kind: SpeechKind,
        text: &str,
        ready_at: impl FnOnce() -> Duration,
    ) -> Result<(), PipelineError> {
        if let Some(audio) = self.first(text).await? {
            let at = ready_at();
            self.send(kind, text, audio, at, false).await;
            self.rest(kind, text, at).await?;
        }
        Ok(())
    }
}

/// One unit in `style` on the inference pool (with `priority`), at [`SPEECH_RATE`].
async fn synthesize(
    engines: &Engines,
    text: &str,
    style: VoiceStyle,
    priority: Priority,
) -> Result<MonoAudio, PipelineError> {
    // A unit the prompt cache holds (a fixed prompt) does not queue behind recognition.
    let speech = match engines.tts.cached(text, &style) {
        Some(speech) => speech,
        None => {
            let tts = engines.tts.clone();
            let owned = text.to_string();
            engines
                .pool
                .run_as(priority, move || tts.synthesize_in(&owned, &style))
                .await??
        }
    };
    let samples = if speech.audio.rate == SPEECH_RATE {
        speech.audio.samples
    } else {
        resample_all(&speech.audio.samples, speech.audio.rate, SPEECH_RATE)?
    };
    Ok(MonoAudio {
        samples,
        rate: SPEECH_RATE,
    })
}

/// All of `text` in `style` at [`SPEECH_RATE`], synthesised unit by unit as calls speak it,
/// so fixed prompts kept ready by the prompt cache cost nothing (used where the audio is
/// wanted in one piece: an apology before hanging up, the whisper to an agent, a console
/// preview).
pub async fn synthesize_text(
    engines: &Engines,
    text: &str,
    style: VoiceStyle,
) -> Result<MonoAudio, PipelineError> {
    let mut samples = Vec::new();
    for unit in engines.tts.units(text) {
        samples.extend(
            synthesize(engines, &unit, style, Priority::Turn)
                .await?
                .samples,
        );
    }
    Ok(MonoAudio {
        samples,
        rate: SPEECH_RATE,
    })
}

/// The report of one turn: from what was heard (utterance, transcript, intent time, when the
/// turn started), or for a turn with no audio (DTMF, typed text) a zero-length one at
/// `decided_at`.
pub(crate) fn make_report(
    index: usize,
    turn: &BotTurn,
    heard: Option<&(Utterance, Transcript, Duration, Instant)>,
    decided_at: Duration,
    tts: Duration,
) -> TurnReport {
    let (start, end, end_reason, transcript, asr_confidence, asr, intent, total) = match heard {
        Some((u, t, intent, started)) => (
            u.start,
            u.end,
            Some(u.reason),
            t.text.clone(),
            t.confidence,
            t.elapsed,
            *intent,
            started.elapsed(),
        ),
        None => (
            decided_at,
            decided_at,
            None,
            String::new(),
            1.0,
            Duration::ZERO,
            Duration::ZERO,
            tts,
        ),
    };
    TurnReport {
        index,
        start,
        end,
        end_reason,
        transcript,
        asr_confidence,
        normalized: turn.normalized_text.clone(),
        intent: turn.intent.intent.clone(),
        intent_confidence: turn.intent.confidence,
        intent_evidence: turn.intent.evidence.clone(),
        slots: turn.slots.clone(),
        reply: turn.reply.clone(),
        escalation: turn.escalation.clone(),
        ends_call: turn.ends_call,
        emotion: turn.emotion.clone(),
        timings: TurnTimings {
            asr,
            intent,
            tts,
            total,
        },
        fault: None,
        turn_end: None,
        input: TurnInput::Speech,
    }
}

fn log_decision(report: &TurnReport) {
    match &report.escalation {
        Some(e) => tracing::info!(
            turn = report.index,
            intent = %report.intent,
            reason = ?e.reason,
            detail = %e.detail,
            skill = %e.skill,
            "escalating to a human"
        ),
        None => tracing::info!(
            turn = report.index,
            intent = %report.intent,
            confidence = report.intent_confidence,
            reply = %report.reply,
            "bot answers"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CallOutcome;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use crate::audio::frames::split_frames;
    use crate::audio::test_signal::{silence, voiced};
    use crate::dialog::EscalationReason;
    use crate::flows::FlowSet;
    use crate::speech::tts::Speech;

    /// Hands out scripted transcripts in order, or fails when told to.
    struct ScriptedAsr {
        texts: Mutex<VecDeque<Result<&'static str, &'static str>>>,
        heard_lengths: Mutex<Vec<usize>>,
        /// What each final pass was told to expect.
        expectations: Mutex<Vec<Expectation>>,
    }

    impl SpeechRecognizer for ScriptedAsr {
        fn decode_expecting(
            &self,
            samples: &[f32],
            pass: Pass,
            expect: Expectation,
        ) -> Result<Transcript, AsrError> {
            if pass == Pass::Partial {
                // A partial says how much it heard: "heard 1500 ms".
                return Ok(Transcript {
                    text: format!("heard {} ms", samples.len() / 16),
                    ..Transcript::default()
                });
            }
            if let Ok(mut v) = self.expectations.lock() {
                v.push(expect);
            }
            if let Ok(mut v) = self.heard_lengths.lock() {
                v.push(samples.len());
            }
            let next = self
                .texts
                .lock()
                .ok()
                .and_then(|mut q| q.pop_front())
                .unwrap_or(Ok(""));
            match next {
                // A leading "~" scripts a transcript the recogniser doubts.
                Ok(text) => Ok(Transcript {
                    text: text.trim_start_matches('~').to_string(),
                    confidence: if text.starts_with('~') { 0.2 } else { 0.95 },
                    elapsed: Duration::from_millis(5),
                    ..Transcript::default()
                }),
                Err(e) => Err(AsrError::Inference(e.to_string())),
            }
        }
    }

    /// Half a second of tone at 8 kHz per reply (exercises the resampling to 16 kHz).
    struct ToneTts;

    impl SpeechSynthesizer for ToneTts {
        fn synthesize_in(&self, _text: &str, _style: &VoiceStyle) -> Result<Speech, TtsError> {
            let samples = (0..4000)
                .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 8000.0).sin())
                .collect();
            Ok(Speech {
                audio: MonoAudio {
                    samples,
                    rate: 8000,
                },
                elapsed: Duration::from_millis(1),
            })
        }
    }

    fn engines(texts: Vec<Result<&'static str, &'static str>>) -> (Engines, Arc<ScriptedAsr>) {
        let flows =
            FlowSet::embedded(&Default::default(), &crate::flows::as_is).expect("embedded flow");
        let asr = Arc::new(ScriptedAsr {
            texts: Mutex::new(texts.into()),
            heard_lengths: Mutex::new(Vec::new()),
            expectations: Mutex::new(Vec::new()),
        });
        let config = GatewayConfig::default();
        let engines = Engines {
            config: Arc::new(config),
            asr: asr.clone(),
            tts: Arc::new(CachedSynthesizer::new(
                Arc::new(ToneTts),
                crate::speech::tts_cache::CacheLimits::default(),
            )),
            flows: Arc::new(FlowStore::new(flows)),
            pool: InferencePool::new(1, 4),
            turn_end: None,
        };
        (engines, asr)
    }

    /// Three utterances (1.2 s, 1.0 s, 0.8 s) separated by pauses, at 8 kHz like a phone call.
    fn call_audio() -> Vec<f32> {
        let mut a = silence(500);
        for ms in [1200, 1000, 800] {
            a.extend(voiced(ms));
            a.extend(silence(1500));
        }
        resample_all(&a, 16_000, 8_000).expect("resample")
    }

    async fn run(
        engines: Engines,
        audio: Vec<f32>,
    ) -> (Result<CallReport, PipelineError>, Vec<CallOutput>) {
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for frame in split_frames(&audio, 8000, 20) {
                if in_tx.send(CallInput::Audio(frame)).await.is_err() {
                    return;
                }
            }
            let _ = in_tx.send(CallInput::End).await;
        });
        let flow = engines.flows.current().default_flow();
        let call = tokio::spawn(run_call(engines, flow, in_rx, out_tx));
        let mut outputs = Vec::new();
        while let Some(o) = out_rx.recv().await {
            outputs.push(o);
        }
        (call.await.expect("call task"), outputs)
    }

    #[tokio::test]
    async fn a_reply_is_spoken_unit_by_unit_and_a_barge_in_spares_the_rest() {
        let (engines, _) = engines(vec![]);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let cancel = SpeechCancel::default();
        let mut speaker = Speaker::new(&engines, VoiceStyle::default(), &out_tx, &cancel);
        let text = "Your order has shipped. It arrives on Monday. Anything else?";
        speaker
            .say(SpeechKind::Reply, text, || Duration::from_secs(1))
            .await
            .unwrap();
        let mut parts = Vec::new();
        while let Ok(CallOutput::Speak {
            text: t,
            continues,
            ready_at,
            ..
        }) = out_rx.try_recv()
        {
            assert_eq!(t, text, "every unit carries the whole reply's text");
            assert_eq!(ready_at, Duration::from_secs(1));
            parts.push(continues);
        }
        assert_eq!(parts, vec![false, true, true]);
        // A barge-in after the first unit: the other two are never synthesised.
        let first = speaker.first(text).await.unwrap();
        assert!(first.is_some());
        cancel.cancel();
        speaker
            .rest(SpeechKind::Reply, text, Duration::ZERO)
            .await
            .unwrap();
        assert!(out_rx.try_recv().is_err(), "nothing after the barge-in");
        // The next reply is spoken whole again.
        speaker
            .say(SpeechKind::Reply, "Goodbye.", || Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(
            out_rx.try_recv(),
            Ok(CallOutput::Speak {
                continues: false,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn after_the_handover_the_caller_is_transcribed_and_the_bot_can_take_them_back() {
        let (engines, _) = engines(vec![
            Ok("I want to speak to a person."),
            Ok("my order number is 1234"),
            Ok("what are your opening hours"),
        ]);
        // Three utterances; the bot gets the caller back after the second (the agent hung up).
        let mut audio = silence(500);
        let mut inputs = Vec::new();
        for ms in [1200, 1000] {
            audio.extend(voiced(ms));
            audio.extend(silence(1500));
        }
        let first = resample_all(&audio, 16_000, 8_000).expect("resample");
        inputs.extend(split_frames(&first, 8000, 20).map(CallInput::Audio));
        inputs.push(CallInput::Resume);
        let mut rest = voiced(800);
        rest.extend(silence(1500));
        let rest = resample_all(&rest, 16_000, 8_000).expect("resample");
        let offset = Duration::from_millis(first.len() as u64 / 8);
        inputs.extend(split_frames(&rest, 8000, 20).map(|mut f| {
            f.at += offset;
            CallInput::Audio(f)
        }));
        inputs.push(CallInput::End);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for input in inputs {
                if in_tx.send(input).await.is_err() {
                    return;
                }
            }
        });
        let flow = engines.flows.current().default_flow();
        let options = CallOptions {
            transcribe_after_handover: true,
            ..CallOptions::default()
        };
        let call = tokio::spawn(run_call_with(engines, flow, in_rx, out_tx, options));
        let mut heard = Vec::new();
        let mut said = Vec::new();
        while let Some(o) = out_rx.recv().await {
            match o {
                CallOutput::Heard(line) => heard.push(line.text),
                CallOutput::Speak { text, .. } => said.push(text),
                CallOutput::Turn(_)
                | CallOutput::Partial(_)
                | CallOutput::Decision(_)
                | CallOutput::SpeechCut { .. } => {}
            }
        }
        let report = call.await.expect("task").expect("call runs");
        assert_eq!(heard, ["my order number is 1234"]);
        assert_eq!(report.after_handover.len(), 1);
        // Escalated on turn 1; after the resume the bot answers turn 2 again.
        assert_eq!(report.turns.len(), 2, "{report:#?}");
        assert_eq!(report.turns[1].intent, "opening_hours");
        assert!(said.iter().any(|t| t.contains("anything else")), "{said:?}");
        assert!(report.escalation.is_some());
    }

    /// While the caller talks, partial hypotheses of the growing utterance come out before
    /// its turn; the turn itself is decided on the final pass.
    #[tokio::test]
    async fn partials_come_out_while_the_caller_talks() {
        let (engines, _asr) = engines(vec![Ok("Where is my order?")]);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let flow = engines.flows.current().default_flow();
        let call = tokio::spawn(run_call(engines, flow, in_rx, out_tx));
        let mut talk = silence(300);
        talk.extend(voiced(2500));
        for frame in split_frames(&talk, 16_000, 20) {
            in_tx
                .send(CallInput::Audio(frame))
                .await
                .expect("call listens");
        }
        // The caller is still talking: wait (with a deadline) for a partial.
        let partial = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match out_rx.recv().await {
                    Some(CallOutput::Partial(p)) => return p,
                    Some(CallOutput::Turn(t)) => panic!("a turn before any partial: {t:?}"),
                    Some(_) => {}
                    None => panic!("the call ended without a partial"),
                }
            }
        })
        .await
        .expect("a partial within 20 s");
        let heard: u64 = partial
            .text
            .trim_start_matches("heard ")
            .trim_end_matches(" ms")
            .parse()
            .expect("scripted partial text");
        assert!(heard >= 500, "{partial:?}");
        assert!(
            partial.heard_until <= Duration::from_millis(2800),
            "{partial:?}"
        );
        assert!(partial.start < Duration::from_millis(300), "{partial:?}");
        for frame in split_frames(&silence(1500), 16_000, 20) {
            in_tx
                .send(CallInput::Audio(frame))
                .await
                .expect("call listens");
        }
        in_tx.send(CallInput::End).await.expect("call listens");
        let mut turns = Vec::new();
        while let Some(o) = out_rx.recv().await {
            if let CallOutput::Turn(t) = o {
                turns.push(t.transcript.clone());
            }
        }
        let report = call.await.expect("task").expect("call runs");
        assert_eq!(turns, ["Where is my order?"]);
        assert_eq!(report.turns.len(), 1);
    }

    #[tokio::test]
    async fn a_turn_said_over_the_greeting_cuts_it_where_barge_in_would() {
        let (engines, _) = engines(vec![Ok("Where is my order?")]);
        let (report, outputs) = run(engines, call_audio()).await;
        report.expect("call runs");
        // The greeting's units play one after the other from the time it was ready.
        let greeting_ends: Duration = outputs
            .iter()
            .filter_map(|o| match o {
                CallOutput::Speak {
                    kind: SpeechKind::Greeting,
                    audio,
                    ..
                } => Some(samples_duration(audio.samples.len())),
                _ => None,
            })
            .sum();
        let cuts: Vec<Duration> = outputs
            .iter()
            .filter_map(|o| match o {
                CallOutput::SpeechCut { at } => Some(*at),
                _ => None,
            })
            .collect();
        // The caller's voice starts at 500 ms; barge-in needs 120 ms of it. (The later
        // utterances also start while a reply is still playing.)
        assert!(
            (Duration::from_millis(560)..Duration::from_millis(700)).contains(&cuts[0]),
            "{cuts:?}"
        );
        assert!(greeting_ends > Duration::from_secs(1), "{greeting_ends:?}");
    }

    #[tokio::test]
    async fn without_barge_in_nothing_is_cut() {
        let (mut engines, _) = engines(vec![Ok("Where is my order?")]);
        let mut config = (*engines.config).clone();
        config.media.barge_in = false;
        engines.config = Arc::new(config);
        let (report, outputs) = run(engines, call_audio()).await;
        report.expect("call runs");
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, CallOutput::SpeechCut { .. })));
    }

    #[tokio::test]
    async fn the_answer_to_the_order_number_question_is_heard_expecting_digits() {
        let (engines, asr) = engines(vec![
            Ok("Where is my order?"),
            Ok("It's four five seven one two."),
            Ok("Thank you."),
        ]);
        let (report, _) = run(engines, call_audio()).await;
        let report = report.expect("call runs");
        assert_eq!(report.turns.len(), 3, "{report:#?}");
        let expected = asr.expectations.lock().expect("lock").clone();
        assert_eq!(
            expected,
            [
                Expectation::Anything,
                Expectation::Digits,
                Expectation::Anything
            ],
            "{report:#?}"
        );
    }

    #[tokio::test]
    async fn turns_flow_through_every_stage_until_escalation() {
        let (engines, asr) = engines(vec![
            Ok("Where is my order?"),
            Ok("I want to speak to a person."),
            Ok("this third turn is after the transfer"),
        ]);
        let (report, outputs) = run(engines, call_audio()).await;
        let report = report.expect("call runs");
        assert_eq!(report.turns.len(), 2, "{report:#?}");
        assert_eq!(report.turns[0].intent, "order_status");
        assert!(report.turns[0].escalation.is_none());
        let escalation = report.turns[1].escalation.as_ref().expect("escalates");
        assert_eq!(escalation.reason, EscalationReason::ExplicitRequest);
        assert_eq!(escalation.turn, 2);
        assert_eq!(report.outcome, CallOutcome::Escalated);
        // The endpointer cut the audio into utterances of about the right length (16 kHz).
        let lengths = asr.heard_lengths.lock().expect("lock").clone();
        assert_eq!(lengths.len(), 2);
        // 1.2 s of voice + 240 ms pre-roll + 200 ms tail = 1.64 s; then 1.0 s + the same.
        assert!((24_000..28_000).contains(&lengths[0]), "{lengths:?}");
        assert!((20_500..24_500).contains(&lengths[1]), "{lengths:?}");
        // Greeting plus one reply per turn, at 16 kHz, and the turn reports.
        let speeches: Vec<_> = outputs
            .iter()
            .filter_map(|o| match o {
                CallOutput::Speak {
                    kind,
                    audio,
                    ready_at,
                    continues: false,
                    ..
                } => Some((*kind, audio.rate, audio.samples.len(), *ready_at)),
                _ => None,
            })
            .collect();
        assert_eq!(speeches.len(), 3);
        assert_eq!(speeches[0].0, SpeechKind::Greeting);
        assert!(speeches
            .iter()
            .all(|s| s.1 == 16_000 && (7_900..8_100).contains(&s.2)));
        // A reply is ready no earlier than the end-of-utterance decision.
        assert!(speeches[1].3 >= report.turns[0].end + Duration::from_millis(600));
        // Audio after the hand-over is left to the human and accounted for.
        assert!(report.unprocessed_after_end > Duration::from_secs(2));
        assert_eq!(report.caller_audio.as_millis(), 8_000);
    }

    #[tokio::test]
    async fn a_short_doubtful_blip_is_noise_not_a_turn() {
        let (engines, _) = engines(vec![Ok("~you"), Ok("Where is my order?")]);
        let mut audio = silence(300);
        audio.extend(voiced(200));
        audio.extend(silence(1500));
        audio.extend(voiced(1200));
        audio.extend(silence(1500));
        let audio = resample_all(&audio, 16_000, 8_000).expect("resample");
        let (report, _) = run(engines, audio).await;
        let report = report.expect("call runs");
        assert_eq!(report.noise_ignored, 1, "{report:#?}");
        assert_eq!(report.turns.len(), 1);
        assert_eq!(report.turns[0].intent, "order_status");
    }

    #[tokio::test]
    async fn a_failed_recognition_does_not_drop_the_call() {
        let (engines, _) = engines(vec![
            Err("decoder exploded"),
            Ok("What are your opening hours?"),
        ]);
        let (report, _) = run(engines, call_audio()).await;
        let report = report.expect("call survives an ASR fault");
        assert!(report.turns.len() >= 2, "{report:#?}");
        let first = &report.turns[0];
        assert!(first
            .fault
            .as_deref()
            .unwrap_or("")
            .contains("decoder exploded"));
        assert_eq!(first.asr_confidence, 0.0);
        assert_eq!(report.turns[1].intent, "opening_hours");
    }

    #[tokio::test]
    async fn dtmf_zero_escalates() {
        let (engines, _) = engines(vec![]);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let flow = engines.flows.current().default_flow();
        let call = tokio::spawn(run_call(engines, flow, in_rx, out_tx));
        in_tx
            .send(CallInput::Dtmf {
                digit: '0',
                at: Duration::from_millis(300),
            })
            .await
            .expect("send");
        in_tx.send(CallInput::End).await.expect("send");
        while out_rx.recv().await.is_some() {}
        let report = call.await.expect("task").expect("call");
        let e = report.escalation.expect("escalated");
        assert_eq!(e.reason, EscalationReason::Dtmf0);
        assert_eq!(report.turns[0].end_reason, None);
    }
}
