"""K concurrent callers in one pjsua2 process, measuring the bot's answer time at the caller.

Used by benches/turn_latency.rs (the voice-to-voice latency benchmark); usable alone:

    load_caller.py --port 5060 --calls 8 --turns 6 --noise noise.wav \
        --utterance hours.wav --utterance order.wav ... > result.json

K is at most 16, and at most what this pjsua2 build allows (PJSUA_MAX_CALLS: 4 in the PyPI
pjsua2-python wheel, which caps uaConfig.maxCalls silently); more callers are more processes.
Each call dials sip:support@127.0.0.1:PORT (PCMU only: 8 kHz end to end, no resampling), waits
until the greeting has been played and followed by --quiet seconds of quiet, then takes
--turns turns: it says an utterance (picked at random from the --utterance WAVs, or each in
turn with --in-order), waits for the bot's reply to start and then to finish (--quiet seconds
of quiet), pauses a think time, and goes on. The think time keeps the caller's own speech near
--talk-share of the call (it cannot be more when the bot's replies are long; the share reached
is reported). Line noise from --noise (a WAV looped) goes out during the whole call, silences
included, and is mixed into the speech.

How the gap is measured (the method)
------------------------------------
Each call has one custom conference port (pjsua2 AudioMediaPort) connected both ways to the
call's audio: the bridge asks it for the frame to send (onFrameRequested) and hands it the frame
received (onFrameReceived). Both callbacks run on the bridge's clock thread, once per 20 ms
tick each, the request first and the delivery second in the same tick (checked:
a frame given by one port at tick k reaches another port at tick k). The port counts ticks, so
every sample sent and every sample received has an index on ONE clock: tick * 160 + offset, at
8000 samples per second, exact to the sample, with no polling and no wall clock involved.

- The caller's end of speech is the last sample of the utterance above --voice-dbfs (computed
  once per WAV, on the clean speech before the noise is mixed in), placed at the index where
  that WAV started to go out.
- The reply's start is the first received sample above --audible-dbfs after that index (the
  bot sends digital silence between prompts, so any level above the threshold is its voice).
- gap = reply start - end of speech. It includes everything a phone user waits for: the
  gateway's end-of-turn wait, recognition, intent, synthesis, its jitter buffer and pacing, the
  network (loopback here) and this caller's own jitter buffer, as a phone would.

A frame sent at tick k goes to the RTP stream in tick k, and the frame received at tick k is
what the jitter buffer gives out in tick k, so both ends of the gap are "now" at the phone.
A turn whose reply has not started --deadline seconds after the end of speech is lost; the
caller moves on (its next turn still waits until the line is quiet). A turn where the bot
spoke while the caller was still talking (e.g. it took a mid-sentence pause for the end) is
counted as talked over, its gap not measured; the caller still waits for the bot's answer to
the rest of what it said before it goes on.

--dump DIR writes each call's sent and received audio as two 8 kHz WAVs on the same clock
(sample i of one is sample i of the other), to check the alignment by levels.

Threads: pjsua's SIP work runs on the main thread (mainThreadOnly, libHandleEvents); the turn
logic runs in the port callbacks on the bridge's clock thread (both under the GIL). Every wait
is bounded: --timeout ends the whole run. It prints one JSON object on stdout.
"""

import argparse
import array
import ctypes
import json
import os
import random
import resource
import sys
import time
import wave
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # C-speed peak and mix of 16-bit frames (Python 3.11; gone in 3.13)

import pjsua2 as pj

RATE = 8000
FRAME = 160          # samples per 20 ms tick
FRAME_BYTES = FRAME * 2


def dbfs_to_amplitude(dbfs):
    return int(round(32768 * 10 ** (dbfs / 20.0)))


def read_pcm(path):
    """A 16-bit mono 8 kHz WAV's samples as bytes (little endian)."""
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != RATE:
            raise SystemExit("%s: need 16-bit mono %d Hz" % (path, RATE))
        return w.readframes(w.getnframes())


def write_pcm(path, data):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(data)


def last_above(data, threshold):
    """Index of the last sample whose magnitude reaches `threshold`, or -1."""
    samples = array.array("h", data)
    for i in range(len(samples) - 1, -1, -1):
        if abs(samples[i]) >= threshold:
            return i
    return -1


