// Console test of the C# input sender (Runtime/Core/SfbridgeInputSender.cs), run under Mono by
// tests/test_csharp_client.py against a real `sfbridge serve --model testsrc --input ...`.
//
//   mcs -langversion:7.2 -out:InputTest.exe Runtime/Core/*.cs Tests~/TestSupport.cs Tests~/InputTest.cs   (from clients/unity)
//   mono InputTest.exe --control tcp://127.0.0.1:5555 --frames tcp://127.0.0.1:5556 \
//        --input tcp://127.0.0.1:5557 --width 160 --height 96
//   mono InputTest.exe --input tcp://127.0.0.1:5557 --send-only 20   (no daemon: sends 20 frames
//        of --width x --height to a plain SUB and exits; the test checks them with libzmq)
//
// Switches v2v on, then sends two generated pictures through the sender, each for a few seconds,
// while the test loop submits far faster (60 per second) than the sender may send (16):
//   A: RGB24 rows top first at the model size, top half red, bottom half blue;
//   B: RGBA32 rows bottom first (as Unity's GPU readback gives them, FlipRows) at twice the model
//      size, showing top half blue, bottom half red.
// The received rgb24 frames made from each (header `input.client` = this sender, `input.seq` in that
// phase) must show the picture: red over blue for A, blue over red for B. Prints "OK <name>" lines,
// "FAIL <reason>" (exit 1) on the first failure, "ALL_OK" at the end.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.Threading;
using Sfbridge;
using static TestSupport;

static class InputTest
{
    static string controlEp, framesEp, inputEp;
    static int width = 64, height = 32, sendOnly = -1;
    const string ClientId = "csharp-input-test";

    static int Main(string[] args)
    {
        Dictionary<string, string> o = Options(args, "control", "frames", "input", "width", "height", "send-only");
        if (o == null) return 2;
        o.TryGetValue("control", out controlEp);
        o.TryGetValue("frames", out framesEp);
        o.TryGetValue("input", out inputEp);
        width = Int(o, "width", width);
        height = Int(o, "height", height);
        sendOnly = Int(o, "send-only", sendOnly);
        return RunChecks(() => { if (sendOnly >= 0) SendOnly(); else Run(); });
    }

