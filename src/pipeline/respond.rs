//! The respond stage: for each finished utterance (or key press, or silence) recognition, the
//! dialog's decision and the reply's synthesis, in that order, one turn at a time. After a
//! hand-over it only transcribes the caller (for the agent's screen) until the bot gets the
//! caller back or the call ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::no_input::NoInputArmer;
use super::{
    barge_in_point, flow_vocabulary, heard_drain, log_decision, make_report, recognise,
    transcribe_line, BotDecision, CallOptions, CallOutput, Engines, Expecting, Heard, HeardTurn,
    PipelineError, Speaker, SpeechKind, NOISE_MAX_DURATION,
};
use crate::dialog::{Bot, BotTurn, CallerTurn, Escalation};
use crate::flows::Flow;
use crate::report::{CallOutcome, CallReport, HeardLine, TurnInput};
use crate::speech::asr::vocabulary::{Dictionary, Vocabulary};
use crate::speech::asr::Transcript;
use crate::speech::turn_end::TurnEndNote;
use crate::speech::vad::Utterance;

/// The dialog is only ever missing while on the pool, where a failed job already returned an
/// error; this names that case all the same instead of panicking.
fn dialog_lost() -> PipelineError {
    PipelineError::Stage("the dialog did not come back from the inference pool".into())
}

/// A turn understood, ready to be answered.
struct Understood {
    turn: BotTurn,
    /// Media time of the decision.
    decided_at: Duration,
    /// What was heard (None for a key press or a silence): the utterance, its transcript, the
    /// dialog's time and when the turn's work started.
    heard: Option<(Utterance, Transcript, Duration, Instant)>,
    input: TurnInput,
    turn_end: Option<TurnEndNote>,
    fault: Option<String>,
}

/// What to do with the next item the listen stage sent.
enum Next {
    /// The caller's audio ended.
    Stop,
    /// Nothing to answer (noise, a partial, a key press the dialog ignores).
    Skip,
    Answer(Box<Understood>),
}

/// The respond stage's state across turns.
struct Responder<'a> {
    engines: &'a Engines,
    flow: &'a Flow,
    output: &'a mpsc::Sender<CallOutput>,
    transcribe_after_handover: bool,
    speaker: Speaker<'a>,
    no_input: Option<NoInputArmer>,
    /// What the bot waits for, as the call's recognitions read it.
    expecting: Expecting,
    vocabulary: Option<Vocabulary>,
    /// The dialog; None only while it is on the inference pool.
    bot: Option<Bot>,
    turns: Vec<crate::report::TurnReport>,
    outcome: CallOutcome,
    escalation: Option<Escalation>,
    /// Media time the bot finished (said goodbye or handed over).
    bot_done_at: Option<Duration>,
    caller_audio: Duration,
    noise_ignored: usize,
    /// After a hand-over: the bot only transcribes, until the caller is back or gone.
    handed_over: bool,
    after_handover: Vec<HeardLine>,
}

/// Recognition, dialog and synthesis for each finished utterance.
pub(super) async fn respond_stage(
    engines: Engines,
    flow: Arc<Flow>,
    mut heard: mpsc::Receiver<Heard>,
    output: mpsc::Sender<CallOutput>,
    options: CallOptions,
    no_input: Option<NoInputArmer>,
    expecting: Expecting,
) -> Result<CallReport, PipelineError> {
    tracing::info!(flow = %flow.name, "call answered");
    let mut bot = Bot::new(flow.dialog.clone(), flow.escalation.clone());
    let asr_config = &engines.config.asr;
    let vocabulary = asr_config.vocabulary_correction.then(|| {
        flow_vocabulary(&flow).with_dictionary(Dictionary::shared(&asr_config.dictionary))
    });
    let greeting = bot.greeting();
    let mut r = Responder {
        engines: &engines,
        flow: &flow,
        output: &output,
        transcribe_after_handover: options.transcribe_after_handover,
        speaker: Speaker::new(&engines, flow.voice, &output, &options.speech_cancel),
        no_input,
        expecting,
        vocabulary,
        bot: Some(bot),
        turns: Vec::new(),
        outcome: CallOutcome::CallerHungUp,
        escalation: None,
        bot_done_at: None,
        caller_audio: Duration::ZERO,
        noise_ignored: 0,
        handed_over: false,
        after_handover: Vec::new(),
    };
    r.greet(&greeting).await;
    while let Some(item) = heard.recv().await {
        if let (Heard::Utterance(_), Some(armer)) = (&item, r.no_input.as_mut()) {
            armer.heard_utterance();
        }
        if let Heard::Partial(p) = item {
            // Disposable: a busy speaker stage drops it rather than hold the turn.
            let _ = output.try_send(CallOutput::Partial(p));
            continue;
        }
        let stop = if r.handed_over {
            r.while_handed_over(item).await
        } else {
            let next = r.understand(item).await?;
            if let Some(bot) = &r.bot {
                r.expecting.set_digits(bot.awaits_digits());
            }
            match next {
                Next::Stop => true,
                Next::Skip => false,
                Next::Answer(u) => r.answer(*u).await,
            }
        };
        if stop {
            break;
        }
    }
    // The bot is done (or the caller is): drain the rest so the listen stage can finish, and
    // measure what the bot did not process. No more silences are judged.
    let Responder {
        turns,
        outcome,
        escalation,
        bot_done_at,
        mut caller_audio,
        noise_ignored,
        after_handover,
        no_input,
        ..
    } = r;
    drop(no_input);
    heard_drain(&mut heard, &mut caller_audio).await;
    let unprocessed = bot_done_at.map_or(Duration::ZERO, |at| caller_audio.saturating_sub(at));
    Ok(CallReport {
        flow: flow.name.clone(),
        greeting,
        turns,
        outcome,
        escalation,
        caller_audio,
        unprocessed_after_end: unprocessed,
        noise_ignored,
        after_handover,
    })
}

