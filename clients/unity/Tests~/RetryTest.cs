// Console test of SfbridgeControl's routing id (PROTOCOL.md 2.1.1), run under Mono by
// tests/test_raw_client_retries.py.
//
//   mcs -langversion:7.2 -out:RetryTest.exe Runtime/Core/*.cs Tests~/TestSupport.cs Tests~/RetryTest.cs   (from clients/unity)
//   mono RetryTest.exe --control tcp://127.0.0.1:5555 --text "a stalled prompt" \
//        --timeout-ms 500 --attempts 5
//
// First checks the routing id rules without a network: each SfbridgeControl has its own id,
// "sfb" + 13 random bytes, RoutingId hands out a copy, and ZmtpConnection refuses identities that
// ZMTP does not allow (empty, over 255 bytes, first byte zero). Then sends one request (a prompt
// with --text, else a ping) with the given timeout and attempts, logging every failed attempt.
// Prints "ROUTING_ID <hex>", "OK <name>" lines, "REPLY state_id=<n>" or "REPLY ok" on an answer,
// "TIMEOUT" when all attempts went unanswered, then "ALL_OK"; "FAIL <reason>" (exit 1) on a failure.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;
using Sfbridge;
using static TestSupport;

static class RetryTest
{
    static string controlEp, op = "ping", text = "";
    static int timeoutMs = 500, attempts = 5;

    static int Main(string[] args)
    {
        Dictionary<string, string> o = Options(args, "control", "text", "timeout-ms", "attempts");
        if (o == null) return 2;
        o.TryGetValue("control", out controlEp);
        if (o.TryGetValue("text", out text)) op = "prompt";
        timeoutMs = Int(o, "timeout-ms", timeoutMs);
        attempts = Int(o, "attempts", attempts);
        return RunChecks(() =>
        {
            RoutingIdRules();
            if (controlEp != null) Send();
        });
    }

    static string Hex(byte[] b)
    {
        var sb = new StringBuilder();
        foreach (byte x in b) sb.Append(x.ToString("x2"));
        return sb.ToString();
    }

    static bool Refused(byte[] identity)
    {
        try { ZmtpConnection.CheckIdentity(identity); return false; }
        catch (ArgumentException) { return true; }
    }

    static void RoutingIdRules()
    {
        using (var a = new SfbridgeControl("tcp://127.0.0.1:1"))
        using (var b = new SfbridgeControl("tcp://127.0.0.1:1"))
        {
            byte[] ida = a.RoutingId;
            Check(ida.Length == 16 && ida[0] == (byte)'s' && ida[1] == (byte)'f' && ida[2] == (byte)'b',
                  "routing id is not sfb + 13 bytes: " + Hex(ida));
            Check(Hex(ida) == Hex(a.RoutingId), "RoutingId changed between reads");
            ida[5] ^= 0xff;
            Check(Hex(ida) != Hex(a.RoutingId), "RoutingId hands out its own array, not a copy");
            Check(Hex(a.RoutingId) != Hex(b.RoutingId), "two clients got the same routing id " + Hex(b.RoutingId));
        }
        Check(Refused(new byte[0]), "an empty identity was accepted");
        Check(Refused(new byte[256]), "a 256-byte identity was accepted");
        Check(Refused(new byte[] { 0, 1, 2 }), "an identity starting with a zero byte was accepted");
        var longest = new byte[255];
        longest[0] = 1;
        Check(!Refused(longest) && !Refused(new byte[] { 1 }) && !Refused(null), "a valid identity was refused");
        bool threw = false;
        try { ZmtpConnection.Connect(ZmtpEndpoint.Parse("tcp://127.0.0.1:1"), "DEALER", 100, new byte[] { 0 }); }
        catch (ArgumentException) { threw = true; }
        Check(threw, "Connect took an identity starting with a zero byte");
        Ok("routing_id_rules");
    }

    static void Send()
    {
        using (var c = new SfbridgeControl(controlEp))
        {
            c.TimeoutMs = timeoutMs;
            c.Attempts = attempts;
            c.Log += m => { Console.WriteLine("LOG " + m); Console.Out.Flush(); };
            Console.WriteLine("ROUTING_ID " + Hex(c.RoutingId));
            Console.Out.Flush();
            var req = new Dictionary<string, object>();
            req["op"] = op;
            if (op == "prompt") req["text"] = text;
            SfbridgeReply r;
            try { r = c.Call(req); }
            catch (SfbridgeTimeoutException)
            {
                Console.WriteLine("TIMEOUT");
                return;
            }
            Console.WriteLine(op == "prompt" ? "REPLY state_id=" + r.StateId : "REPLY ok");
        }
    }
}