def first_above(data, threshold, start=0):
    samples = array.array("h", data)
    for i in range(start, len(samples)):
        if abs(samples[i]) >= threshold:
            return i
    return None


def frame_bytes(frame):
    """The received frame's samples as bytes.

    The SWIG ByteVector iterates element by element from Python (about 0.4 ms a frame, too slow
    for many calls); its storage is read directly instead: the wrapped std::vector<unsigned
    char> (libstdc++, x86-64) starts with its begin and end pointers.
    """
    if frame.size == 0:
        return b""
    vec = frame.buf
    addr = int(vec.this)
    begin = ctypes.c_void_p.from_address(addr).value
    end = ctypes.c_void_p.from_address(addr + 8).value
    if not begin or end - begin != frame.size:
        return bytes(vec)
    return ctypes.string_at(begin, frame.size)


class Utterance:
    def __init__(self, path, voice_threshold):
        self.name = os.path.splitext(os.path.basename(path))[0]
        pcm = read_pcm(path)
        # Whole frames: the tail of the last one is silence (noise is added on top).
        pad = (-len(pcm)) % FRAME_BYTES
        self.pcm = pcm + b"\0" * pad
        self.frames = len(self.pcm) // FRAME_BYTES
        self.last_voiced = last_above(pcm, voice_threshold)
        if self.last_voiced < 0:
            raise SystemExit("%s: nothing above the voice threshold" % path)
        self.seconds = len(pcm) / 2.0 / RATE
        self.first_voiced = first_above(pcm, voice_threshold)
        # Voiced time, for the talk share: from the first to the last voiced sample.
        self.voiced_s = (self.last_voiced - self.first_voiced) / RATE


