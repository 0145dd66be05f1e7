//! Our own INVITEs challenged with `401 Unauthorized` or `407 Proxy Authentication Required`
//! (RFC 3261 22.2/22.3): a PBX or trunk challenges every INVITE, so an agent call behind one
//! only gets through when the gateway answers with its credentials.
//!
//! The challenge is acknowledged on its own transaction like any failure (17.1.1.3), then the
//! INVITE goes again with the same Call-ID, From tag and To, a new branch, CSeq+1 and the
//! `Authorization`/`Proxy-Authorization` header from the call's [`DigestClient`], which answers
//! each realm once (again only for `stale=true`): a wrong password ends in a refusal, never a
//! loop. The challenged transactions linger until timer D to acknowledge retransmitted
//! challenges; a CANCEL or 2xx ACK goes for the latest INVITE and carries its credentials.

use std::time::Instant;

use super::{random_token, CallHandle, SipEndpoint};
use crate::sip::digest_client::{new_cnonce, DigestChallenge};
use crate::sip::escape::escaped;
use crate::sip::message::SipMessage;
use crate::sip::transaction::{InviteClientState, InviteClientTransaction};

/// The headers carrying our credentials.
const CREDENTIAL_HEADERS: [&str; 2] = ["Authorization", "Proxy-Authorization"];

/// Copies the credentials of `invite` into `request` (its CANCEL or the ACK of its 2xx).
pub(super) fn copy_credentials(invite: &SipMessage, request: &mut SipMessage) {
    for h in &invite.headers {
        if CREDENTIAL_HEADERS
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            request.push(&h.name, h.value.clone());
        }
    }
}

/// The raw values of header `name` (a challenge contains commas, so no list splitting).
fn raw_values<'a>(msg: &'a SipMessage, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    msg.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

impl SipEndpoint {
    /// A `code` (401/407) answer to the INVITE of call `handle`: acknowledged, and the INVITE
    /// sent again with credentials. Returns false when the challenge cannot be answered (no
    /// credentials, refused credentials, an unusable challenge, a call being cancelled): the
    /// caller then ends the call as refused with `code`.
    pub(super) fn answer_outbound_challenge(
        &mut self,
        handle: CallHandle,
        msg: &SipMessage,
        code: u16,
        now: Instant,
    ) -> bool {
        let sip_port = self.config.sip_port;
        let Some(p) = self.outbound.get_mut(&handle) else {
            return false;
        };
        if matches!(
            p.txn.state(),
            InviteClientState::Completed | InviteClientState::Terminated
        ) || p.cancel_wanted
            || p.cancel.is_some()
        {
            return false;
        }
        let challenge_header = if code == 401 {
            "WWW-Authenticate"
        } else {
            "Proxy-Authenticate"
        };
        let realm = DigestChallenge::strongest(raw_values(msg, challenge_header))
            .map(|c| c.realm)
            .unwrap_or_default();
        let Some((owner, client)) = p.auth.as_mut() else {
            tracing::warn!(
                call = %handle, target = %escaped(&p.target), realm = %escaped(&realm), code,
                "our INVITE was challenged and no credentials are configured for it; the call fails"
            );
            return false;
        };
        let uri = p.invite.request_uri().unwrap_or("").to_string();
        let header = match client.answer(
            code,
            raw_values(msg, challenge_header),
            "INVITE",
            &uri,
            &new_cnonce(),
        ) {
            Ok(header) => header,
            Err(e) => {
                tracing::warn!(
                    call = %handle, credentials = %owner, target = %escaped(&p.target),
                    realm = %escaped(&realm), user = %escaped(client.user()), code, error = %e,
                    "cannot answer the challenge to our INVITE; the call fails"
                );
                return false;
            }
        };
        tracing::info!(
            call = %handle, credentials = %owner, target = %escaped(&p.target),
            realm = %escaped(&realm), user = %escaped(client.user()), code,
            "answering the digest challenge to our INVITE"
        );
        // The challenge is a final response of its own transaction: acknowledge it there.
        let ack = Self::ack_for(p, msg, None, sip_port);
        let first_ack = p.txn.on_final_failure(ack, now);
        let branch = format!("z9hG4bK{}", random_token());
        let mut invite = p.invite.clone();
        let seq = invite.cseq().map_or(1, |c| c.seq).saturating_add(1);
        let mut via_done = false;
        for h in invite.headers.iter_mut() {
            if !via_done && h.name.eq_ignore_ascii_case("Via") {
                h.value = h.value.replace(&p.branch, &branch);
                via_done = true;
            } else if h.name.eq_ignore_ascii_case("CSeq") {
                h.value = format!("{seq} INVITE");
            }
        }
        // A new answer for this header replaces the old one; another realm's (a proxy's and
        // the PBX's) stays.
        invite
            .headers
            .retain(|h| !h.name.eq_ignore_ascii_case(header.name));
        invite.push(header.name, header.value);
        let bytes = invite.to_bytes();
        let fresh =
            InviteClientTransaction::new(bytes.clone(), p.peer.transport.is_reliable(), now);
        let old = std::mem::replace(&mut p.txn, fresh);
        let old_branch = std::mem::replace(&mut p.branch, branch);
        p.challenged.push((old_branch, old));
        p.invite = invite;
        let peer = p.peer;
        if let Some(ack) = first_ack {
            self.send(peer, ack);
        }
        self.send(peer, bytes);
        true
    }

    /// A response on the transaction of an earlier, challenged INVITE of a call we place (a
    /// retransmitted 401/407): acknowledged again. False when `branch` is no such transaction.
    pub(super) fn challenged_response(&mut self, branch: &str, code: u16, now: Instant) -> bool {
        let found = self.outbound.values_mut().find_map(|p| {
            let peer = p.peer;
            let (_, txn) = p.challenged.iter_mut().find(|(b, _)| b == branch)?;
            // The transaction is Completed: it hands back the ACK it sent.
            Some((
                peer,
                (code >= 300).then(|| txn.on_final_failure(Vec::new(), now)),
            ))
        });
        match found {
            None => false,
            Some((peer, Some(Some(ack)))) => {
                self.send(peer, ack);
                true
            }
            Some(_) => {
                tracing::debug!(code, "response to a challenged INVITE needs nothing");
                true
            }
        }
    }
}
