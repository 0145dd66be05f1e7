//! A typed conversation with the bot: each caller turn is text, as if recognised perfectly.
//!
//! A flow editor wants to know what the dialog makes of a sentence (intent, slots, reply,
//! escalation) without the noise of speech recognition and in milliseconds, not seconds. This
//! runs the same [`Bot`] a call runs, with the flow's escalation settings, on the shared
//! inference pool (the intent model is CPU work), and reports each turn with the
//! [`TurnReport`]/[`CallReport`] records of `voicebot simulate --json`, so the two read the same.
//! What differs from a spoken run: the ASR confidence is 1, there is no media time (turns start
//! and end at 0 ms), and no audio is synthesised (TTS time 0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dialog::{Bot, CallerTurn};
use crate::flows::Flow;
use crate::pipeline::{make_report, Engines, PipelineError};
use crate::report::{CallOutcome, CallReport};

/// A chat's results.
#[derive(Debug, Clone)]
pub struct ChatRun {
    pub report: CallReport,
    /// Caller turns left unsaid because the bot handed the call over or ended it first.
    pub unprocessed_turns: usize,
}

/// Runs `turns` through a fresh bot of `flow`.
pub async fn simulate_chat(
    engines: &Engines,
    flow: Arc<Flow>,
    turns: &[String],
) -> Result<ChatRun, PipelineError> {
    let mut bot = Bot::new(flow.dialog.clone(), flow.escalation.clone());
    let greeting = bot.greeting();
    let mut reports = Vec::with_capacity(turns.len());
    let mut outcome = CallOutcome::CallerHungUp;
    let mut escalation = None;
    for text in turns {
        if outcome != CallOutcome::CallerHungUp {
            break;
        }
        let caller = CallerTurn::new(text.clone(), 1.0);
        let job = move || {
            let started = Instant::now();
            let turn = bot.on_utterance(caller);
            (bot, turn, started.elapsed())
        };
        let (returned, turn, intent_time) = engines.pool.run(job).await?;
        bot = returned;
        // A typed turn: no audio, so no endpointer or ASR figures; the text is the transcript.
        let mut report = make_report(
            reports.len() + 1,
            &turn,
            None,
            Duration::ZERO,
            Duration::ZERO,
        );
        report.transcript = text.clone();
        report.timings.intent = intent_time;
        report.timings.total = intent_time;
        reports.push(report);
        if let Some(e) = turn.escalation {
            outcome = CallOutcome::Escalated;
            escalation = Some(e);
        } else if turn.ends_call {
            outcome = CallOutcome::Completed;
        }
    }
    let unprocessed_turns = turns.len() - reports.len();
    Ok(ChatRun {
        report: CallReport {
            flow: flow.name.clone(),
            greeting,
            turns: reports,
            outcome,
            escalation,
            caller_audio: Duration::ZERO,
            unprocessed_after_end: Duration::ZERO,
            noise_ignored: 0,
            after_handover: Vec::new(),
        },
        unprocessed_turns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use crate::flows::{as_is, FlowSet, FlowStore};
    use crate::speech::asr::{AsrError, Expectation, Pass, SpeechRecognizer, Transcript};
    use crate::speech::pool::InferencePool;
    use crate::speech::tts::{Speech, SpeechSynthesizer, TtsError};
    use crate::speech::tts_cache::{CacheLimits, CachedSynthesizer};
    use crate::speech::voice::VoiceStyle;

    struct NoAsr;
    impl SpeechRecognizer for NoAsr {
        fn decode_expecting(
            &self,
            _: &[f32],
            _: Pass,
            _: Expectation,
        ) -> Result<Transcript, AsrError> {
            Err(AsrError::Inference("not in a chat".into()))
        }
    }
    struct NoTts;
    impl SpeechSynthesizer for NoTts {
        fn synthesize_in(&self, _: &str, _: &VoiceStyle) -> Result<Speech, TtsError> {
            Err(TtsError::Failed {
                program: "none".into(),
                reason: "not in a chat".into(),
            })
        }
    }

    fn engines() -> Engines {
        let flows = FlowSet::embedded(&Default::default(), &as_is).expect("embedded flow");
        Engines {
            config: Arc::new(GatewayConfig::default()),
            asr: Arc::new(NoAsr),
            tts: Arc::new(CachedSynthesizer::new(
                Arc::new(NoTts),
                CacheLimits::default(),
            )),
            flows: Arc::new(FlowStore::new(flows)),
            pool: InferencePool::new(1, 4),
            turn_end: None,
        }
    }

    #[tokio::test]
    async fn order_status_then_number_is_answered_from_the_lookup() {
        let e = engines();
        let flow = e.flows.current().default_flow();
        let run = simulate_chat(
            &e,
            flow,
            &["where is my order".to_string(), "45712".to_string()],
        )
        .await
        .expect("runs");
        let r = &run.report;
        assert_eq!(r.turns.len(), 2);
        assert_eq!(r.turns[0].intent, "order_status");
        assert!(r.turns[1].reply.contains("Thursday"), "{:?}", r.turns[1]);
        assert_eq!(r.outcome, CallOutcome::CallerHungUp);
        assert_eq!(run.unprocessed_turns, 0);
    }

    #[tokio::test]
    async fn an_escalation_ends_the_chat_and_says_why() {
        let e = engines();
        let flow = e.flows.current().default_flow();
        let turns = [
            "I want to speak to a human".to_string(),
            "hello?".to_string(),
        ];
        let run = simulate_chat(&e, flow, &turns).await.expect("runs");
        assert_eq!(run.report.outcome, CallOutcome::Escalated);
        assert!(run.report.escalation.is_some());
        assert_eq!(run.unprocessed_turns, 1);
        let json = serde_json::to_value(&run.report).expect("json");
        assert_eq!(json["escalation"]["reason"], "explicit_request");
    }
}