class Line(pj.AudioMediaPort):
    """One call's audio: what it sends, what it hears, and the turn logic, tick by tick."""

    def __init__(self, opts, index, utterances, noise_frames, rng):
        super().__init__()
        self.o = opts
        self.index = index
        self.utterances = utterances
        self.noise = noise_frames           # list of (bytes, ByteVector) or None
        self.rng = rng
        self.tick = 0                       # ticks completed (incremented after each delivery)
        self.tx0 = None                     # first tick we were asked for audio
        self.rx_started = None              # first tick with the call's audio (non-empty)
        self.nz = rng.randrange(len(noise_frames)) if noise_frames else 0
        self.state = "greeting"
        self.state_since = 0
        self.heard_any = False
        self.quiet = 0                      # consecutive ticks without audible audio
        self.greeting = None                # [onset tick, end tick]
        self.turns = []
        self.turn = None
        self.utt = None
        self.pos = 0
        self.think_until = 0
        self.spoken_s = 0.0
        self.first_speech_tick = None
        self.done = False
        self.error = None
        self.dump_tx = [] if opts.dump else None
        self.dump_rx = [] if opts.dump else None
        self.zero = pj.ByteVector(b"\0" * FRAME_BYTES)

    # --- helpers -----------------------------------------------------------------------
    def secs(self, ticks):
        return ticks * FRAME / RATE

    def start_think(self, seconds):
        self.state = "think"
        self.state_since = self.tick
        self.think_until = self.tick + int(seconds * RATE / FRAME)

    def finish_turn(self):
        """After a reply (or a lost turn): the next turn, or the end of the call."""
        self.turn = None
        if len(self.turns) >= self.o.turns or (
                self.o.duration and self.secs(self.tick - (self.tx0 or 0)) > self.o.duration):
            self.state = "done"
            self.done = True
            return
        # Think so that speech stays near talk_share of the time since the first turn.
        elapsed = self.secs(self.tick - self.first_speech_tick)
        think = self.spoken_s / self.o.talk_share - elapsed
        think = max(self.o.min_think, think) + self.rng.uniform(0, self.o.think_jitter)
        self.start_think(think)

    # --- the bridge's callbacks (clock thread) -------------------------------------------
    def onFrameRequested(self, frame):
        try:
            if self.tx0 is None:
                self.tx0 = self.tick
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.size = FRAME_BYTES
            if self.noise:
                noise_bytes, noise_vec = self.noise[self.nz]
                self.nz = (self.nz + 1) % len(self.noise)
            else:
                noise_bytes, noise_vec = None, self.zero
            if self.state == "think" and self.tick >= self.think_until and \
                    self.quiet * FRAME >= self.o.quiet * RATE:
                self.begin_turn()
            elif self.state == "think" and self.tick >= self.think_until + 20 * RATE // FRAME:
                self.begin_turn()   # bounded: the line never went quiet
            if self.state == "speak":
                chunk = self.utt.pcm[self.pos * FRAME_BYTES:(self.pos + 1) * FRAME_BYTES]
                self.pos += 1
                if noise_bytes is not None:
                    chunk = audioop.add(chunk, noise_bytes, 2)
                frame.buf = pj.ByteVector(chunk)
                if self.dump_tx is not None:
                    self.dump_tx.append(chunk)
                if self.pos >= self.utt.frames:
                    self.state = "reply"
                    self.state_since = self.tick + 1
            else:
                frame.buf = noise_vec
                if self.dump_tx is not None:
                    self.dump_tx.append(noise_bytes or bytes(FRAME_BYTES))
        except Exception as e:  # noqa: BLE001 (reported, never raised into the bridge)
            self.error = self.error or "tx: %r" % e
            self.done = True

    def begin_turn(self):
        if self.o.in_order:
            self.utt = self.utterances[len(self.turns) % len(self.utterances)]
        else:
            self.utt = self.rng.choice(self.utterances)
        self.pos = 0
        start = self.tick * FRAME
        if self.first_speech_tick is None:
            self.first_speech_tick = self.tick
        self.spoken_s += self.utt.voiced_s
        self.turn = {
            "utterance": self.utt.name,
            "start_sample": start,
            "voice_start_sample": start + self.utt.first_voiced,
            "end_sample": start + self.utt.last_voiced,
            "onset_sample": None,
            "gap_ms": None,
            "lost": False,
            "talked_over": False,
        }
        self.turns.append(self.turn)
        self.state = "speak"
        self.state_since = self.tick

    def onFrameReceived(self, frame):
        try:
            data = frame_bytes(frame)
            if self.dump_rx is not None:
                self.dump_rx.append(data if len(data) == FRAME_BYTES else bytes(FRAME_BYTES))
            if data and self.rx_started is None:
                self.rx_started = self.tick
            audible = bool(data) and audioop.max(data, 2) >= self.o.audible
            if audible:
                self.quiet = 0
                self.heard_any = True
            else:
                self.quiet += 1
            base = self.tick * FRAME
            turn = self.turn
            if turn is not None and turn["onset_sample"] is None and audible:
                end = turn["end_sample"]
                if base <= end:
                    first = first_above(data, self.o.audible)
                    if first is not None and base + first <= end:
                        # The bot speaks before the caller has finished.
                        turn["talked_over"] = True
                if base + FRAME > end:
                    at = first_above(data, self.o.audible, max(0, end + 1 - base))
                    if at is not None:
                        turn["onset_sample"] = base + at
                        if not turn["talked_over"]:
                            turn["gap_ms"] = round((base + at - end) * 1000.0 / RATE, 2)
            if self.state == "greeting":
                if audible and self.greeting is None:
                    self.greeting = [self.tick, None]
                if self.greeting is not None and self.quiet * FRAME >= self.o.quiet * RATE:
                    self.greeting[1] = self.tick - self.quiet + 1
                    self.start_think(self.rng.uniform(self.o.min_think, self.o.first_think))
                elif self.greeting is None and self.secs(self.tick) > self.o.greeting_wait:
                    self.start_think(self.o.min_think)
            elif self.state == "reply":
                # Also after being talked over, the caller waits for the bot's answer to the
                # rest of what it said (or the deadline) and for the line to go quiet.
                since_end = base + FRAME - turn["end_sample"]
                if turn["onset_sample"] is not None:
                    if self.quiet * FRAME >= self.o.quiet * RATE:
                        turn["reply_end_sample"] = (self.tick - self.quiet + 1) * FRAME
                        self.finish_turn()
                elif since_end > self.o.deadline * RATE:
                    turn["lost"] = not turn["talked_over"]
                    self.finish_turn()
        except Exception as e:  # noqa: BLE001
            self.error = self.error or "rx: %r" % e
            self.done = True
        finally:
            self.tick += 1

    def result(self):
        turns = []
        for t in self.turns:
            row = dict(t)
            for key in ("start_sample", "voice_start_sample", "end_sample", "onset_sample",
                        "reply_end_sample"):
                v = row.pop(key, None)
                row[key.replace("_sample", "_s")] = None if v is None else round(v / RATE, 4)
            turns.append(row)
        talk = None
        if self.first_speech_tick is not None:
            span = self.secs(self.tick - self.first_speech_tick)
            talk = round(self.spoken_s / span, 3) if span > 0 else None
        return {
            "tx0_s": None if self.tx0 is None else self.secs(self.tx0),
            "rx0_s": None if self.rx_started is None else self.secs(self.rx_started),
            "greeting_s": None if self.greeting is None else
            [self.secs(self.greeting[0]), None if self.greeting[1] is None
             else self.secs(self.greeting[1])],
            "turns": turns,
            "talk_share": talk,
            "error": self.error,
        }


