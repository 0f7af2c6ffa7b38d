// What the console tests (ConsoleTest.cs, InputTest.cs, RetryTest.cs) share: the "OK <name>" lines
// that the pytest tests (test_csharp_client.py, test_raw_client_retries.py) read and the Fail exception
// a failed check throws (each Main prints it as "FAIL <reason>"). Compiled with each test program; the
// tests import it with `using static`.

using System;

static class TestSupport
{
    public class Fail : Exception { public Fail(string m) : base(m) { } }

    public static void Check(bool cond, string what)
    {
        if (!cond) throw new Fail(what);
    }

    public static void Ok(string name, string detail = "")
    {
        Console.WriteLine("OK " + name + (detail.Length > 0 ? " " + detail : ""));
        Console.Out.Flush();
    }
}
