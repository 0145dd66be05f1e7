//! What the bot says: reply texts from `prompts/en.toml`, validated against the intents.
//!
//! Wording changes more often than logic and is not the programmer's call, so every sentence
//! the bot speaks lives in one TOML file: the greeting, the clarification prompts, the transfer
//! announcement (naming the team from `[teams]`), the questions that fill a slot, and one reply
//! per intent. Replies are [`Template`]s with `{slot}` placeholders; validation makes sure each
//! intent has its reply, every placeholder names a slot the intent is guaranteed to have, and
//! every skill has a team name, reporting the file and line of any mistake.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::intent::{is_identifier, IntentEscalation, IntentsFile};
use super::slots::{self, KNOWN_SLOTS};
use crate::config_file::{self, ConfigError};

/// The placeholder of the transfer announcement.
pub const TEAM: &str = "team";

/// The content of a prompts file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsFile {
    /// Said when the call is answered.
    pub greeting: String,
    /// Said when the bot did not understand the request.
    pub clarify: String,
    /// Said when the audio was too unclear to trust (low ASR confidence).
    pub repeat: String,
    /// Said when handing over; `{team}` is the team name of the skill.
    pub transfer: String,
    /// Said when no agent of the team answered; `{team}` as in `transfer`.
    #[serde(default = "default_transfer_failed")]
    pub transfer_failed: String,
    /// Said to the agent only, when answering a transfer, before the caller is put through
    /// (`[handover.transfer] whisper`): `{request}` what the caller wants, `{details}` the
    /// collected data, `{reason}` why the bot handed over.
    #[serde(default = "default_transfer_whisper")]
    pub transfer_whisper: String,
    /// Said to the caller when the agent hung up and the bot takes the call back
    /// (`[handover.transfer] after_agent_hangup = "bot"`).
    #[serde(default = "default_transfer_returned")]
    pub transfer_returned: String,
    /// Spoken team name of every skill (`billing = "billing"`).
    pub teams: BTreeMap<String, String>,
    /// Questions for slots that intents require.
    #[serde(default)]
    pub slots: BTreeMap<String, SlotPrompts>,
    /// One reply per intent that does not escalate, keyed by intent name.
    pub replies: BTreeMap<String, String>,
    /// What the bot says when the caller stays silent.
    #[serde(default)]
    pub no_input: NoInputPrompts,
    /// Asked when the caller may be asking for a person but the bot is not sure (a short or
    /// doubtful turn): a yes hands over, a no goes on with the bot.
    #[serde(default = "default_confirm_person")]
    pub confirm_person: String,
    /// Said when the caller answers `confirm_person` with no.
    #[serde(default = "default_confirm_person_no")]
    pub confirm_person_no: String,
}

fn default_confirm_person() -> String {
    "You'd like to speak to a colleague, is that right?".into()
}

fn default_confirm_person_no() -> String {
    "Alright. What can I help you with?".into()
}

/// What the bot says to a silent caller (`[no_input]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoInputPrompts {
    /// Re-prompts, one per silence in a row (the last is repeated when more are allowed).
    pub prompts: Vec<String>,
    /// Said before the call is handed over for silence; `{team}` as in `transfer`.
    pub transfer: String,
    /// Said before hanging up for silence (`no_input_action = "hangup"`).
    pub goodbye: String,
}

impl Default for NoInputPrompts {
    fn default() -> Self {
        NoInputPrompts {
            prompts: vec![
                "Are you still there? How can I help you today?".into(),
                "I'm sorry, I can't hear anything. If you're speaking, please speak a little louder, or press 0 to speak to a colleague.".into(),
            ],
            transfer: "I still can't hear you, so I'm putting you through to a colleague from our {team} team. Please hold the line.".into(),
            goodbye: "I can't hear you, so I'll end the call now. Please call us again any time. Goodbye.".into(),
        }
    }
}

fn default_transfer_failed() -> String {
    "I'm sorry, nobody from our {team} team is available right now. We have noted your request, \
     and a colleague will call you back as soon as possible. Thank you for your patience. Goodbye."
        .into()
}

fn default_transfer_whisper() -> String {
    "Voice bot transfer: the caller {request}.{details}".into()
}

fn default_transfer_returned() -> String {
    "You are back with the virtual assistant. Is there anything else I can help you with?".into()
}

/// The questions for one slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotPrompts {
    /// First question.
    pub ask: String,
    /// Asked again when the answer did not contain the slot.
    pub reask: String,
    /// Re-prompts while this slot's question goes unanswered, one per silence in a row
    /// (the last is repeated); the general `[no_input] prompts` when empty.
    #[serde(default)]
    pub no_input: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Slot(String),
}