class Call(pj.Call):
    def __init__(self, account, index):
        super().__init__(account)
        self.index = index
        self.state = "null"
        self.code = 0
        self.media = None
        self.line = None
        self.pending_media = False

    def onCallState(self, prm):
        info = self.getInfo()
        self.state = info.stateText.lower()
        self.code = info.lastStatusCode

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for i, m in enumerate(info.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                if self.media is None:
                    self.media = self.getAudioMedia(i)
                    self.pending_media = True

    def ended(self):
        return self.state.startswith("disconn")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True, help="the gateway's SIP port (UDP)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--user", default="support", help="the number / SIP user to call")
    ap.add_argument("--calls", type=int, default=1,
                    help="concurrent calls (at most 16, and at most PJSUA_MAX_CALLS of this "
                         "pjsua2 build: 4 for the PyPI wheel)")
    ap.add_argument("--turns", type=int, default=6, help="turns per call")
    ap.add_argument("--duration", type=float, default=0,
                    help="no new turn after this many seconds of call (0: --turns only)")
    ap.add_argument("--utterance", action="append", default=[],
                    help="a caller utterance: 16-bit mono 8 kHz WAV (repeatable)")
    ap.add_argument("--in-order", action="store_true",
                    help="say the utterances in the order given (cycling), not at random "
                         "(benches/webrtc.rs: the same utterances in the same order on each "
                         "transport)")
    ap.add_argument("--noise", help="line noise, 16-bit mono 8 kHz WAV, looped under everything")
    ap.add_argument("--voice-dbfs", type=float, default=-40.0,
                    help="the caller's speech ends at its last sample above this level")
    ap.add_argument("--audible-dbfs", type=float, default=-40.0,
                    help="the bot's reply starts at its first sample above this level")
    ap.add_argument("--deadline", type=float, default=5.0,
                    help="seconds after the end of speech before a turn counts as lost")
    ap.add_argument("--quiet", type=float, default=1.0,
                    help="seconds of quiet that end the bot's turn (greeting or reply)")
    ap.add_argument("--talk-share", type=float, default=0.4,
                    help="think times keep the caller's speech near this share of the call")
    ap.add_argument("--min-think", type=float, default=0.3)
    ap.add_argument("--think-jitter", type=float, default=0.6)
    ap.add_argument("--first-think", type=float, default=1.5,
                    help="longest pause after the greeting before the first turn")
    ap.add_argument("--greeting-wait", type=float, default=20.0)
    ap.add_argument("--stagger", type=float, default=2.0,
                    help="calls are dialled at random times within this many seconds")
    ap.add_argument("--rtp-port", type=int, default=40000,
                    help="first local RTP port (each call takes two)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="the whole run, seconds")
    ap.add_argument("--dump", help="write each call's sent and received audio here")
    args = ap.parse_args()
    if not 1 <= args.calls <= 16:
        raise SystemExit("--calls must be 1 to 16 (start more processes for more)")
    # pjsua caps uaConfig.maxCalls at its compile-time PJSUA_MAX_CALLS without a word: 32 by
    # default, 4 in the PyPI pjsua2-python wheel; a call beyond it fails with PJ_ETOOMANY.
    if not args.utterance:
        raise SystemExit("at least one --utterance")
    args.audible = dbfs_to_amplitude(args.audible_dbfs)
    voice_threshold = dbfs_to_amplitude(args.voice_dbfs)
    utterances = [Utterance(p, voice_threshold) for p in args.utterance]
    started = time.time()
    rng = random.Random(args.seed)

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = max(4, args.calls)
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    # 8 kHz everywhere: bridge, (null) sound device, codec; no resampling, no echo canceller.
    cfg.medConfig.clockRate = RATE
    cfg.medConfig.sndClockRate = RATE
    cfg.medConfig.channelCount = 1
    cfg.medConfig.audioFramePtime = 20
    cfg.medConfig.ptime = 20
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    cfg.medConfig.maxMediaPorts = 2 * args.calls + 8
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for c in ep.codecEnum2():
        ep.codecSetPriority(c.codecId, 255 if c.codecId.upper().startswith("PCMU/8000") else 0)

    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = RATE
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000

    noise_frames = None
    if args.noise:
        pcm = read_pcm(args.noise)
        pcm = pcm[:len(pcm) - len(pcm) % FRAME_BYTES]
        noise_frames = [(pcm[i:i + FRAME_BYTES], pj.ByteVector(pcm[i:i + FRAME_BYTES]))
                        for i in range(0, len(pcm), FRAME_BYTES)]

    acfg = pj.AccountConfig()
    acfg.idUri = "sip:loadcaller@127.0.0.1"
    acfg.mediaConfig.transportConfig.port = args.rtp_port
    acfg.mediaConfig.transportConfig.portRange = 4 * args.calls + 40
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account = pj.Account()
    account.create(acfg)

    calls = []
    dial_at = sorted(rng.uniform(0, args.stagger) for _ in range(args.calls))
    out = {"calls": [], "processes": 1}
    try:
        pending = list(range(args.calls))
        while time.time() - started < args.timeout:
            now = time.time() - started
            while pending and dial_at[pending[0]] <= now:
                i = pending.pop(0)
                call = Call(account, i)
                calls.append(call)
                try:
                    call.makeCall("sip:%s@%s:%d" % (args.user, args.host, args.port),
                                  pj.CallOpParam(True))
                    call.call_id = call.getInfo().callIdString
                except pj.Error as e:
                    call.state = "disconnected"
                    call.call_id = None
                    call.dial_error = e.info()
                    if "PJ_ETOOMANY" in call.dial_error:
                        call.dial_error = ("this pjsua2 build takes at most %d calls a process "
                                           "(PJSUA_MAX_CALLS); start more processes"
                                           % sum(1 for c in calls if c.call_id))
            ep.libHandleEvents(10)
            for call in calls:
                if call.pending_media:
                    call.pending_media = False
                    call.line = Line(args, call.index, utterances, noise_frames,
                                     random.Random(args.seed * 1000 + call.index))
                    call.line.createPort("line%d" % call.index, fmt)
                    call.line.startTransmit(call.media)
                    call.media.startTransmit(call.line)
            if not pending and all(c.ended() or (c.line is not None and c.line.done)
                                   for c in calls):
                break
        out["timed_out"] = time.time() - started >= args.timeout
        for call in calls:
            if call.line is not None and call.media is not None and not call.ended():
                try:
                    call.line.stopTransmit(call.media)
                    call.media.stopTransmit(call.line)
                except pj.Error:
                    pass
            if not call.ended():
                try:
                    call.hangup(pj.CallOpParam(True))
                except pj.Error:
                    pass
        deadline = time.time() + 5
        while time.time() < deadline and not all(c.ended() for c in calls):
            ep.libHandleEvents(20)
        for call in calls:
            row = {"index": call.index, "call_id": getattr(call, "call_id", None),
                   "connected": call.line is not None, "state": call.state,
                   "last_code": call.code}
            if hasattr(call, "dial_error"):
                row["error"] = call.dial_error
            if call.line is not None:
                row.update(call.line.result())
                if args.dump:
                    os.makedirs(args.dump, exist_ok=True)
                    stem = os.path.join(args.dump, "call%02d" % call.index)
                    # The received audio starts at tick 0 (the port's creation), the sent
                    # audio at tick tx0: pad the sent one so both start at tick 0.
                    tx = b"\0" * ((call.line.tx0 or 0) * FRAME_BYTES) + b"".join(call.line.dump_tx)
                    write_pcm(stem + "-tx.wav", tx)
                    write_pcm(stem + "-rx.wav", b"".join(call.line.dump_rx))
            out["calls"].append(row)
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
        out["wall_s"] = round(time.time() - started, 3)
        for call in calls:
            call.line = None
            call.media = None
        # Calls and ports must go before the library.
        calls = []
        call = None
        account.shutdown()
        ep.libDestroy()
        print(json.dumps(out))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
