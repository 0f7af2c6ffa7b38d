// Console test for the sfbridge C# core (Runtime/Core/*.cs), run under Mono by
// tests/test_csharp_client.py against a real `sfbridge serve --model testsrc`.
//
//   mcs -langversion:7.2 -out:ConsoleTest.exe Runtime/Core/*.cs Tests~/TestSupport.cs Tests~/ConsoleTest.cs   (from clients/unity; Mono 6.8 mcs stops at 7.2)
//   mono ConsoleTest.exe --control tcp://127.0.0.1:5555 --frames tcp://127.0.0.1:5556 \
//        --width 160 --height 96 [--save-jpeg out.jpg] [--msgpack-hex HEX] [--restart]
//
// Prints one line per check ("OK <name> ...") and "FAIL <reason>" (exit 1) on the first failure.
// With --restart it prints "READY_FOR_RESTART", waits for "DOWN" on stdin (the daemon was
// killed), checks the control timeout, prints "WAITING_UP", waits for "UP" (the daemon was
// restarted on the same ports) and checks that both sockets reconnected by themselves.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Text;
using System.Threading;
using Sfbridge;
using static TestSupport;

static class ConsoleTest
{
    static string controlEp = "tcp://127.0.0.1:5555";
    static string framesEp = "tcp://127.0.0.1:5556";
    static int width = 0, height = 0;
    static string saveJpeg = null, msgpackHex = null;
    static bool restart = false;
    static double heartbeatSeconds = 0;

