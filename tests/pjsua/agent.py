"""A headless agent extension built on PJSIP's Python binding (pjsua2), for the transfer tests.

It listens on a UDP port like a desk phone: it rings, answers every call after --answer-after
seconds, records everything it hears into one WAV (and when it heard the far end speak, as spans
in its summary), and accepts calls that replace one of its
calls (RFC 3891 `Replaces`, the second half of an attended transfer). Once answered, it waits
for the far end to speak and fall quiet (a whisper), or --greet-wait seconds, then says its
greeting WAV; it hangs up --hangup-after seconds after answering (0: never), and it exits once
it has had a call and no call is left, or at --timeout. It prints one JSON summary line.

    agent.py --port 5070 --record agent.wav --greet hello.wav --answer-after 1

Everything runs on the main thread (`mainThreadOnly`, `libHandleEvents` polling), on loopback,
with no audio device; every wait is bounded.
"""

import argparse
import json
import sys
import time
import wave

import pjsua2 as pj

# The far end counts as speaking while the level of what it sends is above this (0-100).
SPEAKING_LEVEL = 2
QUIET_AFTER_SPEECH_S = 1.5
# Headers reported from each INVITE.
HEADERS = ("x-voicebot-call-id", "x-voicebot-team", "x-voicebot-flow", "user-to-user",
           "x-voicebot-context-url", "replaces", "referred-by", "from")