/// A reply text with `{name}` placeholders (`{{` and `}}` stand for literal braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template; the error says what is malformed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed placeholder `{{{name}`")),
                        }
                    }
                    if !is_identifier(&name) {
                        return Err(format!("`{{{name}}}` is not a placeholder name (write `{{{{` for a literal brace)"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Slot(name));
                }
                '}' => return Err("stray `}` (write `}}` for a literal brace)".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The placeholder names, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Slot(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Fills the placeholders with `values`, each spoken as [`slots::spoken`] says (order numbers
    /// digit by digit). A missing value, which validation rules out, renders as nothing.
    pub fn render(&self, values: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Slot(name) => {
                    if let Some(v) = values.get(name) {
                        out.push_str(&slots::spoken(name, v));
                    }
                }
            }
        }
        out
    }
}

/// Validated prompts, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    greeting: Template,
    clarify: Template,
    repeat: Template,
    transfer: Template,
    transfer_failed: Template,
    transfer_whisper: Template,
    transfer_returned: Template,
    teams: BTreeMap<String, String>,
    slots: BTreeMap<String, (Template, Template)>,
    /// Per slot: the re-prompts while its question goes unanswered.
    slot_no_input: BTreeMap<String, Vec<Template>>,
    replies: BTreeMap<String, Template>,
    no_input: Vec<Template>,
    no_input_transfer: Template,
    no_input_goodbye: Template,
    confirm_person: Template,
    confirm_person_no: Template,
}