    static int Main(string[] args)
    {
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            Func<string> next = () => args[++i];
            if (a == "--control") controlEp = next();
            else if (a == "--frames") framesEp = next();
            else if (a == "--width") width = int.Parse(next(), CultureInfo.InvariantCulture);
            else if (a == "--height") height = int.Parse(next(), CultureInfo.InvariantCulture);
            else if (a == "--save-jpeg") saveJpeg = next();
            else if (a == "--msgpack-hex") msgpackHex = next();
            else if (a == "--restart") restart = true;
            else if (a == "--heartbeat-seconds") heartbeatSeconds = double.Parse(next(), CultureInfo.InvariantCulture);
            else { Console.WriteLine("FAIL unknown argument " + a); return 2; }
        }
        try
        {
            if (heartbeatSeconds > 0)
            {
                HeartbeatOnly();
                Console.WriteLine("ALL_OK");
                return 0;
            }
            MsgPackSelfTest();
            if (msgpackHex != null) MsgPackCrossCheck();
            Live();
            Console.WriteLine("ALL_OK");
            return 0;
        }
        catch (Exception e)
        {
            Console.WriteLine("FAIL " + (e is Fail ? e.Message : e.ToString()));
            return 1;
        }
    }

    // ---------------------------------------------------------------- msgpack

    static string Hex(byte[] b)
    {
        var sb = new StringBuilder();
        foreach (byte x in b) sb.Append(x.ToString("x2"));
        return sb.ToString();
    }

    static byte[] Unhex(string h)
    {
        var b = new byte[h.Length / 2];
        for (int i = 0; i < b.Length; i++) b[i] = byte.Parse(h.Substring(2 * i, 2), NumberStyles.HexNumber);
        return b;
    }

    static void MsgPackSelfTest()
    {
        // Encodings chosen by the writer (smallest form) and decoded back.
        var cases = new object[][]
        {
            new object[] { null, "c0" }, new object[] { true, "c3" }, new object[] { false, "c2" },
            new object[] { 0, "00" }, new object[] { 127, "7f" }, new object[] { 128, "cc80" },
            new object[] { 255, "ccff" }, new object[] { 256, "cd0100" }, new object[] { 65536, "ce00010000" },
            new object[] { 4294967296L, "cf0000000100000000" }, new object[] { -1, "ff" }, new object[] { -32, "e0" },
            new object[] { -33, "d0df" }, new object[] { -129, "d1ff7f" }, new object[] { -32769, "d2ffff7fff" },
            new object[] { -2147483649L, "d3ffffffff7fffffff" }, new object[] { 1.5f, "ca3fc00000" },
            new object[] { 1.5, "cb3ff8000000000000" }, new object[] { "a", "a161" },
            new object[] { new byte[] { 1, 2 }, "c4020102" },
        };
        foreach (object[] c in cases)
        {
            byte[] enc = MsgPackWriter.Pack(c[0]);
            Check(Hex(enc) == (string)c[1], "msgpack encode " + c[0] + ": got " + Hex(enc) + ", want " + c[1]);
            object dec = MsgPackReader.Unpack(enc);
            string want = MsgPackMap.ToDebugString(c[0] is int ? (object)(long)(int)c[0] : c[0]);
            Check(MsgPackMap.ToDebugString(dec) == want, "msgpack roundtrip " + want + ": got " + MsgPackMap.ToDebugString(dec));
        }
        // Decoding forms the writer never emits (but other encoders may): wide ints for small values.
        Check((long)MsgPackReader.Unpack(Unhex("cf0000000000000005")) == 5, "uint64 small");
        Check((long)MsgPackReader.Unpack(Unhex("d3fffffffffffffffe")) == -2, "int64 small");
        Check((ulong)MsgPackReader.Unpack(Unhex("cfffffffffffffffff")) == ulong.MaxValue, "uint64 max");
        Check((long)MsgPackReader.Unpack(Unhex("d1fffe")) == -2, "int16");
        // str 8/16, bin 16, array 16, map 16, nested.
        string s40 = new string('x', 40), s300 = new string('y', 300);
        Check((string)MsgPackReader.Unpack(MsgPackWriter.Pack(s40)) == s40, "str8");
        Check(MsgPackWriter.Pack(s40)[0] == 0xd9 && MsgPackWriter.Pack(s300)[0] == 0xda, "str8/str16 headers");
        Check((string)MsgPackReader.Unpack(MsgPackWriter.Pack(s300)) == s300, "str16");
        Check(((byte[])MsgPackReader.Unpack(MsgPackWriter.Pack(new byte[300]))).Length == 300, "bin16");
        var big = new List<object>();
        for (int i = 0; i < 20; i++) big.Add(i * 1000);
        var m = new Dictionary<string, object>();
        for (int i = 0; i < 20; i++) m["k" + i] = i;
        m["list"] = big;
        m["utf8"] = "ünïcødé ✓";
        byte[] mb = MsgPackWriter.Pack(m);
        Check(mb[0] == 0xde, "map16 header");
        var back = MsgPackReader.UnpackMap(mb);
        Check(back.Count == 22 && MsgPackMap.GetLong(back, "k19") == 19, "map16 roundtrip");
        Check(MsgPackMap.GetList(back, "list").Count == 20 && (long)MsgPackMap.GetList(back, "list")[19] == 19000, "array16");
        Check(MsgPackMap.GetString(back, "utf8") == "ünïcødé ✓", "utf8");
        bool threw = false;
        try { MsgPackReader.Unpack(Unhex("da0010ab")); } catch (MsgPackException) { threw = true; }
        Check(threw, "truncated data must throw MsgPackException");
        Ok("msgpack_selftest");
    }

    static void MsgPackCrossCheck()
    {
        // pytest packs a map with Python's msgpack; we print our view of it and our own encoding.
        var m = MsgPackReader.UnpackMap(Unhex(msgpackHex));
        Console.WriteLine("MSGPACK_DECODED " + MsgPackMap.ToDebugString(m));
        var mine = new Dictionary<string, object>();
        mine["op"] = "prompt";
        mine["id"] = 7;
        mine["neg"] = -100000;
        mine["big"] = 1L << 40;
        mine["f32"] = 0.25f;
        mine["f64"] = 3.5;
        mine["nil"] = null;
        mine["yes"] = true;
        mine["bin"] = new byte[] { 0, 255 };
        mine["arr"] = new List<object> { 1, "two", 3.0 };
        Console.WriteLine("MSGPACK_ENCODED " + Hex(MsgPackWriter.Pack(mine)));
        Ok("msgpack_crosscheck");
    }

    // ---------------------------------------------------------------- heartbeats

    // Against a libzmq XPUB with ZMQ_HEARTBEAT_IVL/TIMEOUT set (pytest): the peer sends PINGs and
    // drops connections that stay silent; our PONGs must keep one connection alive throughout.
    static void HeartbeatOnly()
    {
        var sub = new SfbridgeSubscriber(framesEp, SfbridgeFormat.Jpeg, false);
        sub.Log += m => Console.Error.WriteLine("[client] " + m);
        sub.Start();
        var sw = Stopwatch.StartNew();
        long frames = 0;
        while (sw.Elapsed.TotalSeconds < heartbeatSeconds)
        {
            if (sub.WaitFrame(100) != null) frames++;
        }
        long connects = sub.Connects;
        sub.Dispose();
        Check(frames > 0, "no frames from the heartbeat publisher");
        Check(connects == 1, "connection was dropped and reopened (" + connects + " connects): PONG not accepted?");
        Ok("heartbeat", "frames=" + frames + " connects=" + connects);
    }

    // ---------------------------------------------------------------- live daemon

    static int JpegCheck(byte[] p, out int w, out int h)
    {
        // Returns 0 when the payload starts with SOI, ends with EOI and has a SOF0/SOF2 marker
        // (whose dimensions are returned).
        w = h = -1;
        if (p.Length < 4 || p[0] != 0xff || p[1] != 0xd8) return 1;
        if (p[p.Length - 2] != 0xff || p[p.Length - 1] != 0xd9) return 2;
        int i = 2;
        while (i + 4 <= p.Length)
        {
            if (p[i] != 0xff) return 3;
            int marker = p[i + 1];
            if (marker == 0xff) { i++; continue; }
            int len = (p[i + 2] << 8) | p[i + 3];
            if (marker == 0xc0 || marker == 0xc1 || marker == 0xc2)
            {
                h = (p[i + 5] << 8) | p[i + 6];
                w = (p[i + 7] << 8) | p[i + 8];
                return 0;
            }
            if (marker == 0xda) return 4; // start of scan before any SOF
            i += 2 + len;
        }
        return 5;
    }

    static SfbridgeFrame NextFrame(SfbridgeSubscriber s, int timeoutMs, string what)
    {
        SfbridgeFrame f = s.WaitFrame(timeoutMs);
        Check(f != null, "no " + what + " frame within " + timeoutMs + " ms (state " + s.State + ", connects " + s.Connects + ")");
        return f;
    }

    static void CheckJpegFrame(SfbridgeFrame f)
    {
        Check(f.Format == "jpeg", "format header is '" + f.Format + "'");
        Check(f.Version == 1, "v header is " + f.Version);
        if (width > 0) Check(f.Width == width && f.Height == height, "w/h header " + f.Width + "x" + f.Height);
        int jw, jh;
        int rc = JpegCheck(f.Payload, out jw, out jh);
        Check(rc == 0, "payload is not a well-formed JPEG (code " + rc + ", " + f.Payload.Length + " bytes)");
        Check(jw == f.Width && jh == f.Height, "JPEG SOF says " + jw + "x" + jh + ", header " + f.Width + "x" + f.Height);
        Check(!string.IsNullOrEmpty(f.Stream) && f.Seq >= 0, "stream/seq missing");
    }

    static void CheckRgbFrame(SfbridgeFrame f)
    {
        Check(f.Format == "rgb24", "rgb24 format header is '" + f.Format + "'");
        Check(f.Payload.Length == f.Width * f.Height * 3,
            "rgb24 payload " + f.Payload.Length + " bytes for " + f.Width + "x" + f.Height);
        if (width > 0) Check(f.Width == width && f.Height == height, "rgb24 w/h " + f.Width + "x" + f.Height);
    }

    static SfbridgeFrame WaitFor(SfbridgeSubscriber s, int timeoutMs, Func<SfbridgeFrame, bool> pred, string what)
    {
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < timeoutMs)
        {
            SfbridgeFrame f = s.WaitFrame(200);
            if (f != null && pred(f)) return f;
        }
        throw new Fail("timed out after " + timeoutMs + " ms waiting for " + what);
    }

    static void Live()
    {
        var log = new List<string>();
        Action<string> logger = m => { lock (log) log.Add(m); Console.Error.WriteLine("[client] " + m); };

        var control = new SfbridgeControl(controlEp);
        control.Log += logger;

        // --- control basics
        SfbridgeReply st = control.Status();
        Check(st.Ok && st.Version == 1, "status reply ok/v");
        string model = MsgPackMap.GetString(st.Result, "model");
        long sw_ = MsgPackMap.GetLong(st.Result, "width"), sh = MsgPackMap.GetLong(st.Result, "height");
        if (width > 0) Check(sw_ == width && sh == height, "status width/height " + sw_ + "x" + sh);
        Ok("status", "model=" + model + " size=" + sw_ + "x" + sh + " state_id=" + MsgPackMap.GetLong(st.Result, "state_id"));

        SfbridgeReply pong = control.Ping();
        Check(MsgPackMap.GetBool(pong.Result, "pong"), "ping result.pong");
        Ok("ping");

        try
        {
            control.Call(new Dictionary<string, object> { { "op", "bogus" } });
            throw new Fail("unknown op did not raise");
        }
        catch (SfbridgeRequestException e)
        {
            Check(e.Code == "unknown_op", "unknown op gave code " + e.Code);
            Ok("error_unknown_op", e.Message);
        }
        try
        {
            control.Prompt("");
            throw new Fail("empty prompt did not raise");
        }
        catch (SfbridgeRequestException e)
        {
            Check(e.Code == "invalid_value", "empty prompt gave code " + e.Code);
            Ok("error_invalid_value");
        }

        // --- stream: jpeg + events, and rgb24 on a second connection
        var jpeg = new SfbridgeSubscriber(framesEp, SfbridgeFormat.Jpeg, true);
        var rgb = new SfbridgeSubscriber(framesEp, SfbridgeFormat.Rgb24, false);
        var states = new List<SfbridgeConnectionState>();
        jpeg.StateChanged += s => { lock (states) states.Add(s); };
        jpeg.Log += logger;
        rgb.Log += logger;
        var t0 = Stopwatch.StartNew();
        jpeg.Start();
        rgb.Start();

        SfbridgeFrame first = NextFrame(jpeg, 10000, "first jpeg");
        Ok("first_frame", "after " + t0.ElapsedMilliseconds + " ms");
        CheckJpegFrame(first);
        long lastSeq = first.Seq;
        SfbridgeFrame keep = first;
        for (int i = 0; i < 5; i++)
        {
            SfbridgeFrame f = NextFrame(jpeg, 5000, "jpeg");
            CheckJpegFrame(f);
            Check(f.Seq > lastSeq, "seq not increasing: " + f.Seq + " after " + lastSeq);
            lastSeq = f.Seq;
            keep = f;
        }
        Ok("jpeg_frames", "seq=" + lastSeq + " bytes=" + keep.Payload.Length + " latency_ms=" +
            ((keep.TReceived - keep.TPub) * 1000).ToString("0.00", CultureInfo.InvariantCulture) + " size=" + keep.Width + "x" + keep.Height);
        for (int i = 0; i < 3; i++) CheckRgbFrame(NextFrame(rgb, 5000, "rgb24"));
        Ok("rgb24_frames", "bytes=" + (keep.Width * keep.Height * 3));

        if (saveJpeg != null)
        {
            File.WriteAllBytes(saveJpeg, keep.Payload);
            Ok("saved_jpeg", saveJpeg);
        }

        // Events: stats arrive once per second.
        Dictionary<string, object> ev;
        bool sawStats = false;
        var evw = Stopwatch.StartNew();
        while (!sawStats && evw.ElapsedMilliseconds < 4000)
        {
            while (jpeg.TryDequeueEvent(out ev))
                if (MsgPackMap.GetString(ev, "type") == "stats") sawStats = true;
            Thread.Sleep(20);
        }
        Check(sawStats, "no stats event within 4 s");
        Ok("events", "stats seen");

        // --- steering: a prompt change (async API) must show up in a later frame header
        var task = control.PromptAsync("a neon city at night", "blend", 2);
        Check(task.Wait(8000), "PromptAsync did not complete");
        SfbridgeReply pr = task.Result;
        long sid = pr.StateId;
        Check(sid > 0 && pr.AppliesAtBlock >= 0, "prompt result state_id/applies_at_block");
        var pw = Stopwatch.StartNew();
        SfbridgeFrame withState = WaitFor(jpeg, 15000, f => f.State >= sid, "a frame with state >= " + sid);
        Check(withState.State == sid, "frame state " + withState.State + " != " + sid);
        Check(withState.Block >= pr.AppliesAtBlock, "state " + sid + " seen at block " + withState.Block +
            " before applies_at_block " + pr.AppliesAtBlock);
        Ok("prompt_state", "state_id=" + sid + " applies_at_block=" + pr.AppliesAtBlock + " seen_block=" +
            withState.Block + " after_ms=" + pw.ElapsedMilliseconds);
        bool sawApplied = false;
        while (jpeg.TryDequeueEvent(out ev))
            if (MsgPackMap.GetString(ev, "type") == "applied" && MsgPackMap.GetLong(ev, "state_id") == sid) sawApplied = true;
        Ok("applied_event", sawApplied ? "seen" : "not_seen");

        Steering(control, jpeg);

        // seed (callback API), steps (not_supported on testsrc), pause/resume.
        var seedDone = new ManualResetEvent(false);
        SfbridgeReply seedReply = null;
        Exception seedErr = null;
        control.CallAsync(SfbridgeControl.SeedRequest(1234), (r, e) => { seedReply = r; seedErr = e; seedDone.Set(); });
        Check(seedDone.WaitOne(8000), "seed callback not called");
        Check(seedErr == null && seedReply.StateId > sid, "seed reply state_id " + (seedReply == null ? "null" : seedReply.StateId.ToString()));
        Ok("seed", "state_id=" + seedReply.StateId);
        if (model == "testsrc")
        {
            try { control.Steps(new[] { 1000, 500 }); throw new Fail("steps on testsrc did not raise"); }
            catch (SfbridgeRequestException e) { Check(e.Code == "not_supported", "steps code " + e.Code); }
            Ok("steps_not_supported");
        }
        Check(MsgPackMap.GetBool(control.Pause().Result, "paused", false), "pause result");
        Check(!MsgPackMap.GetBool(control.Resume().Result, "paused", true), "resume result");
        Ok("pause_resume");

        // reset: a new stream id shows up in frame headers.
        SfbridgeReply rr = control.Reset("a quiet forest", 42);
        string newStream = MsgPackMap.GetString(rr.Result, "stream");
        Check(!string.IsNullOrEmpty(newStream) && newStream != first.Stream, "reset stream id");
        SfbridgeFrame rf = WaitFor(jpeg, 15000, f => f.Stream == newStream, "a frame of the reset stream " + newStream);
        Check(rf.State == rr.StateId, "reset frame state " + rf.State + " != " + rr.StateId);
        Ok("reset", "stream=" + newStream + " block=" + rf.Block);

        if (restart) Restart(control, jpeg, rgb, newStream, states);

        // --- clean shutdown: threads joined, sockets closed, quickly.
        var sd = Stopwatch.StartNew();
        jpeg.Dispose();
        rgb.Dispose();
        control.Dispose();
        long sdMs = sd.ElapsedMilliseconds;
        Check(sdMs < 3000, "shutdown took " + sdMs + " ms");
        Check(jpeg.State == SfbridgeConnectionState.Disconnected, "state after dispose: " + jpeg.State);
        bool disposedThrows = false;
        try { control.Ping(); } catch (ObjectDisposedException) { disposedThrows = true; }
        Check(disposedThrows, "calls after Dispose must throw ObjectDisposedException");
        Ok("shutdown", "ms=" + sdMs);
    }

    // ---------------------------------------------------------------- issue 10 steering

    // Collects frames and events until the change sid has its `applied` event and a frame of a block
    // after `block` arrived. Checks that frames change state exactly at `block`: before it every
    // frame has a state below sid, from it on at or above. Returns the applied event.
    static Dictionary<string, object> WaitLanded(SfbridgeSubscriber s, long sid, long block, string stream,
                                                 List<Dictionary<string, object>> events, int timeoutMs)
    {
        Dictionary<string, object> applied = null;
        bool sawAfter = false, sawAt = false;
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < timeoutMs && !(applied != null && sawAfter))
        {
            SfbridgeFrame f = s.WaitFrame(100);
            Dictionary<string, object> ev;
            while (s.TryDequeueEvent(out ev))
            {
                events.Add(ev);
                if (MsgPackMap.GetString(ev, "type") == "applied" && MsgPackMap.GetLong(ev, "state_id") == sid) applied = ev;
            }
            if (f == null || f.Stream != stream) continue;
            if (f.Block < block) Check(f.State < sid, "frame of block " + f.Block + " has state " + f.State + " >= " + sid + " before its block " + block);
            else
            {
                Check(f.State >= sid, "frame of block " + f.Block + " has state " + f.State + " < " + sid + " at/after its block " + block);
                if (f.Block == block) sawAt = true;
                if (f.Block > block) sawAfter = true;
            }
        }
        Check(applied != null, "no applied event for state " + sid + " within " + timeoutMs + " ms");
        Check(sawAfter, "no frame after block " + block + " within " + timeoutMs + " ms");
        Check(MsgPackMap.GetLong(applied, "block") == block, "applied event of state " + sid + " at block " +
            MsgPackMap.GetLong(applied, "block") + ", reply said " + block);
        Console.Error.WriteLine("[client] state " + sid + " landed at block " + block + (sawAt ? " (frame of that block seen)" : ""));
        return applied;
    }

    static void Steering(SfbridgeControl control, SfbridgeSubscriber jpeg)
    {
        var events = new List<Dictionary<string, object>>();
        string stream = MsgPackMap.GetString(control.Status().Result, "stream");

        // Client-side checks: refused before anything is sent.
        bool threw = false;
        try { SfbridgeSteering.WeightedPromptRequest(new[] { new SfbridgeWeightedPrompt("a", 0), new SfbridgeWeightedPrompt("b", 0) }, null); }
        catch (ArgumentException) { threw = true; }
        Check(threw, "all-zero weights were not refused");
        threw = false;
        try { SfbridgeSteering.WeightedPromptRequest(new[] { new SfbridgeWeightedPrompt("a", 1) }, new SfbridgePromptOptions { Mix = "slerp" }); }
        catch (ArgumentException) { threw = true; }
        Check(threw, "slerp of one prompt was not refused");
        // As the daemon reads it: packed and decoded again.
        var wire = MsgPackReader.UnpackMap(MsgPackWriter.Pack(SfbridgeSteering.PromptRequest("x", new SfbridgePromptOptions {
            Transition = "blend", BlendBlocks = 5, Interp = "slerp", Recache = true, At = SfbridgeSchedule.AtPts(1.5) })));
        Check(MsgPackMap.GetString(wire, "text") == "x" && MsgPackMap.GetString(wire, "transition") == "blend" &&
              MsgPackMap.GetLong(wire, "blend_blocks") == 5 && MsgPackMap.GetString(wire, "interp") == "slerp" &&
              MsgPackMap.GetBool(wire, "recache") && MsgPackMap.GetDouble(wire, "at_pts") == 1.5 &&
              !wire.ContainsKey("at_block") && !wire.ContainsKey("mix") && wire.Count == 7,
              "prompt request map " + MsgPackMap.ToDebugString(wire));
        Ok("steering_args");

        // One weighted blend: two prompts mixed linearly, a 3-block slerp blend to them, at the next block.
        var prompts = new List<SfbridgeWeightedPrompt> { new SfbridgeWeightedPrompt("a red desert", 0.7), new SfbridgeWeightedPrompt("a blue ocean", 0.3) };
        SfbridgeReply wr = control.WeightedPrompt(prompts, new SfbridgePromptOptions { Transition = "blend", BlendBlocks = 3, Interp = "slerp", Mix = "linear" });
        Check(wr.StateId > 0 && wr.AppliesAtBlock >= 0, "weighted prompt reply " + MsgPackMap.ToDebugString(wr.Result));
        Check(MsgPackMap.Has(wr.Result, "scheduled") && !wr.Scheduled, "weighted prompt for the next block says scheduled=" + wr.Scheduled);
        var ap = WaitLanded(jpeg, wr.StateId, wr.AppliesAtBlock, stream, events, 15000);
        List<object> apPrompts = MsgPackMap.GetList(ap, "prompts");
        Check(apPrompts != null && apPrompts.Count == 2, "applied prompts " + MsgPackMap.ToDebugString(ap));
        Check(MsgPackMap.GetString(ap, "mix") == "linear" && MsgPackMap.GetString(ap, "interp") == "slerp" &&
              MsgPackMap.GetString(ap, "transition") == "blend" && MsgPackMap.GetLong(ap, "blend_blocks") == 3,
              "applied event fields " + MsgPackMap.ToDebugString(ap));
        Ok("weighted_blend", "state_id=" + wr.StateId + " block=" + wr.AppliesAtBlock + " prompt=" + MsgPackMap.GetString(ap, "prompt"));

        // One scheduled change: a seed 8 blocks ahead, plus a prompt scheduled by scene time right
        // after it that is cancelled and must never land.
        long next = MsgPackMap.GetLong(control.Status().Result, "block");
        long target = next + 8;
        SfbridgeReply sr = control.Seed(4242, SfbridgeSchedule.AtBlock(target));
        Check(sr.AppliesAtBlock == target && sr.Scheduled, "scheduled seed reply " + MsgPackMap.ToDebugString(sr.Result));
        double pts = (9 + 12 * target) / 16.0; // first frame of block target+1 (block 0 has 9 frames, later ones 12)
        SfbridgeReply cr = control.Prompt("never shown", new SfbridgePromptOptions { At = SfbridgeSchedule.AtPts(pts) });
        Check(cr.AppliesAtBlock == target + 1 && cr.Scheduled, "at_pts " + pts + " reply " + MsgPackMap.ToDebugString(cr.Result));
        List<object> scheduled = MsgPackMap.GetList(control.Status().Result, "scheduled");
        string sched = MsgPackMap.ToDebugString(scheduled);
        bool seedListed = false, promptListed = false;
        foreach (object o in scheduled ?? new List<object>())
        {
            var m = o as Dictionary<string, object>;
            if (m == null) continue;
            long id = MsgPackMap.GetLong(m, "state_id", -1), at = MsgPackMap.GetLong(m, "at_block", -1);
            string change = MsgPackMap.GetString(m, "change");
            seedListed |= id == sr.StateId && change == "seed" && at == target;
            promptListed |= id == cr.StateId && change == "prompt" && at == target + 1;
        }
        Check(seedListed && promptListed, "status scheduled " + sched);
        SfbridgeReply cancel = control.Cancel(cr.StateId);
        Check(MsgPackMap.GetLong(cancel.Result, "cancelled", -1) == cr.StateId, "cancel reply " + MsgPackMap.ToDebugString(cancel.Result));
        try { control.Cancel(cr.StateId); throw new Fail("a second cancel did not raise"); }
        catch (SfbridgeRequestException e) { Check(e.Code == "not_found", "second cancel gave code " + e.Code); }
        var sa = WaitLanded(jpeg, sr.StateId, target, stream, events, 20000);
        Check(MsgPackMap.GetString(sa, "change") == "seed" && MsgPackMap.GetLong(sa, "seed") == 4242, "applied seed " + MsgPackMap.ToDebugString(sa));
        // Past the cancelled change's block: it never landed, and its cancel was announced.
        SfbridgeFrame late = WaitFor(jpeg, 10000, f => f.Stream != stream || f.Block > target + 2, "a frame past block " + (target + 2));
        Check(late.State < cr.StateId, "frame of block " + late.Block + " carries state " + late.State + " of the cancelled change");
        Dictionary<string, object> ev;
        while (jpeg.TryDequeueEvent(out ev)) events.Add(ev);
        bool cancelledEvent = false;
        foreach (var e in events)
        {
            string type = MsgPackMap.GetString(e, "type");
            if (MsgPackMap.GetLong(e, "state_id", -1) != cr.StateId) continue;
            Check(type == "cancelled", "the cancelled change got a '" + type + "' event");
            cancelledEvent = MsgPackMap.GetString(e, "reason") == "cancel";
        }
        Check(cancelledEvent, "no cancelled event (reason cancel) for state " + cr.StateId);
        Ok("scheduled_change", "seed_state=" + sr.StateId + " at_block=" + target + " cancelled_state=" + cr.StateId);
    }

    static void Restart(SfbridgeControl control, SfbridgeSubscriber jpeg, SfbridgeSubscriber rgb, string oldStream,
                        List<SfbridgeConnectionState> states)
    {
        long connectsBefore = jpeg.Connects;
        Console.WriteLine("READY_FOR_RESTART stream=" + oldStream);
        Console.Out.Flush();
        string line = Console.In.ReadLine();
        Check(line != null && line.Trim() == "DOWN", "expected DOWN on stdin, got " + line);

        // The daemon is gone: the subscriber notices, and control calls time out cleanly.
        var w = Stopwatch.StartNew();
        while (jpeg.State == SfbridgeConnectionState.Connected && w.ElapsedMilliseconds < 8000) Thread.Sleep(20);
        Check(jpeg.State != SfbridgeConnectionState.Connected, "subscriber still 'Connected' 8 s after the daemon died");
        Ok("noticed_down", "after_ms=" + w.ElapsedMilliseconds + " state=" + jpeg.State);

        int oldTimeout = control.TimeoutMs, oldAttempts = control.Attempts;
        control.TimeoutMs = 300;
        control.Attempts = 2;
        var tw = Stopwatch.StartNew();
        try { control.Ping(); throw new Fail("ping with the daemon down did not raise"); }
        catch (SfbridgeTimeoutException e) { Ok("control_timeout", "ms=" + tw.ElapsedMilliseconds + " msg=" + e.Message.Split('(')[0].Trim()); }
        control.TimeoutMs = oldTimeout;
        control.Attempts = oldAttempts;

        Console.WriteLine("WAITING_UP");
        Console.Out.Flush();
        line = Console.In.ReadLine();
        Check(line != null && line.Trim() == "UP", "expected UP on stdin, got " + line);
        var uw = Stopwatch.StartNew();
        SfbridgeFrame f = WaitFor(jpeg, 20000, fr => fr.Stream != oldStream, "a jpeg frame from the restarted daemon");
        CheckJpegFrame(f);
        Check(jpeg.Connects > connectsBefore, "no reconnect counted");
        SfbridgeFrame g = WaitFor(rgb, 10000, fr => fr.Stream == f.Stream, "an rgb24 frame from the restarted daemon");
        CheckRgbFrame(g);
        SfbridgeReply st = control.Status();
        Check(MsgPackMap.GetString(st.Result, "stream") != oldStream, "status after restart still shows the old stream");
        long sid = control.Prompt("after restart").StateId;
        WaitFor(jpeg, 15000, fr => fr.State >= sid, "state " + sid + " after the restart");
        Ok("reconnected", "after_ms=" + uw.ElapsedMilliseconds + " connects=" + jpeg.Connects + " stream=" + f.Stream +
            " seq=" + f.Seq + " state_id=" + sid);
    }
}