def wav_seconds(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / float(w.getframerate())


def headers_of(whole_msg):
    found = {}
    for line in whole_msg.split("\r\n")[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        if name.strip().lower() in HEADERS:
            found[name.strip().lower()] = value.strip()
    return found


class AgentCall(pj.Call):
    def __init__(self, agent, call_id, headers, replaced=False):
        super().__init__(agent, call_id)
        self.agent = agent
        self.info = {"headers": headers, "replaced": replaced, "state": "incoming"}
        self.media = None
        self.answered_at = None
        self.greeted = False
        # What the agent heard, as [start, end] seconds after the answer: a span ends after
        # QUIET_AFTER_SPEECH_S below SPEAKING_LEVEL.
        self.heard = []
        self.quiet_since = None

    def onCallState(self, prm):
        info = self.getInfo()
        self.info["state"] = info.stateText.lower()
        self.info["last_code"] = info.lastStatusCode
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self.answered_at = time.time()

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for i, m in enumerate(info.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media = self.getAudioMedia(i)
                self.media.startTransmit(self.agent.recorder)

    def onCallReplaceRequest(self, prm):
        # Accept: the new call takes this one's place.
        prm.statusCode = 200

    def onCallReplaced(self, prm):
        # pjsua answers the replacing call itself and ends this one; the new call needs its
        # own object, or pjsua2 hangs it up.
        new = AgentCall(self.agent, prm.newCallId, {}, replaced=True)
        new.answered_at = time.time()
        prm.newCall = new
        self.agent.calls.append(new)
        self.info["replaced_by_new_call"] = True

    def ended(self):
        return self.info["state"].startswith("disconn")

    def listen(self, now):
        """Follows the level of what the far end sends, into `heard` spans (at most 20)."""
        at = round(now - self.answered_at, 2)
        speaking = self.media.getTxLevel() > SPEAKING_LEVEL
        open_span = self.heard and self.heard[-1][1] is None
        if speaking:
            self.quiet_since = None
            if not open_span and len(self.heard) < 20:
                self.heard.append([at, None])
        elif open_span:
            if self.quiet_since is None:
                self.quiet_since = at
            elif at - self.quiet_since >= QUIET_AFTER_SPEECH_S:
                self.heard[-1][1] = self.quiet_since
                self.quiet_since = None
        self.info["heard"] = [[s, e if e is not None else at] for s, e in self.heard]


class Agent(pj.Account):
    def __init__(self, args, recorder):
        super().__init__()
        self.args = args
        self.recorder = recorder
        self.calls = []
        self.pending_answer = []

    def onIncomingCall(self, prm):
        call = AgentCall(self, prm.callId, headers_of(prm.rdata.wholeMsg))
        self.calls.append(call)
        if self.args.reject:
            busy = pj.CallOpParam()
            busy.statusCode = self.args.reject
            call.answer(busy)
            return
        ring = pj.CallOpParam()
        ring.statusCode = 180
        call.answer(ring)
        self.pending_answer.append((time.time() + self.args.answer_after, call))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--greet", help="WAV said once per answered call")
    ap.add_argument("--greet-wait", type=float, default=6.0,
                    help="longest wait for the far end's whisper to end before greeting")
    ap.add_argument("--greet-after", type=float, default=0.0,
                    help="greet this long after answering, whatever is heard (0: after the whisper)")
    ap.add_argument("--answer-after", type=float, default=1.0)
    ap.add_argument("--reject", type=int, default=0, help="refuse every call with this status")
    ap.add_argument("--hangup-after", type=float, default=0.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.medConfig.clockRate = 16000
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = args.port
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()

    recorder = pj.AudioMediaRecorder()
    recorder.createRecorder(args.record)
    acfg = pj.AccountConfig()
    acfg.idUri = "sip:agent@127.0.0.1:%d" % args.port
    agent = Agent(args, recorder)
    agent.create(acfg)
    players = []
    started = time.time()
    summary = {"ready": True}
    print(json.dumps(summary))
    sys.stdout.flush()
    spoke = {}
    quiet_since = {}
    try:
        while time.time() - started < args.timeout:
            ep.libHandleEvents(20)
            now = time.time()
            for due, call in list(agent.pending_answer):
                if now >= due:
                    agent.pending_answer.remove((due, call))
                    if not call.ended():
                        ok = pj.CallOpParam()
                        ok.statusCode = 200
                        call.answer(ok)
            for call in agent.calls:
                if call.ended() or call.media is None or call.answered_at is None:
                    continue
                key = id(call)
                call.listen(now)
                if args.greet and not call.greeted:
                    level = call.media.getTxLevel()
                    if level > SPEAKING_LEVEL:
                        spoke[key] = True
                        quiet_since.pop(key, None)
                    elif spoke.get(key):
                        quiet_since.setdefault(key, now)
                    whisper_over = spoke.get(key) and now - quiet_since.get(key, now) >= QUIET_AFTER_SPEECH_S
                    if args.greet_after:
                        due = now - call.answered_at >= args.greet_after
                    else:
                        due = whisper_over or now - call.answered_at >= args.greet_wait
                    if due:
                        call.greeted = True
                        call.info["greeted_at_s"] = round(now - started, 2)
                        player = pj.AudioMediaPlayer()
                        player.createPlayer(args.greet, pj.PJMEDIA_FILE_NO_LOOP)
                        player.startTransmit(call.media)
                        players.append(player)
                if args.hangup_after and now - call.answered_at >= args.hangup_after:
                    call.info["hung_up_by_agent"] = True
                    call.hangup(pj.CallOpParam(True))
            had_call = any(c.answered_at for c in agent.calls) or (args.reject and agent.calls)
            if had_call and all(c.ended() for c in agent.calls) and not agent.pending_answer:
                # Linger a moment for a replacing INVITE that may follow a BYE.
                ep.libHandleEvents(300)
                if all(c.ended() for c in agent.calls):
                    break
        summary = {"calls": [c.info for c in agent.calls],
                   "duration_s": round(time.time() - started, 2),
                   "recording": args.record}
    except Exception as e:  # reported in the summary; the test decides
        summary = {"error": str(e), "calls": [c.info for c in agent.calls]}
    finally:
        for call in agent.calls:
            if not call.ended():
                call.hangup(pj.CallOpParam(True))
        deadline = time.time() + 2
        while time.time() < deadline and not all(c.ended() for c in agent.calls):
            ep.libHandleEvents(20)
        players = []
        recorder = None
        agent.recorder = None
        agent.calls = []
        agent.shutdown()
        ep.libDestroy()
        print(json.dumps(summary))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