impl Responder<'_> {
    /// The greeting, then the no-input clock starts.
    async fn greet(&mut self, greeting: &str) {
        let started = Instant::now();
        if let Err(e) = self
            .speaker
            .say(SpeechKind::Greeting, greeting, || started.elapsed())
            .await
        {
            tracing::error!(error = %e, "greeting synthesis failed; the call goes on");
        }
        if let Some(armer) = self.no_input.as_mut() {
            armer.arm(self.speaker.ends_at);
        }
    }

    /// Nothing answered: the no-input clock keeps waiting as it was.
    fn keep_waiting(&mut self) {
        if let Some(armer) = self.no_input.as_mut() {
            armer.keep();
        }
    }

    /// After the hand-over: the caller's lines are transcribed for the agent's screen, until
    /// the bot has the caller again (`Resume`) or the audio ends. Returns whether to stop.
    async fn while_handed_over(&mut self, item: Heard) -> bool {
        match item {
            Heard::End { at } => {
                self.caller_audio = at;
                return true;
            }
            Heard::Utterance(turn) => {
                if let Some(line) = transcribe_line(self.engines, &turn.utterance, "caller").await {
                    let _ = self.output.send(CallOutput::Heard(line.clone())).await;
                    self.after_handover.push(line);
                }
                // Still waiting for nothing, now that this utterance is accounted for.
                self.keep_waiting();
            }
            Heard::Dtmf { .. } | Heard::Partial(_) | Heard::NoInput { .. } => {}
            Heard::Resume => {
                self.handed_over = false;
                self.bot_done_at = None;
                let text = self.flow.dialog.prompts().transfer_returned();
                tracing::info!("the bot has the caller again");
                let at = self.caller_audio;
                if let Err(e) = self.speaker.say(SpeechKind::Reply, &text, || at).await {
                    tracing::error!(error = %e, "cannot say that the bot is back");
                }
                if let Some(armer) = self.no_input.as_mut() {
                    armer.arm(self.speaker.ends_at.max(at));
                }
            }
        }
        false
    }

    /// The dialog's decision on the next item: a key press, a silence, or an utterance
    /// (recognised first).
    async fn understand(&mut self, item: Heard) -> Result<Next, PipelineError> {
        let bot = self.bot.as_mut().ok_or_else(dialog_lost)?;
        let (turn, decided_at, input) = match item {
            Heard::End { at } => {
                self.caller_audio = at;
                return Ok(Next::Stop);
            }
            Heard::Resume | Heard::Partial(_) => return Ok(Next::Skip),
            Heard::Dtmf { digit, at } => match bot.on_dtmf(digit) {
                Some(turn) => (turn, at, TurnInput::Dtmf),
                None => {
                    self.keep_waiting();
                    return Ok(Next::Skip);
                }
            },
            Heard::NoInput { at } => match bot.on_no_input() {
                Some(turn) => (turn, at, TurnInput::NoInput),
                None => return Ok(Next::Skip),
            },
            Heard::Utterance(turn) => return self.understand_speech(*turn).await,
        };
        Ok(Next::Answer(Box::new(Understood {
            turn,
            decided_at,
            heard: None,
            input,
            turn_end: None,
            fault: None,
        })))
    }

    /// Recognises an utterance and asks the dialog (on the inference pool) what to do.
    async fn understand_speech(&mut self, turn: HeardTurn) -> Result<Next, PipelineError> {
        let turn_started = Instant::now();
        let HeardTurn {
            utterance: u,
            early,
            turn_end,
        } = turn;
        let mut fault = None;
        let (transcript, voice) = recognise(
            self.engines,
            self.vocabulary.as_ref(),
            &u,
            (early, self.expecting.get()),
            &mut fault,
        )
        .await;
        // A click or a breath at the start of a call can pass the VAD and come back from the
        // recogniser as a one-word hallucination ("you"). A very short utterance that the
        // recogniser itself doubts is noise, not a turn: the bot stays quiet instead of talking
        // over the caller with "could you repeat that?".
        if fault.is_none()
            && u.voiced < NOISE_MAX_DURATION
            && transcript.confidence < self.flow.escalation.min_asr_confidence
        {
            tracing::info!(
                text = %transcript.text,
                confidence = transcript.confidence,
                ms = u.voiced.as_millis() as u64,
                "short, doubtful utterance ignored as noise"
            );
            self.noise_ignored += 1;
            self.keep_waiting();
            return Ok(Next::Skip);
        }
        // A turn said over the bot's speech stopped it (barge-in).
        let config = &self.engines.config;
        if let Some(at) = barge_in_point(&config.media, &config.vad, &u) {
            self.speaker.cut(at).await;
        }
        // The dialog (intent model included) is CPU work too: the bot visits the pool and
        // comes back with its answer.
        let caller = CallerTurn {
            text: transcript.text.clone(),
            asr_confidence: transcript.confidence,
            words: transcript.words.clone(),
        };
        let mut bot = self.bot.take().ok_or_else(dialog_lost)?;
        let job = move || {
            let started = Instant::now();
            let turn = bot.on_utterance_with_voice(caller, voice.as_ref());
            (bot, turn, started.elapsed())
        };
        let (bot, bot_turn, intent_time) = self.engines.pool.run(job).await?;
        self.bot = Some(bot);
        let decided_at = u.decided_at;
        Ok(Next::Answer(Box::new(Understood {
            turn: bot_turn,
            decided_at,
            heard: Some((u, transcript, intent_time, turn_started)),
            input: TurnInput::Speech,
            turn_end,
            fault,
        })))
    }

    /// Speaks the reply (its first sentence synthesised before the report, the others while
    /// it plays), reports the turn, and re-arms the no-input clock. Returns whether the
    /// dialog is over.
    async fn answer(&mut self, u: Understood) -> bool {
        let Understood {
            turn,
            decided_at,
            heard,
            input,
            turn_end,
            mut fault,
        } = u;
        // The report's TTS time is the time to the first audio.
        let reply_started = Instant::now();
        let first_audio = if turn.reply.trim().is_empty() {
            None
        } else {
            match self.speaker.first(&turn.reply).await {
                Ok(audio) => audio,
                Err(e) => {
                    // The decision stands (an escalation still happens); only the audio is lost.
                    tracing::error!(error = %e, reply = %turn.reply, "speech synthesis failed");
                    fault = Some(format!("speech synthesis failed: {e}"));
                    None
                }
            }
        };
        let tts_time = reply_started.elapsed();
        let mut report = make_report(
            self.turns.len() + 1,
            &turn,
            heard.as_ref(),
            decided_at,
            tts_time,
        );
        report.fault = fault;
        report.turn_end = turn_end;
        report.input = input;
        log_decision(&report);
        crate::observe::metrics::observe_turn(&report.timings, heard.is_some());
        if let Some(audio) = first_audio {
            let ready_at = decided_at + report.timings.total;
            let speaker = &mut self.speaker;
            speaker
                .send(SpeechKind::Reply, &turn.reply, audio, ready_at, false)
                .await;
            if let Err(e) = speaker.rest(SpeechKind::Reply, &turn.reply, ready_at).await {
                tracing::error!(error = %e, reply = %turn.reply, "speech synthesis failed after the first sentence");
            }
        }
        let decision = match (&turn.escalation, turn.ends_call) {
            (Some(e), _) => Some(BotDecision::HandOver(e.clone())),
            (None, true) => Some(BotDecision::Finish),
            (None, false) => None,
        };
        // The report first: the call's hand-over context includes the turn that decided.
        let _ = self
            .output
            .send(CallOutput::Turn(Box::new(report.clone())))
            .await;
        if let Some(decision) = decision {
            let _ = self.output.send(CallOutput::Decision(decision)).await;
        }
        self.turns.push(report);
        if let Some(armer) = self.no_input.as_mut() {
            if turn.escalation.is_some() || turn.ends_call {
                armer.disarm();
            } else {
                armer.arm(self.speaker.ends_at.max(decided_at));
            }
        }
        if let Some(e) = &turn.escalation {
            self.outcome = CallOutcome::Escalated;
            self.escalation = Some(e.clone());
            self.bot_done_at = Some(decided_at);
            self.handed_over = self.transcribe_after_handover;
            return !self.transcribe_after_handover;
        }
        if turn.ends_call {
            self.outcome = CallOutcome::Completed;
            self.bot_done_at = Some(decided_at);
            return true;
        }
        false
    }
}
