"""A headless SIP caller built on PJSIP's Python binding (pjsua2), for tests/sip_pjsua.rs.

It calls the gateway, records everything the gateway says into a WAV, and takes turns like a
person: it waits until the bot has spoken and then been quiet, then plays the next WAV (or sends
an RFC 4733 DTMF digit), and finally hangs up, or notices the gateway's BYE. It prints one JSON
summary line on stdout.

When the gateway transfers the call (REFER, blind or with Replaces), it does what a phone does:
it calls the target, reports progress in NOTIFYs, and from then on talks on (and records) the
new call.

    caller.py --port 5060 --record bot.wav --turn say:q1.wav --turn say:q2.wav --turn dtmf:0

Over TLS (`--transport tls`), the gateway's certificate is verified against `--tls-ca`, and
`--tls-cert`/`--tls-key` are the caller's client certificate (mutual TLS). `--connect-only`
hangs up as soon as the call is set up; the summary's `setup_ms` is the time from sending the
INVITE to the call's confirmation (200 OK received, ACK sent).

Everything runs on the main thread (pjsua2's `mainThreadOnly` with `libHandleEvents` polling);
no audio device (null device); loopback only; every wait is bounded by --timeout.
"""

import argparse
import json
import sys
import time
import wave

import pjsua2 as pj

# The bot counts as speaking while the level of what it sends us is above this. In pjsua2,
# AudioMedia.getTxLevel() is what the far end sends (0-100); getRxLevel() is what we send.
SPEAKING_LEVEL = 2
# The bot has finished its turn after this much quiet following speech.
QUIET_AFTER_SPEECH_S = 1.5