impl Prompts {
    /// Parses and validates prompts text against the (validated) intents.
    pub fn from_text(file: &Path, text: &str, intents: &IntentsFile) -> Result<Self, ConfigError> {
        let raw: PromptsFile = config_file::parse(file, text)?;
        let bad = |field: &str, reason: String| ConfigError::invalid(file, text, field, reason);
        let template =
            |field: &str, source: &str, allowed: &[&str]| -> Result<Template, ConfigError> {
                if source.trim().is_empty() {
                    return Err(bad(field, "must not be empty".into()));
                }
                let t = Template::parse(source).map_err(|reason| bad(field, reason))?;
                if let Some(p) = t.placeholders().find(|p| !allowed.contains(p)) {
                    let allowed = if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed
                            .iter()
                            .map(|a| format!("{{{a}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(bad(
                        field,
                        format!("unknown placeholder `{{{p}}}`; allowed here: {allowed}"),
                    ));
                }
                Ok(t)
            };
        let greeting = template("greeting", &raw.greeting, &[])?;
        let clarify = template("clarify", &raw.clarify, &[])?;
        let repeat = template("repeat", &raw.repeat, &[])?;
        let transfer = template("transfer", &raw.transfer, &[TEAM])?;
        let transfer_failed = template("transfer_failed", &raw.transfer_failed, &[TEAM])?;
        let transfer_whisper = template(
            "transfer_whisper",
            &raw.transfer_whisper,
            &["request", "details", "reason"],
        )?;
        let transfer_returned = template("transfer_returned", &raw.transfer_returned, &[])?;

        for (skill, team) in &raw.teams {
            if !intents.skills.contains(skill) {
                return Err(bad(
                    &format!("teams.{skill}"),
                    format!(
                        "unknown skill `{skill}`; skills in the intents file: {}",
                        intents.skills.join(", ")
                    ),
                ));
            }
            if team.trim().is_empty() {
                return Err(bad(
                    &format!("teams.{skill}"),
                    "team name must not be empty".into(),
                ));
            }
        }
        if let Some(skill) = intents.skills.iter().find(|s| !raw.teams.contains_key(*s)) {
            return Err(bad(
                &format!("teams.{skill}"),
                format!("no team name for skill `{skill}`"),
            ));
        }

        let templates = |field: &str, list: &[String]| -> Result<Vec<Template>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, source)| template(&format!("{field}.{i}"), source, &[]))
                .collect()
        };
        let no_input = templates("no_input.prompts", &raw.no_input.prompts)?;
        if no_input.is_empty() {
            return Err(bad(
                "no_input.prompts",
                "needs at least one re-prompt".into(),
            ));
        }
        let no_input_transfer = template("no_input.transfer", &raw.no_input.transfer, &[TEAM])?;
        let no_input_goodbye = template("no_input.goodbye", &raw.no_input.goodbye, &[])?;
        let confirm_person = template("confirm_person", &raw.confirm_person, &[])?;
        let confirm_person_no = template("confirm_person_no", &raw.confirm_person_no, &[])?;
        let mut slot_no_input = BTreeMap::new();
        let mut slot_prompts = BTreeMap::new();
        for (slot, prompts) in &raw.slots {
            if !KNOWN_SLOTS.contains(&slot.as_str()) {
                return Err(bad(
                    &format!("slots.{slot}"),
                    format!(
                        "unknown slot `{slot}`; known slots: {}",
                        KNOWN_SLOTS.join(", ")
                    ),
                ));
            }
            let ask = template(&format!("slots.{slot}.ask"), &prompts.ask, &[])?;
            let reask = template(&format!("slots.{slot}.reask"), &prompts.reask, &[])?;
            slot_prompts.insert(slot.clone(), (ask, reask));
            let silent = templates(&format!("slots.{slot}.no_input"), &prompts.no_input)?;
            if !silent.is_empty() {
                slot_no_input.insert(slot.clone(), silent);
            }
        }
        for intent in &intents.intents {
            if let Some(slot) = intent.requires.iter().find(|s| !raw.slots.contains_key(*s)) {
                return Err(bad(
                    &format!("slots.{slot}"),
                    format!(
                        "no [slots.{slot}] questions, but intent `{}` requires `{slot}`",
                        intent.name
                    ),
                ));
            }
        }

        let mut replies = BTreeMap::new();
        for (name, source) in &raw.replies {
            let field = format!("replies.{name}");
            let Some(intent) = intents.intent(name) else {
                return Err(bad(
                    &field,
                    format!("no intent `{name}` in the intents file"),
                ));
            };
            if intent.escalate != IntentEscalation::No {
                return Err(bad(&field, format!("intent `{name}` escalates, so the transfer announcement is said instead; remove this reply")));
            }
            let t = template(&field, source, KNOWN_SLOTS)?;
            if let Some(p) = t
                .placeholders()
                .find(|p| !intent.requires.iter().any(|r| r == p))
            {
                return Err(bad(&field, format!("slot `{{{p}}}` may be empty here: intent `{name}` does not require it (add it to its `requires`)")));
            }
            replies.insert(name.clone(), t);
        }
        if let Some(intent) = intents
            .intents
            .iter()
            .find(|i| i.escalate == IntentEscalation::No && !raw.replies.contains_key(&i.name))
        {
            // The field does not exist, so the line is that of the [replies] table.
            return Err(bad(
                &format!("replies.{}", intent.name),
                format!("missing reply for intent `{}`", intent.name),
            ));
        }

        Ok(Prompts {
            greeting,
            clarify,
            repeat,
            transfer,
            transfer_failed,
            transfer_whisper,
            transfer_returned,
            teams: raw.teams,
            slots: slot_prompts,
            slot_no_input,
            replies,
            no_input,
            no_input_transfer,
            no_input_goodbye,
            confirm_person,
            confirm_person_no,
        })
    }

    /// The greeting.
    pub fn greeting(&self) -> String {
        self.greeting.render(&BTreeMap::new())
    }

    /// The clarification prompt.
    pub fn clarify(&self) -> String {
        self.clarify.render(&BTreeMap::new())
    }

    /// The "please repeat" prompt for unclear audio.
    pub fn repeat(&self) -> String {
        self.repeat.render(&BTreeMap::new())
    }

    /// The spoken name of a skill's team (the skill itself if unknown).
    pub fn team(&self, skill: &str) -> String {
        self.teams
            .get(skill)
            .cloned()
            .unwrap_or_else(|| skill.to_string())
    }

    /// The transfer announcement naming the team of `skill`.
    pub fn transfer(&self, skill: &str) -> String {
        let mut values = BTreeMap::new();
        values.insert(TEAM.to_string(), self.team(skill));
        self.transfer.render(&values)
    }

    /// What the caller hears when no agent of `skill`'s team answered.
    pub fn transfer_failed(&self, skill: &str) -> String {
        let mut values = BTreeMap::new();
        values.insert(TEAM.to_string(), self.team(skill));
        self.transfer_failed.render(&values)
    }

    /// What the agent hears before the caller is put through; `values` has `request`,
    /// `details` and `reason` (see [`crate::handover::context::whisper_values`]).
    pub fn transfer_whisper(&self, values: &BTreeMap<String, String>) -> String {
        self.transfer_whisper.render(values)
    }

    /// What the caller hears when the bot takes the call back from the agent.
    pub fn transfer_returned(&self) -> String {
        self.transfer_returned.render(&BTreeMap::new())
    }

    /// The first question for a slot.
    pub fn ask(&self, slot: &str) -> Option<String> {
        self.slots
            .get(slot)
            .map(|(ask, _)| ask.render(&BTreeMap::new()))
    }

    /// The repeated question for a slot.
    pub fn reask(&self, slot: &str) -> Option<String> {
        self.slots
            .get(slot)
            .map(|(_, reask)| reask.render(&BTreeMap::new()))
    }

    /// The re-prompt for the `attempt`-th silence in a row (1-based) while the bot waits for
    /// an answer to `slot`'s question (or for anything, with `None`); the last configured
    /// re-prompt is repeated for later attempts.
    pub fn no_input(&self, slot: Option<&str>, attempt: u32) -> String {
        let list = slot
            .and_then(|s| self.slot_no_input.get(s))
            .unwrap_or(&self.no_input);
        let index = (attempt.max(1) as usize - 1).min(list.len().saturating_sub(1));
        list.get(index)
            .map(|t| t.render(&BTreeMap::new()))
            .unwrap_or_default()
    }

    /// Said before a silent caller is handed to `skill`'s team.
    pub fn no_input_transfer(&self, skill: &str) -> String {
        let mut values = BTreeMap::new();
        values.insert(TEAM.to_string(), self.team(skill));
        self.no_input_transfer.render(&values)
    }

    /// Said before the bot hangs up on a silent caller.
    pub fn no_input_goodbye(&self) -> String {
        self.no_input_goodbye.render(&BTreeMap::new())
    }

    /// The question that checks a doubtful request for a person.
    pub fn confirm_person(&self) -> String {
        self.confirm_person.render(&BTreeMap::new())
    }

    /// Said when the caller does not want a person after all.
    pub fn confirm_person_no(&self) -> String {
        self.confirm_person_no.render(&BTreeMap::new())
    }

    /// Every prompt whose words never depend on the caller, the most frequent first: the
    /// greeting, the clarification and repeat prompts, the slot questions, the replies without
    /// placeholders, the transfer announcement and apology for every team and the return
    /// prompt. The voice keeps these ready before calls need them.
    pub fn fixed(&self) -> Vec<String> {
        let none = BTreeMap::new();
        let mut texts = vec![self.greeting(), self.clarify(), self.repeat()];
        for (ask, reask) in self.slots.values() {
            texts.push(ask.render(&none));
            texts.push(reask.render(&none));
        }
        texts.push(self.confirm_person());
        texts.push(self.confirm_person_no());
        let silences = self.slot_no_input.values().flatten();
        texts.extend(
            self.no_input
                .iter()
                .chain(silences)
                .map(|t| t.render(&none)),
        );
        texts.push(self.no_input_goodbye());
        texts.extend(
            self.replies
                .values()
                .filter(|t| t.placeholders().next().is_none())
                .map(|t| t.render(&none)),
        );
        for skill in self.teams.keys() {
            texts.push(self.transfer(skill));
            texts.push(self.transfer_failed(skill));
            texts.push(self.no_input_transfer(skill));
        }
        texts.push(self.transfer_returned());
        let mut seen = std::collections::HashSet::new();
        texts.retain(|t| seen.insert(t.clone()));
        texts
    }

    /// An intent's reply with slot values filled in.
    pub fn reply(&self, intent: &str, slots: &BTreeMap<String, String>) -> Option<String> {
        self.replies.get(intent).map(|t| t.render(slots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_prompts_are_those_without_caller_data_greeting_first() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let intents_path = root.join("sip-config/intents.toml");
        let intents_text = std::fs::read_to_string(&intents_path).expect("intents");
        let intents = IntentsFile::from_text(&intents_path, &intents_text).expect("valid");
        let prompts_path = root.join("prompts/en.toml");
        let text = std::fs::read_to_string(&prompts_path).expect("prompts");
        let prompts = Prompts::from_text(&prompts_path, &text, &intents).expect("valid");
        let fixed = prompts.fixed();
        assert_eq!(fixed[0], prompts.greeting());
        assert!(fixed.contains(&prompts.transfer("billing")));
        assert!(fixed.contains(&prompts.transfer_failed("complaints")));
        assert!(fixed.contains(&prompts.ask("order_number").expect("asked")));
        let goodbye = prompts.reply("goodbye", &BTreeMap::new()).expect("reply");
        assert!(fixed.contains(&goodbye));
        // The order-status reply carries the caller's number: not fixed.
        assert!(
            fixed.iter().all(|t| !t.contains("noted order number")),
            "{fixed:?}"
        );
        assert!(fixed.iter().all(|t| !t.contains('{')), "{fixed:?}");
        let unique: std::collections::HashSet<_> = fixed.iter().collect();
        assert_eq!(unique.len(), fixed.len());
    }

    #[test]
    fn templates_parse_and_render() {
        let t = Template::parse("Order {order_number}, {{literal}}.").expect("valid");
        assert_eq!(t.placeholders().collect::<Vec<_>>(), ["order_number"]);
        let mut v = BTreeMap::new();
        v.insert("order_number".to_string(), "1234".to_string());
        assert_eq!(t.render(&v), "Order 1 2 3 4, {literal}.");
        assert_eq!(t.render(&BTreeMap::new()), "Order , {literal}.");
        for bad in ["{unclosed", "a } b", "{Bad Name}", "{}"] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
    }
}