    /// <summary>Top half colour top, bottom half colour bottom; stride 3 or 4; rows bottom first when flip.</summary>
    static byte[] Picture(int w, int h, int stride, byte[] top, byte[] bottom, bool bottomFirst)
    {
        var px = new byte[w * h * stride];
        for (int y = 0; y < h; y++)
        {
            byte[] c = y < h / 2 ? top : bottom;
            int row = bottomFirst ? h - 1 - y : y;
            for (int x = 0; x < w; x++)
            {
                int o = (row * w + x) * stride;
                px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2];
                if (stride == 4) px[o + 3] = 255;
            }
        }
        return px;
    }

    /// <summary>Mean (R - B) over rows [y0, y1) of the middle half of the columns of an rgb24 frame.</summary>
    static double RedMinusBlue(SfbridgeFrame f, double y0, double y1)
    {
        int w = f.Width, h = f.Height;
        double sum = 0;
        long n = 0;
        for (int y = (int)(y0 * h); y < (int)(y1 * h); y++)
            for (int x = w / 4; x < 3 * w / 4; x++)
            {
                int o = (y * w + x) * 3;
                sum += f.Payload[o] - f.Payload[o + 2];
                n++;
            }
        return sum / Math.Max(1, n);
    }

    static readonly byte[] Red = { 230, 20, 20 };
    static readonly byte[] Blue = { 20, 20, 230 };

    /// <summary>Submits sendOnly frames (pixel value = frame number) one by one, waiting for each to leave.</summary>
    static void SendOnly()
    {
        using (var sender = new SfbridgeInputSender(inputEp, ClientId))
        {
            sender.MaxFps = 50;
            sender.Start();
            for (int i = 0; i < sendOnly; i++)
            {
                var px = new byte[width * height * 3];
                for (int k = 0; k < px.Length; k++) px[k] = (byte)i;
                long before = sender.FramesSent;
                sender.SubmitRgb24(px, width, height, 1000.0 + i);
                DateTime t0 = DateTime.UtcNow;
                while (sender.FramesSent == before && (DateTime.UtcNow - t0).TotalSeconds < 5) Thread.Sleep(1);
                Check(sender.FramesSent > before, "frame " + i + " did not leave within 5 s (state " + sender.State + ")");
            }
            Thread.Sleep(200); // let the last frame's bytes reach the peer before the socket closes
            Ok("send_only", "sent " + sender.FramesSent + " connects " + sender.Connects);
        }
    }

    static void Run()
    {
        Check(controlEp != null && framesEp != null && inputEp != null && width > 0 && height > 0,
              "need --control --frames --input --width --height");

        // Request checks, before any daemon round trip.
        bool threw = false;
        try { SfbridgeSteering.InputRequest("v2v", 1.5, false, SfbridgeSchedule.Next); } catch (ArgumentOutOfRangeException) { threw = true; }
        Check(threw, "strength 1.5 was not refused");
        threw = false;
        try { new SfbridgeInputSender(inputEp, ClientId).SubmitRgb24(new byte[10], 4, 4, 0); } catch (ArgumentException) { threw = true; }
        Check(threw, "a short rgb24 buffer was not refused");
        var enc = SfbridgeInputSender.Encode(new SfbridgeInputFrame { Width = 2, Height = 2, PixelStride = 4, FlipRows = true,
            Pixels = new byte[] { 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 10, 11, 12, 0 }, TCap = 1.5 }, "x", 7);
        Dictionary<string, object> eh = MsgPackReader.UnpackMap(enc[0]);
        Check(MsgPackMap.GetString(eh, "format") == "rgb24" && MsgPackMap.GetLong(eh, "w") == 2 && MsgPackMap.GetLong(eh, "seq") == 7
              && MsgPackMap.GetString(eh, "client") == "x" && MsgPackMap.GetDouble(eh, "t_cap") == 1.5, "encoded header " + MsgPackMap.ToDebugString(eh));
        Check(BitConverter.ToString(enc[1]) == "07-08-09-0A-0B-0C-01-02-03-04-05-06", "RGBA bottom-first to RGB top-first: " + BitConverter.ToString(enc[1]));
        Ok("encode", "RGBA32 flipped -> rgb24 rows top first");

        using (var control = new SfbridgeControl(controlEp))
        using (var sub = new SfbridgeSubscriber(framesEp, SfbridgeFormat.Rgb24, true))
        using (var sender = new SfbridgeInputSender(inputEp, ClientId))
        {
            SfbridgeReply r = control.Input("v2v", 0.5, false);
            Check(r.StateId >= 0 && r.AppliesAtBlock >= 0, "input reply without state_id/applies_at_block: " + MsgPackMap.ToDebugString(r.Result));
            Ok("input_reply", "state_id " + r.StateId + " applies_at_block " + r.AppliesAtBlock);
            sub.Start();
            sender.Start();

            var phases = new[]
            {
                new { Name = "A", W = width, H = height, Stride = 3, Flip = false, Top = Red, Bottom = Blue },
                new { Name = "B", W = 2 * width, H = 2 * height, Stride = 4, Flip = true, Top = Blue, Bottom = Red },
            };
            double rttSum = 0;
            int rttN = 0;
            foreach (var p in phases)
            {
                byte[] px = Picture(p.W, p.H, p.Stride, p.Top, p.Bottom, p.Flip);
                long firstSeq = sender.NextSeq + 2; // frames still queued from the last phase may take the next two
                long sentBefore = sender.FramesSent;
                double topSum = 0, bottomSum = 0;
                int matched = 0;
                DateTime start = DateTime.UtcNow;
                DateTime nextSubmit = start;
                while ((DateTime.UtcNow - start).TotalSeconds < 6 && matched < 12)
                {
                    if (DateTime.UtcNow >= nextSubmit)
                    {
                        sender.Submit(new SfbridgeInputFrame { Format = "rgb24", Width = p.W, Height = p.H, Pixels = px,
                            PixelStride = p.Stride, FlipRows = p.Flip, TCap = SfbridgeTime.Now() });
                        nextSubmit = nextSubmit.AddMilliseconds(1000.0 / 60);
                    }
                    SfbridgeFrame f = sub.WaitFrame(5);
                    if (f == null) continue;
                    Dictionary<string, object> input = MsgPackMap.GetMap(f.Header, "input");
                    if (input == null || MsgPackMap.GetString(input, "client") != ClientId) continue;
                    long seq = MsgPackMap.GetLong(input, "seq", -1);
                    if (seq < firstSeq) continue;
                    double tcap = MsgPackMap.GetDouble(input, "t_cap", 0);
                    Check(tcap > 0 && tcap <= SfbridgeTime.Now(), "input.t_cap " + tcap + " is not a capture time of this run");
                    rttSum += SfbridgeTime.Now() - tcap;
                    rttN++;
                    topSum += RedMinusBlue(f, 0.1, 0.4);
                    bottomSum += RedMinusBlue(f, 0.6, 0.9);
                    matched++;
                }
                double seconds = (DateTime.UtcNow - start).TotalSeconds;
                long sent = sender.FramesSent - sentBefore;
                Check(matched >= 3, "phase " + p.Name + ": only " + matched + " output frames made from this sender's input in " +
                      seconds.ToString("F1", CultureInfo.InvariantCulture) + " s (sent " + sent + ", sender log: state " + sender.State + ")");
                double top = topSum / matched, bottom = bottomSum / matched;
                string detail = string.Format(CultureInfo.InvariantCulture, "frames {0} top R-B {1:F1} bottom R-B {2:F1} sent {3} in {4:F1} s",
                                              matched, top, bottom, sent, seconds);
                Console.WriteLine("PHASE " + p.Name + " " + detail);
                bool topRed = p.Top == Red;
                Check(topRed ? top - bottom > 40 : bottom - top > 40, "phase " + p.Name + ": the input picture does not show in the output: " + detail);
                Check(sent <= 16 * seconds + 3, "phase " + p.Name + ": sent " + sent + " frames in " + seconds + " s, more than 16 per second");
                Ok("input_shows_" + p.Name, detail);
            }
            Check(sender.FramesDropped > 0, "submitting at 60/s never dropped a queued frame");
            Ok("rate_limited", "sent " + sender.FramesSent + " dropped " + sender.FramesDropped + " connects " + sender.Connects);
            Ok("round_trip", string.Format(CultureInfo.InvariantCulture, "mean capture->received {0:F0} ms over {1} frames", 1000 * rttSum / rttN, rttN));

            r = control.Input("off");
            Check(r.StateId >= 0, "input off reply without state_id");
            Ok("input_off");
        }
    }
}