class Call(pj.Call):
    def __init__(self, account):
        super().__init__(account)
        self.account = account
        self.state = "null"
        self.last_code = 0
        self.media = None
        self.transferred_to = None
        self.transfer = None

    def onCallTransferRequest(self, prm):
        # Accept (202) and place the new call on an object of our own.
        new = Call(self.account)
        prm.newCall = new
        self.transferred_to = new
        self.transfer = {"to": prm.dstUri, "statuses": []}

    def onCallTransferStatus(self, prm):
        if self.transfer is not None:
            self.transfer["statuses"].append(prm.statusCode)
            if prm.finalNotify:
                self.transfer["final"] = prm.statusCode

    def onCallState(self, prm):
        info = self.getInfo()
        self.state = info.stateText.lower()
        self.last_code = info.lastStatusCode
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and getattr(self, "confirmed_at", None) is None:
            self.confirmed_at = time.time()

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for i, m in enumerate(info.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media = self.getAudioMedia(i)


def wav_seconds(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / float(w.getframerate())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--turn", action="append", default=[],
                    help="say:FILE.wav, dtmf:DIGITS, pause:SECONDS (each after the bot's turn), "
                         "or sleep:SECONDS, say-now:FILE.wav (at once), await-transfer:SECONDS (until a "
                         "REFER moved the call to a new one that is up)")
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp")
    ap.add_argument("--tls-ca", help="CA file (PEM) the gateway's certificate must chain to")
    ap.add_argument("--tls-cert", help="our client certificate (PEM), for mutual TLS")
    ap.add_argument("--tls-key", help="its private key (PEM)")
    ap.add_argument("--sips", action="store_true",
                    help="call a sips: URI (else sip:...;transport=tls over TLS)")
    ap.add_argument("--connect-only", action="store_true",
                    help="hang up as soon as the call is confirmed (timing call setup)")
    ap.add_argument("--await-hangup", action="store_true",
                    help="after the last turn, wait for the gateway to end the call")
    ap.add_argument("--speaking-level", type=int, default=SPEAKING_LEVEL,
                    help="level (0-100) above which the far end counts as speaking; raise it "
                         "to ignore a quiet hold tone")
    ap.add_argument("--srtp", choices=["off", "optional", "mandatory"], default="off",
                    help="SRTP with SDES keys (a=crypto): mandatory offers RTP/SAVP only")
    ap.add_argument("--first-wait", type=float, default=25.0,
                    help="longest wait for the bot to finish a turn before going on anyway")
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
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    kind = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP,
            "tls": pj.PJSIP_TRANSPORT_TLS}[args.transport]
    if args.transport == "tls":
        if args.tls_ca:
            tcfg.tlsConfig.CaListFile = args.tls_ca
            tcfg.tlsConfig.verifyServer = True
        if args.tls_cert:
            tcfg.tlsConfig.certFile = args.tls_cert
            tcfg.tlsConfig.privKeyFile = args.tls_key
    transport_id = ep.transportCreate(kind, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()

    acfg = pj.AccountConfig()
    acfg.idUri = "sip:caller@127.0.0.1"
    if args.transport in ("tcp", "tls"):
        # pjsua's Contact would name the port of its outgoing connection, where nothing
        # listens; name its TCP listener, so a gateway can reconnect after the caller's idle
        # timer closes the connection.
        listener = ep.transportGetInfo(transport_id).localName
        acfg.sipConfig.contactForced = "<sip:caller@%s;transport=%s>" % (listener, args.transport)
    if args.srtp != "off":
        acfg.mediaConfig.srtpUse = (pj.PJMEDIA_SRTP_MANDATORY if args.srtp == "mandatory"
                                    else pj.PJMEDIA_SRTP_OPTIONAL)
        # SDES over plain UDP/TCP signalling (no sips: URI needed); SDES keying only.
        acfg.mediaConfig.srtpSecureSignaling = 0
        keyings = pj.IntVector()
        keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
        acfg.mediaConfig.srtpOpt.keyings = keyings
    account = pj.Account()
    account.create(acfg)

    call = Call(account)
    summary = {"turns": [], "connected": False}
    started = time.time()
    recorder = None
    players = []

    current = {"call": call, "first": call}

    def poll(ms):
        """Handles events; follows a transfer to the new call once it has media."""
        ep.libHandleEvents(ms)
        c = current["call"]
        new = c.transferred_to
        if new is not None and new.media is not None:
            current["call"] = new
            if recorder is not None:
                new.media.startTransmit(recorder)
            for p in players:
                if c.media is not None:
                    p.stopTransmit(c.media)
                p.startTransmit(new.media)

    def pump(seconds):
        end = time.time() + seconds
        while time.time() < end:
            poll(10)

    def timed_out():
        return time.time() - started > args.timeout

    def ended():
        c = current["call"]
        # The old call ends when a transfer succeeds; the new one carries on.
        pending = c.transferred_to is not None and not c.transferred_to.state.startswith("disconn")
        return c.state.startswith("disconn") and not pending

    def wait_for_bot_turn(limit):
        """Waits until the bot spoke and then was quiet, or `limit` seconds, or the call ended."""
        deadline = time.time() + limit
        spoke = False
        quiet_since = None
        while time.time() < deadline and not ended() and not timed_out():
            poll(20)
            c = current["call"]
            level = c.media.getTxLevel() if c.media is not None else 0
            if level > args.speaking_level:
                spoke = True
                quiet_since = None
            elif spoke:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since >= QUIET_AFTER_SPEECH_S:
                    return True
        return spoke

    try:
        prm = pj.CallOpParam(True)
        suffix = ";transport=%s" % args.transport if args.transport != "udp" else ""
        scheme = "sip"
        if args.sips:
            scheme, suffix = "sips", ""
        invite_at = time.time()
        call.makeCall("%s:support@127.0.0.1:%d%s" % (scheme, args.port, suffix), prm)
        while call.media is None and not ended() and not timed_out():
            ep.libHandleEvents(5)
        if call.media is None:
            raise RuntimeError("no media (call state %s, last status %d)" % (call.state, call.last_code))
        summary["connected"] = True
        while getattr(call, "confirmed_at", None) is None and not ended() and not timed_out():
            ep.libHandleEvents(5)
        if getattr(call, "confirmed_at", None) is not None:
            summary["setup_ms"] = round((call.confirmed_at - invite_at) * 1000.0, 2)
        if args.connect_only:
            args.turn = []
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(args.record)
        call.media.startTransmit(recorder)

        for turn in args.turn:
            kind, _, value = turn.partition(":")
            heard = (wait_for_bot_turn(args.first_wait)
                     if kind not in ("sleep", "say-now", "await-transfer") else False)
            if ended() or timed_out():
                break
            if kind in ("say", "say-now"):
                player = pj.AudioMediaPlayer()
                player.createPlayer(value, pj.PJMEDIA_FILE_NO_LOOP)
                players.append(player)
                media = current["call"].media
                player.startTransmit(media)
                pump(wav_seconds(value) + 0.2)
                player.stopTransmit(current["call"].media)
                players.remove(player)
            elif kind == "sleep":
                pump(float(value))
            elif kind == "await-transfer":
                # Until the gateway's REFER has moved us to a new call that is up (a blind
                # transfer to a busy extension first fails, then comes again), at most VALUE s.
                deadline = time.time() + float(value)
                while time.time() < deadline and not timed_out():
                    c = current["call"]
                    if c is not current["first"] and c.state == "confirmed":
                        break
                    if ended():
                        break
                    poll(20)
            elif kind == "pause":
                # Stay silent on the line (long enough, pjsip closes an idle TCP connection).
                pump(float(value))
            elif kind == "dtmf":
                current["call"].dialDtmf(value)
                pump(0.5)
            else:
                raise RuntimeError("unknown turn %r" % turn)
            summary["turns"].append({"turn": turn, "bot_spoke_before": heard,
                                     "at_s": round(time.time() - started, 2)})
        # The bot's last answer (or its BYE).
        if args.connect_only:
            pass
        elif args.await_hangup:
            while not ended() and not timed_out():
                poll(20)
        else:
            wait_for_bot_turn(args.first_wait)
        summary["gateway_hung_up"] = ended()
        for end in (current["first"], current["call"]):
            if not end.state.startswith("disconn"):
                end.hangup(pj.CallOpParam(True))
        end = None
        deadline = time.time() + 5
        while time.time() < deadline and not all(
                c.state.startswith("disconn") for c in (current["first"], current["call"])):
            ep.libHandleEvents(20)
    except Exception as e:  # reported in the summary; the test decides
        summary["error"] = str(e)
    finally:
        summary["state"] = current["call"].state
        summary["last_code"] = current["call"].last_code
        summary["transfer"] = current["first"].transfer
        summary["transferred"] = current["call"] is not current["first"]
        summary["duration_s"] = round(time.time() - started, 2)
        summary["recording"] = args.record
        # Objects that hold media ports must go before the library.
        recorder = None
        player = None
        players = []
        call = None
        current.clear()
        account.shutdown()
        ep.libDestroy()
        print(json.dumps(summary))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
